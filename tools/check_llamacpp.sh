#!/usr/bin/env bash
# The remote backend against a real llama.cpp server, from scratch: llama-cpp-python[server] in a venv
# of its own, the tiny MiniCPM-V 2.6 as GGUF (tools/make_gguf.py with the sdist's llama.cpp converters),
# then tests/test_llamacpp_server.py (real server, real `vidnarrate run`) and tools/bench_remote.py
# --url against the server (latency per window, bytes per sampled frame).
#
#   bash tools/check_llamacpp.sh [WORK_DIR]        # default /tmp/vidnarrate-llamacpp; reused when rerun
#
#   VIDNARRATE_VENV     the project's venv (default .venv): runs the tests, the converters and the bench
#   LLAMACPP_VERSION    llama-cpp-python version (default 0.3.36, the one checked)
#   LLAMACPP_WHEEL      an already built llama-cpp-python wheel (else built from the sdist: about
#                       6 minutes on a 2 vCPU Intel Xeon VM; kept in WORK_DIR/wheels for reruns)
#   BENCH_SECONDS       seconds of each bench row (default 60; 0 skips the bench)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/vidnarrate-llamacpp}"
venv="${VIDNARRATE_VENV:-$root/.venv}"
version="${LLAMACPP_VERSION:-0.3.36}"
seconds="${BENCH_SECONDS:-60}"
mkdir -p "$work/wheels" "$work/sdist"
step() { printf '\n== %s\n' "$*"; }

step "1/5 llama-cpp-python $version sdist (its vendor/llama.cpp holds the GGUF converters)"
sdist="$(ls "$work"/sdist/llama_cpp_python-"$version".tar.gz 2>/dev/null || true)"
if [[ -z "$sdist" ]]; then
    "$venv/bin/python" -m pip download "llama-cpp-python==$version" --no-binary :all: --no-deps -d "$work/sdist"
    sdist="$work/sdist/llama_cpp_python-$version.tar.gz"
fi
src="$work/src/llama_cpp_python-$version"
[[ -d "$src" ]] || { mkdir -p "$work/src" && tar -xzf "$sdist" -C "$work/src"; }

step "2/5 the wheel"
wheel="${LLAMACPP_WHEEL:-$(ls "$work"/wheels/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -1 || true)}"
if [[ -z "$wheel" ]]; then
    echo "building llama.cpp from the sdist (CMake; minutes)"
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/python" -m pip wheel --no-deps -w "$work/wheels" "$sdist"
    wheel="$(ls "$work"/wheels/llama_cpp_python-"$version"-*.whl | head -1)"
fi
echo "$wheel"

step "3/5 a venv with llama-cpp-python[server] ($work/venv)"
[[ -x "$work/venv/bin/python" ]] || "$venv/bin/python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel[server]"
"$work/venv/bin/python" -c "import llama_cpp, llama_cpp.server; print('llama-cpp-python', llama_cpp.__version__)"

export VIDNARRATE_LLAMACPP_PYTHON="$work/venv/bin/python"
export VIDNARRATE_LLAMACPP_SRC="$src/vendor/llama.cpp"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"

step "4/5 tests/test_llamacpp_server.py (the real server, the real CLI)"
"$venv/bin/python" -m pytest -q -rs -p no:cacheprovider tests/test_llamacpp_server.py

if [[ "$seconds" != 0 ]]; then
    step "5/5 tools/bench_remote.py --url against the server (1 and 4 streams, $seconds s each)"
    "$venv/bin/python" tools/make_gguf.py --tiny "$work/gguf" --llama-cpp "$VIDNARRATE_LLAMACPP_SRC" >/dev/null
    port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$work/venv/bin/python" -m llama_cpp.server --model "$work/gguf/model-f16.gguf" \
        --clip_model_path "$work/gguf/mmproj-model-f16.gguf" --chat_format minicpm-v-2.6 \
        --n_ctx 4096 --interrupt_requests False --host 127.0.0.1 --port "$port" >"$work/bench-server.log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null || true' EXIT
    for _ in $(seq 240); do
        "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v1/models')" \
            2>/dev/null && break
        kill -0 "$server" || { tail -20 "$work/bench-server.log"; exit 1; }
        sleep 0.5
    done
    "$venv/bin/python" tools/bench_remote.py --url "http://127.0.0.1:$port/v1" --streams 1 4 --seconds "$seconds"
    grep -E "image slice encoded in|image decoded" "$work/bench-server.log" | tail -4 || true
fi
echo
echo "vidnarrate: llama.cpp check passed"
