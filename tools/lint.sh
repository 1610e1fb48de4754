#!/usr/bin/env bash
# The house tools, as the test command runs them before pytest: formatting, lint and types. Every
# tool runs (so one run shows every problem); the script fails if any of them does.
#   VIDNARRATE_VENV   the venv holding ruff and mypy (default: .venv in the repository; the `test`
#                     extras install them).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="${VIDNARRATE_VENV:-$root/.venv}/bin"
failed=()
"$bin/ruff" format --check . || failed+=("ruff format --check .")
"$bin/ruff" check . || failed+=("ruff check .")
"$bin/mypy" stream model || failed+=("mypy stream model")
if ((${#failed[@]})); then
    printf 'vidnarrate: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
