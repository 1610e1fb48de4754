"""Real parts the source/capture tests drive: sample clips, GStreamer's RTSP server, Xvfb.

Every helper starts its process in a new session (its own process group) and kills the whole group
when done, so a failing test never leaves a server behind.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from conftest import REPO_ROOT, require_executable, require_real_part

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = REPO_ROOT / "tools" / "rtsp_server.py"


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (tools/ is a folder of scripts, not a package; they import their
    siblings, such as ``benchrun``, as a script run from there would)."""
    module = sys.modules.get(f"tools_{name}")
    if module is not None:
        return module
    if str(REPO_ROOT / "tools") not in sys.path:
        sys.path.append(str(REPO_ROOT / "tools"))
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO_ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_clip(
    path: Path, *, size: str = "320x180", fps: float = 30.0, seconds: float = 3.0, **kwargs: object
) -> Path:
    """A real H.264 clip of the committed photos with the frame index stamped in (cached by path)."""
    if not path.exists():
        width, height = (int(v) for v in size.split("x"))
        load_tool("make_sample_video").make_video(
            path, width=width, height=height, fps=fps, seconds=seconds, **kwargs
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole group (it was started with start_new_session) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped group must be able to die
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def stop_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the process group (so servers remove their sockets and lock files), SIGKILL after
    ``grace`` seconds if it is still there."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)


def _read_line(proc: subprocess.Popen[bytes], prefix: bytes, timeout: float, what: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            for line in buffer.splitlines():
                if line.startswith(prefix):
                    return line.decode().strip()
        elif proc.poll() is not None:
            break
    kill_group(proc)
    output = buffer.decode(errors="replace")
    raise RuntimeError(f"{what} did not get ready in {timeout} s; output: {output!r}")


def require_rtsp_server() -> None:
    ok = (
        os.path.exists(SYSTEM_PYTHON)
        and subprocess.run(
            [
                SYSTEM_PYTHON,
                "-c",
                "import gi; gi.require_version('GstRtspServer', '1.0'); "
                "from gi.repository import GstRtspServer",
            ],
            capture_output=True,
            timeout=60,
        ).returncode
        == 0
    )
    require_real_part(ok, "GStreamer's RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0)")


class RtspServer:
    """tools/rtsp_server.py on a fixed port, so a restarted server serves the same URL."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.args = list(args)
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> RtspServer:
        for _ in range(20):  # the port may linger for a moment after a kill
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), *self.args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                line = _read_line(self.proc, b"READY", timeout, "RTSP server")
            except RuntimeError as exc:
                if "cannot listen" in str(exc):
                    time.sleep(0.25)
                    continue
                raise
            assert line.endswith(self.url), line
            return self
        raise RuntimeError(f"RTSP server could not listen on port {self.port}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Xvfb:
    """A virtual X screen on a free display number (Xvfb picks it and reports it via -displayfd)."""

    def __init__(self, width: int = 640, height: int = 480) -> None:
        require_executable("Xvfb")
        self.size = (width, height)
        self._painter: subprocess.Popen[bytes] | None = None
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        os.close(write_fd)
        data = b""
        try:  # Xvfb writes "N\n" once it accepts connections; read up to the newline
            deadline = time.monotonic() + 20.0
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([read_fd], [], [], 0.1)
                chunk = os.read(read_fd, 64) if ready else b""
                if ready and not chunk:
                    break
                data += chunk
        finally:
            os.close(read_fd)
        number = data.decode().strip()
        if not number.isdigit():
            kill_group(self.proc)
            raise RuntimeError("Xvfb did not report its display number")
        self.display = f":{number}"

    def fill(self, color: str) -> None:
        """Cover the whole screen with one colour: a borderless xterm whose background and text are
        that colour. (``xsetroot -solid`` changes nothing visible on Debian 12's Xvfb 21.1: the
        root stays black in every grab, with mss and with FFmpeg's x11grab alike.) The window maps
        within a moment; callers poll for the colour."""
        xterm = require_executable("xterm")
        previous = self._painter
        self._painter = subprocess.Popen(
            [
                xterm,
                "-display",
                self.display,
                "-bg",
                color,
                "-fg",
                color,
                "-geometry",
                "500x300+0+0",
                "-bw",
                "0",
                "-b",
                "0",
                "-e",
                "sleep",
                "3600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if previous is not None:
            time.sleep(0.3)  # let the new window map before the old one goes
            stop_group(previous)

    def close(self) -> None:
        if self._painter is not None:
            stop_group(self._painter)
            self._painter = None
        stop_group(self.proc)  # a clean exit removes /tmp/.X11-unix/XN and /tmp/.XN-lock

    def __enter__(self) -> Xvfb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
