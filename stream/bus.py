"""The zmq bus between the processes of one run.

Topology (fan-in to the gateway, which fans out to websocket clients):

* ``events``: every process that reports something (capture, inference, supervisor) *binds* its own
  :class:`Publisher` on ``pub-<role>.sock``; a :class:`Subscriber` (the gateway, a test, a tool)
  *connects* to every publisher of the run. zmq reconnects by itself when either side restarts.
  (Publishers bind because a connecting XPUB never sees the subscription of a binding SUB until it
  has sent something, which would defeat the slow-joiner guard below.)
* ``asks``: the gateway *connects* an :class:`AskSender` (PUSH) to the inference process's
  :class:`AskReceiver` (PULL, bound). Answers come back as ``answer`` messages on ``events``.

Endpoints are ``ipc://`` files under a per-run directory whose name holds the run id, so two runs
never share (and never silently steal) a socket path. Every socket closes with ``linger=0``.

Slow joiners: a PUB drops what it sends before the subscriber's subscription has arrived. The
publisher side is an XPUB, which *sees* subscriptions arrive; :meth:`Publisher.wait_for_subscriber`
blocks until one has, so nothing sent at start is lost.

A message (a :class:`~stream.messages.ServerMessage`) travels as three frames: its ``type`` (the zmq
topic), its ``stream`` (empty for messages of no stream) and its JSON body, encoded once by
``to_json()`` in the publishing process. The gateway routes on the first two and forwards the body's
bytes to websocket clients as they are (:class:`Envelope`); everyone else gets the typed message back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from . import messages
from .errors import ConfigError, ProtocolError
from .messages import AskRequest, BusMessage
from .placement import role_suffix
from .procinfo import process_alive, process_start

log = logging.getLogger(__name__)

OWNER_FILE = "owner"  # "<pid> <start time>" of the process that created the run directory

# sockaddr_un.sun_path holds 108 bytes with the terminating NUL on Linux.
MAX_IPC_PATH = 107

# Bounded queues everywhere: a stuck peer costs at most this many messages of memory.
_HWM = 10_000


def default_runs_root() -> Path:
    """Where per-run directories live: $XDG_RUNTIME_DIR if set, else the system temp dir."""
    base = os.environ.get("VIDNARRATE_RUN_ROOT") or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"vidnarrate-{os.getuid()}"


@dataclass(frozen=True)
class RunPaths:
    """The per-run directory and the endpoints in it."""

    run_id: str
    run_dir: Path

    @classmethod
    def create(cls, run_id: str | None = None, root: Path | None = None) -> RunPaths:
        run_id = run_id or uuid.uuid4().hex[:12]
        run_dir = (root or default_runs_root()) / run_id
        longest = len(str(run_dir / "pub-0123456789.sock").encode())
        if longest > MAX_IPC_PATH:
            raise ConfigError(
                f"run directory {run_dir} is too long for zmq ipc socket paths ({longest} > {MAX_IPC_PATH} "
                "bytes, the operating system's limit): set VIDNARRATE_RUN_ROOT to a shorter folder"
            )
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (run_dir / OWNER_FILE).write_text(f"{os.getpid()} {process_start(os.getpid()) or 0}\n")
        return cls(run_id=run_id, run_dir=run_dir)

    def publisher_endpoint(self, role: str) -> str:
        """The endpoint the process with this role (``inference``, ``capture:cam0``...) publishes on."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", role)
        path = self.run_dir / f"pub-{safe}.sock"
        if len(str(path).encode()) > MAX_IPC_PATH:  # a long source name: a short, stable stand-in
            path = self.run_dir / f"pub-{hashlib.blake2b(role.encode(), digest_size=5).hexdigest()}.sock"
        return f"ipc://{path}"

    @property
    def asks_endpoint(self) -> str:
        return f"ipc://{self.run_dir / 'asks.sock'}"

    def asks_endpoint_for(self, role: str) -> str:
        """The asks endpoint of the inference process with this role: :attr:`asks_endpoint` for
        ``inference``, ``asks-I.sock`` for ``inference:I`` (``[model] devices`` starts several)."""
        return f"ipc://{self.run_dir / f'asks{role_suffix(role)}.sock'}"

    def remove(self) -> None:
        """Delete the run directory and every socket file in it."""
        shutil.rmtree(self.run_dir, ignore_errors=True)


