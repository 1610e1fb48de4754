#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and installs vidnarrate into it.
# Idempotent: a stamp records what was installed (the hash of pyproject.toml and the torch
# requirement, then the extras); nothing is installed when that still holds. A venv with more extras
# than asked for is fine as it is: `./vidnarrate` after `bash tools/test.sh` does not reinstall.
#
#   TORCH_SPEC        the torch requirement to install first. Default: "torch==2.13.0" on a machine
#                     without an NVIDIA GPU (a CPU build where the machine provides one), plain "torch"
#                     (a CUDA build from PyPI) where `nvidia-smi` finds a GPU.
#   EXTRAS            optional extras to install, comma-separated, e.g. "test".
#   VIDNARRATE_VENV   where the venv lives (default: .venv in the repository).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VIDNARRATE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [[ -z "${TORCH_SPEC:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        TORCH_SPEC="torch>=2.4"
    else
        TORCH_SPEC="torch==2.13.0"
    fi
fi

# "b, a,,a" -> "a,b": extras as a sorted set.
extras_set() { tr ', ' '\n\n' <<<"$*" | sed '/^$/d' | sort -u | paste -sd, -; }

want="$( (cat "$root/pyproject.toml"; echo "$TORCH_SPEC") | sha256sum | cut -c1-16)"
stamp="$venv/.vidnarrate-stamp"
have="" had_extras=""
if [[ -x "$venv/bin/python" && -f "$stamp" ]]; then
    { read -r have || true; read -r had_extras || true; } <"$stamp"
fi
asked="$(extras_set "${EXTRAS:-}")"
if [[ "$have" == "$want" ]]; then
    # Installed already, unless an extra asked for is not among those installed.
    [[ -z "$(comm -23 <(tr ',' '\n' <<<"$asked" | sed '/^$/d') <(tr ',' '\n' <<<"$had_extras" | sed '/^$/d'))" ]] \
        && exit 0
fi
# Keep what was installed before: switching between the launcher and the tests must not flip-flop.
extras="$(extras_set "$asked,$had_extras")"

echo "vidnarrate: setting up $venv (torch: $TORCH_SPEC${extras:+, extras: $extras})" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "$TORCH_SPEC"
target="$root"
[[ -n "$extras" ]] && target="$root[$extras]"
"${pip[@]}" install -e "$target"
printf '%s\n%s\n' "$want" "$extras" >"$stamp"
