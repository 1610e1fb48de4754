"""What the benchmarks that drive a real ``vidnarrate run`` share: a free port, the run started in a
process group of its own under its own run root, the moment it is ready (it prints the viewer's
address once the model is loaded and every source started), and its stop.

A helper module of the scripts in ``tools/`` (imported as a sibling, as ``machine_info`` is).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_run(cmd: Sequence[str], run_root: Path) -> tuple[subprocess.Popen[bytes], threading.Event]:
    """Start ``cmd`` (a ``vidnarrate run`` command line) with ``VIDNARRATE_RUN_ROOT=run_root``; the
    event is set once it has printed the viewer's address."""
    env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(run_root)}
    proc = subprocess.Popen(
        list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    ready = threading.Event()

    def watch() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            if b"viewer at" in line:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    return proc, ready


def stop_run(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Ctrl-C the run's process group, as a user would; SIGKILL it if it has not ended in ``timeout``."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