def remove_stale_runs(root: Path | None = None) -> list[Path]:
    """Remove the run directories (socket files) of runs whose creating process is gone: what a run
    killed with SIGKILL leaves. Directories of live runs, and anything without an owner file, stay."""
    root = root or default_runs_root()
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for run_dir in root.iterdir():
        try:
            pid_text, start_text = (run_dir / OWNER_FILE).read_text().split()
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            continue
        if not process_alive(pid, start):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


@dataclass(frozen=True)
class Envelope:
    """One bus message as it arrived: routing fields and the JSON body, not decoded."""

    type: str
    stream: str | None
    body: bytes

    def decode(self) -> BusMessage:
        """The typed message; :class:`ProtocolError` when the body does not fit its type."""
        return messages.decode(self.type, self.body)


def encode(message: BusMessage) -> list[bytes]:
    stream = getattr(message, "stream", None)
    return [message.TYPE.encode(), stream.encode() if stream else b"", message.to_json()]


def unpack(frames: list[bytes]) -> Envelope:
    if len(frames) != 3:
        raise ProtocolError(f"bus message has {len(frames)} frames, expected 3 (type, stream, json)")
    try:
        kind, stream = frames[0].decode(), frames[1].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"bus message type or stream is not UTF-8: {exc}") from exc
    return Envelope(kind, stream or None, frames[2])


def _socket(context: zmq.Context, kind: int) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, _HWM)
    sock.setsockopt(zmq.RCVHWM, _HWM)
    return sock


