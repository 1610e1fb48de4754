#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and installs vidnarrate into it.
# Idempotent: a stamp holding the hash of pyproject.toml skips the install when nothing changed.
#
#   TORCH_SPEC   the torch requirement to install first. Default: "torch==2.13.0" on a machine without
#                an NVIDIA GPU (a CPU build where the machine provides one), plain "torch" (a CUDA
#                build from PyPI) where `nvidia-smi` finds a GPU.
#   EXTRAS       optional extras to install, e.g. "test".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VIDNARRATE_VENV:-$root/.venv}"
extras="${EXTRAS:-}"
python="${PYTHON:-python3}"

if [[ -z "${TORCH_SPEC:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        TORCH_SPEC="torch>=2.4"
    else
        TORCH_SPEC="torch==2.13.0"
    fi
fi

want="$( (cat "$root/pyproject.toml"; echo "$TORCH_SPEC"; echo "$extras") | sha256sum | cut -c1-16)"
stamp="$venv/.vidnarrate-stamp"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

echo "vidnarrate: setting up $venv (torch: $TORCH_SPEC${extras:+, extras: $extras})" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "$TORCH_SPEC"
target="$root"
[[ -n "$extras" ]] && target="$root[$extras]"
"${pip[@]}" install -e "$target"
echo "$want" > "$stamp"
