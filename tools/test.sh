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
# Two workers, each taking whole test files (module fixtures stay shared within a file); set
# VIDNARRATE_TEST_WORKERS=0 to run in this process (pdb, -s).
workers="${VIDNARRATE_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