class Publisher:
    """Binds this process's endpoint and sends to every connected subscriber. Never blocks: when a
    subscriber's queue is full, the message is dropped for it (live data)."""

    def __init__(
        self, endpoint: str, *, context: zmq.Context | None = None, own_context: bool = False
    ) -> None:
        # A context of its own (``own_context``) lets :meth:`close` wait for the last messages.
        self._own_context = own_context and context is None
        self._context = zmq.Context() if self._own_context else (context or zmq.Context.instance())
        self._sock = _socket(self._context, zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError:
            self.close()  # not left for the garbage collector
            raise
        self.endpoint = endpoint
        self._subscribed = False

    def wait_for_subscriber(self, timeout: float = 5.0) -> bool:
        """Block until a subscriber's subscription has arrived (the slow-joiner guard)."""
        deadline = time.monotonic() + timeout
        while not self._subscribed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._sock.poll(int(remaining * 1000), zmq.POLLIN):
                frame = self._sock.recv()
                if frame[:1] == b"\x01":
                    self._subscribed = True
        return True

    def send(self, message: BusMessage) -> None:
        # A PUB never blocks: a subscriber whose queue (SNDHWM) is full misses this message.
        self._sock.send_multipart(encode(message), flags=zmq.NOBLOCK)

    def close(self, linger: float = 0.0) -> None:
        """Close the socket. With ``linger`` seconds and a context of its own, messages still queued
        (a process's last status: "ended", the final counts) are delivered first, waiting at most that
        long; a shared context is never terminated here, so without one they may be lost."""
        self._sock.close(linger=int(linger * 1000))
        if self._own_context:
            self._context.term()


class LockedPublisher:
    """A :class:`Publisher` that several threads of one process share (the inference process's frame
    tap and model loop): zmq sockets are not thread-safe, so every send takes a lock."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._lock = threading.Lock()

    def send(self, message: BusMessage) -> None:
        with self._lock:
            self._publisher.send(message)

    def close(self, linger: float = 1.0) -> None:
        """Close after delivering what is queued (the last captions and status), within ``linger`` s."""
        with self._lock:
            self._publisher.close(linger=linger)


class _SubscriberBase:
    """What the sync and asyncio subscribers share: one SUB socket connected to every publisher."""

    def __init__(self, context: zmq.Context, endpoints: list[str]) -> None:
        self._sock = _socket(context, zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.endpoints: list[str] = []
        for endpoint in endpoints:
            self.connect(endpoint)

    def connect(self, endpoint: str) -> None:
        if endpoint not in self.endpoints:
            self._sock.connect(endpoint)
            self.endpoints.append(endpoint)

    def close(self) -> None:
        self._sock.close(linger=0)


class Subscriber(_SubscriberBase):
    """Connects to publishers and receives all their messages (sync API)."""

    def __init__(self, endpoints: list[str], *, context: zmq.Context | None = None) -> None:
        super().__init__(context or zmq.Context.instance(), endpoints)

    def recv(self, timeout: float | None = None) -> BusMessage | None:
        """The next message, or None when ``timeout`` seconds pass without one; raises
        :class:`ProtocolError` for a malformed one."""
        envelope = self.recv_envelope(timeout)
        return envelope.decode() if envelope is not None else None

    def recv_envelope(self, timeout: float | None = None) -> Envelope | None:
        """The next message not decoded (for readers that skip most types), or None when ``timeout``
        seconds pass without one; raises :class:`ProtocolError` for a malformed one."""
        if timeout is not None and not self._sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        return unpack(self._sock.recv_multipart())


class AsyncSubscriber(_SubscriberBase):
    """The same as :class:`Subscriber` for asyncio code (the gateway)."""

    def __init__(self, endpoints: list[str], *, context: zmq.asyncio.Context | None = None) -> None:
        super().__init__(context or zmq.asyncio.Context.instance(), endpoints)

    async def recv(self) -> Envelope:
        """The next message, not decoded; raises :class:`ProtocolError` for a malformed one (the
        caller logs it and carries on: a bad publisher must not stop the reader)."""
        frames: list[bytes] = await self._sock.recv_multipart()  # type: ignore[misc]  # zmq.asyncio returns a Future
        return unpack(frames)


class AskSender:
    """Sends ``ask`` requests to the inference process; never blocks.

    ``IMMEDIATE`` is set, so while no inference process is connected :meth:`send` returns False at
    once instead of queueing the ask for a process that may never come (the gateway then tells the
    asker). An ask sent just before the process dies is lost: the gateway's ask timeout covers that.
    """

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None, hwm: int = 1000) -> None:
        self._context = context or zmq.Context.instance()
        self._sock = _socket(self._context, zmq.PUSH)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.connect(endpoint)
        self.endpoint = endpoint

    def send(self, message: AskRequest) -> bool:
        """True when the ask was handed to a connected inference process."""
        try:
            self._sock.send_multipart(encode(message), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self._sock.close(linger=0)


class AskReceiver:
    """Binds the asks endpoint in the inference process."""

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self._sock = _socket(self._context, zmq.PULL)
        self._sock.bind(endpoint)

    def poll(self, timeout: float = 0.0) -> list[AskRequest]:
        """Every ask waiting now, after waiting up to ``timeout`` seconds for the first one;
        malformed ones are logged and dropped."""
        asks: list[AskRequest] = []
        wait_ms = int(timeout * 1000)
        while self._sock.poll(wait_ms, zmq.POLLIN):
            wait_ms = 0
            try:
                ask = unpack(self._sock.recv_multipart()).decode()
                if not isinstance(ask, AskRequest):
                    raise ProtocolError(f"expected an 'ask', got a {ask.TYPE!r} message")
                asks.append(ask)
            except ProtocolError as exc:
                log.warning("dropping malformed ask: %s", exc)
        return asks

    def close(self) -> None:
        self._sock.close(linger=0)
