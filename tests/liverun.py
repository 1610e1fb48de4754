"""Drive a real ``vidnarrate run`` process from tests: start it, talk to it over websockets, stop it,
and check that it left nothing behind (children, shared memory, socket files).

The process runs in its own session, with its own run root (``VIDNARRATE_RUN_ROOT``) so a test can
look at exactly what this run created. Helpers are synchronous: each websocket call runs its own
short asyncio loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import websockets
from realparts import free_port, kill_group

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")

# Fast settings for the tiny model on a 2-core CI machine: short captions, short windows.
FAST = ["--model", "tiny", "--set", "captions.max_new_tokens=6", "--set", "captions.thumbnail_side=160"]


@contextlib.contextmanager
def short_run_root() -> Iterator[Path]:
    """A run root short enough for zmq ipc socket paths (pytest's tmp paths can exceed 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="vn-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def shm_rings(run_id: str | None = None) -> list[str]:
    names = [p.name for p in Path("/dev/shm").glob("vn-*")]
    return [n for n in names if run_id is None or run_id in n]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class LiveRun:
    """A ``vidnarrate run`` subprocess."""

    def __init__(
        self,
        sources: list[str],
        run_root: Path,
        *,
        extra: list[str] | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.run_root = run_root
        args = [str(VIDNARRATE), "run", "--port", str(self.port)]
        for source in sources:
            args += ["--source", source]
        args += FAST + (extra or [])
        self.args = args
        self.env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(run_root), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.url: str | None = None
        self._pumps: list[threading.Thread] = []

    def launch(self) -> LiveRun:
        """Start the process (in a session of its own: its group is what a terminal's Ctrl-C hits)."""
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        self._pumps = [
            threading.Thread(target=self._pump, args=(pipe, into), daemon=True)
            for pipe, into in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for pump in self._pumps:
            pump.start()
        return self

    def wait_output(self, timeout: float = 10.0) -> None:
        """Wait until every line the run (and its children) wrote has been read: the pipes close once
        the last process holding them has exited."""
        for pump in self._pumps:
            pump.join(timeout)
            assert not pump.is_alive(), f"output still open {timeout} s after the run ended:\n{self.log()}"

    def start(self, timeout: float = 90.0) -> LiveRun:
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stdout:
                match = re.search(r"viewer at (http://\S+)", line)
                if match:
                    self.url = match.group(1)
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"vidnarrate run exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"vidnarrate run printed no viewer URL in {timeout} s:\n{self.log()}")

    @staticmethod
    def _pump(pipe: Any, into: list[str]) -> None:
        for raw in iter(pipe.readline, b""):
            into.append(raw.decode(errors="replace"))
        pipe.close()

    def log(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr[-60:])

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def run_dirs(self) -> list[Path]:
        """This run's directories (``<run root>/vidnarrate-<uid>/<run id>``)."""
        return [p for p in self.run_root.glob("vidnarrate-*/*") if p.is_dir()]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Ctrl-C (SIGINT) and wait; returns the exit code."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise AssertionError(f"vidnarrate run did not stop within {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)


def collect(
    ws_url: str,
    until: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float,
    subscribe: dict[str, Any] | None = None,
    send: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Connect, subscribe, optionally send messages, and gather messages until ``until(messages)``."""

    async def run() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with websockets.connect(ws_url, max_size=None) as ws:
            await ws.send(json.dumps(subscribe or {"type": "subscribe", "streams": "*"}))
            for message in send or []:
                await ws.send(json.dumps(message))
            deadline = time.monotonic() + timeout
            while not until(got):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    raw = await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError:
                    break
                got.append(json.loads(raw))
        return got

    # Its own thread: the caller may already run an event loop (Playwright's sync API does).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def of_type(messages: list[dict[str, Any]], kind: str, stream: str | None = None) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == kind and (stream is None or m.get("stream") == stream)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
