#!/usr/bin/env bash
# The test command: sets up everything from scratch on a fresh machine, checks formatting, lint and
# types (tools/lint.sh), then runs the suite. Extra arguments go to pytest (e.g.
# `bash tools/test.sh tests/test_ring.py -x`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/install_test_system_deps.sh
EXTRAS=test bash tools/bootstrap.sh
bash tools/lint.sh
exec .venv/bin/python -m pytest "$@"
