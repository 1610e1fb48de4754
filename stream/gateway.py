"""The gateway: zmq bus in, websocket clients out, on one port.

* ``/``: the viewer (static files of ``stream/web/``), served through websockets' ``process_request``;
* ``/ws``: the websocket protocol of ``docs/protocol.md`` (subscribe, ask, ping);
* ``/healthz``: JSON health figures (never needs the token: load balancers and supervisors poll it).

Fan-out never waits for a client. A message goes straight into a client's socket buffer while that
buffer is short (``write_buffer`` bytes, beyond a kernel send buffer fixed at ``send_buffer``) and
nothing is queued for it; otherwise into the client's
:class:`~stream.fanout.ClientQueue`
(``client_queue`` messages), which a per-client writer task drains with backpressure. A full queue
drops its oldest message and the client is told how many it lost (a ``dropped`` message right before
the next one it gets); a client whose queue stays overflowing for ``slow_client_timeout`` seconds is
closed with code 4000 ("too slow"). So a slow or stuck client costs bounded memory and never delays
the bus reader or the other clients. Permessage-deflate is off: compressing every message once per
client costs more CPU than captions save in bandwidth. Without it, and since server frames are not
masked, a message's frame is the same bytes for every client: the direct path serializes it once
(with websockets' own ``Frame``) and writes those bytes to each client, the cost that dominates a
fan-out to a thousand clients. Queued messages go through ``connection.send()`` as usual.

Run it in-process (:class:`Gateway`, ``await start()`` / ``await stop()``) or as a child process
(:func:`gateway_main`, picklable for ``multiprocessing`` "spawn").
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hmac
import http
import itertools
import json
import logging
import mimetypes
import os
import re
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from . import messages
from .bus import AskSender, AsyncSubscriber, Envelope
from .errors import ProtocolError
from .fanout import ClientQueue, PendingAsk, PendingAsks, ReplayStore, StatusBoard
from .messages import (
    Answer,
    Ask,
    AskRequest,
    CaptureStatus,
    CloseCode,
    ErrorCode,
    ErrorReply,
    InferenceStatus,
    Message,
    MessageError,
    Ping,
    Pong,
    Processes,
    ServerMessage,
    Status,
    Subscribe,
    Subscribed,
)
from .process import ExitCode, write_ready_file

log = logging.getLogger(__name__)
_ws_log = logging.getLogger(__name__ + ".websockets")

DEFAULT_WEB_DIR = Path(__file__).resolve().parent / "web"
TOKEN_ENV = "VIDNARRATE_TOKEN"
TOKEN_COOKIE_PREFIX = "vidnarrate_token_"
"""Followed by the listening port: browsers share cookies across the ports of one host, so two runs on
one machine (or one restarted with a new token) must not overwrite each other's cookie."""
WS_PATH = "/ws"
HEALTH_PATH = "/healthz"

_FORWARDED = frozenset({"caption", "partial", "event", "thumbnail"})  # their bus bytes go to clients
_REPORTS = frozenset({"capture_status", "inference_status", "processes"})
_MAX_STATIC_BYTES = 16 * 1024 * 1024
_STATUS_MIN_GAP = 0.2  # seconds between two "on change" status messages
_TICK = 0.1


class _Client:
    """One websocket connection and its fan-out state."""

    def __init__(self, number: int, conn: ServerConnection, capacity: int, max_errors: int) -> None:
        self.number = number
        self.conn = conn
        self.queue = ClientQueue(capacity)
        self.subscription: Subscribe | None = None
        self.wakeup = asyncio.Event()
        self.sending = False
        self.closing = False
        self.errors: deque[float] = deque(maxlen=max_errors)


class Gateway:
    """The websocket gateway, in-process. ``port=0`` binds a free port: read :attr:`port` after
    :meth:`start`. ``token`` ("" or None: no auth) guards the page and the websockets."""

    def __init__(
        self,
        events_endpoints: Sequence[str] = (),
        asks_endpoint: str | None = None,
        *,
        # where
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        web_dir: Path | str | None = DEFAULT_WEB_DIR,
        # fan-out
        client_queue: int = 256,
        replay: int = 100,
        write_buffer: int = 64 * 1024,
        send_buffer: int | None = 256 * 1024,
        slow_client_timeout: float = 30.0,
        max_clients: int = 10_000,
        status_interval: float = 1.0,
        # client input
        max_message_bytes: int = 65536,
        max_errors: int = 20,
        error_window: float = 10.0,
        # asks
        ask_timeout: float = 30.0,
        asks_per_client: int = 8,
        max_pending_asks: int = 1024,
        # connections
        close_timeout: float = 3.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_streams: int = 256,
    ) -> None:
        for name, value, low in (
            ("client_queue", client_queue, 1),
            ("replay", replay, 0),
            ("write_buffer", write_buffer, 0),
            ("max_clients", max_clients, 1),
            ("max_message_bytes", max_message_bytes, 1),
            ("max_errors", max_errors, 1),
            ("asks_per_client", asks_per_client, 1),
            ("max_pending_asks", max_pending_asks, 1),
            ("max_streams", max_streams, 1),
            ("send_buffer", send_buffer or 1, 1),
        ):
            if value < low:
                raise ValueError(f"gateway option {name} must be at least {low}, got {value}")
        for name, seconds in (
            ("slow_client_timeout", slow_client_timeout),
            ("status_interval", status_interval),
            ("error_window", error_window),
            ("ask_timeout", ask_timeout),
            ("close_timeout", close_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"gateway option {name} must be a positive number of seconds, got {seconds}")
        self.host = host
        self.port = port
        self._token = token or ""
        self._web_dir = Path(web_dir).resolve() if web_dir is not None else None
        self._endpoints = list(events_endpoints)
        self._asks_endpoint = asks_endpoint
        self._client_queue = client_queue
        self._write_buffer = write_buffer
        self._send_buffer = send_buffer
        self._slow_client_timeout = slow_client_timeout
        self._max_clients = max_clients
        self._status_interval = status_interval
        self._max_message_bytes = max_message_bytes
        self._max_errors = max_errors
        self._error_window = error_window
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_streams = max_streams

        self._replay = ReplayStore(replay, max_streams=max_streams)
        self._board = StatusBoard(max_streams=max_streams)
        self._asks = PendingAsks(timeout=ask_timeout, per_client=asks_per_client, total=max_pending_asks)
        self._thumbnails: dict[str, bytes] = {}  # the latest of each stream, serialized
        self._clients: dict[int, _Client] = {}
        self._numbers = itertools.count(1)
        self._subscriber: AsyncSubscriber | None = None
        self._ask_sender: AskSender | None = None
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._redactor: _RedactToken | None = None
        self._started_at = 0.0
        self._last_status = 0.0
        self._status_handle: asyncio.TimerHandle | None = None
        self._last_bus_wall: float | None = None
        self._bad_bus_logged = 0.0
        self.stats = {
            "bus_messages": 0,
            "bad_bus_messages": 0,
            "dropped_messages": 0,
            "slow_clients_closed": 0,
            "error_replies": 0,
        }

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen, connect to the bus, start the reader and the status ticker."""
        if self._token:
            self._redactor = _RedactToken(self._token)
            _ws_log.addFilter(self._redactor)
        # websockets says "connection open/closed" at INFO: a line per client, noise at 1000.
        _ws_log.setLevel(logging.NOTSET if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        self._subscriber = AsyncSubscriber(self._endpoints)
        if self._asks_endpoint:
            self._ask_sender = AskSender(self._asks_endpoint)
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._process_request,
                compression=None,
                # Past max_message_bytes a message gets an error reply; past this hard limit
                # websockets closes with 1009 without reading it into memory.
                max_size=4 * self._max_message_bytes,
                max_queue=4,
                close_timeout=self._close_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                logger=_ws_log,
                backlog=1024,
            )
        except OSError:
            self._close_bus()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self._started_at = self._last_status = time.monotonic()
        self._loops = [self._spawn(self._read_bus()), self._spawn(self._tick())]
        log.info(
            "gateway listening on http://%s:%d/ (websockets at %s, auth %s)",
            self.host,
            self.port,
            WS_PATH,
            "on" if self._token else "off",
        )

    async def stop(self) -> None:
        """Close every client (1001), stop reading the bus, release the port and the sockets."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=False)
        for task in self._loops:
            task.cancel()
        for client in list(self._clients.values()):
            self._close_soon(client, CloseCode.GOING_AWAY, "server shutting down")
        await asyncio.gather(*self._tasks, return_exceptions=True)  # every close ends within close_timeout
        try:
            async with asyncio.timeout(self._close_timeout + 2.0):
                await server.wait_closed()
        except TimeoutError:
            log.warning("connections still open after %.1f s; aborting them", self._close_timeout + 2.0)
            for conn in server.connections:
                conn.transport.abort()
        if self._status_handle is not None:
            self._status_handle.cancel()
        self._close_bus()
        if self._redactor is not None:
            _ws_log.removeFilter(self._redactor)
        log.info("gateway stopped")

    def connect(self, endpoint: str) -> None:
        """Also read the publisher bound at ``endpoint`` (zmq retries until it exists)."""
        if endpoint not in self._endpoints:
            self._endpoints.append(endpoint)
        if self._subscriber is not None:
            self._subscriber.connect(endpoint)

    def _close_bus(self) -> None:
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
        if self._ask_sender is not None:
            self._ask_sender.close()
            self._ask_sender = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def clients(self) -> int:
        return len(self._clients)

    def health(self) -> Message:
        now = time.time()
        return {
            "ok": self._server is not None,
            "clients": len(self._clients),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "last_message_wall": self._last_bus_wall,
            "last_message_age_s": None
            if self._last_bus_wall is None
            else round(now - self._last_bus_wall, 3),
            "pending_asks": len(self._asks),
            # Clients with messages waiting in their queue (their socket buffer is full) and those messages.
            "clients_behind": sum(1 for c in self._clients.values() if c.queue),
            "queued_messages": sum(len(c.queue) for c in self._clients.values()),
            **self.stats,
        }

    # -- HTTP: page, health, auth ----------------------------------------------------------------
    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """HTTP before any websocket: GET (and HEAD: the same headers, no body) only."""
        if request.method not in ("GET", "HEAD"):
            return _response(
                http.HTTPStatus.METHOD_NOT_ALLOWED,
                b"Only GET and HEAD.\n",
                "text/plain; charset=utf-8",
                extra=[("Allow", "GET, HEAD")],
            )
        response = self._route(request)
        if request.method == "HEAD" and response is not None:
            return dataclasses.replace(response, body=b"")  # Content-Length still tells the size
        return response

    def _route(self, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == HEALTH_PATH:
            return _response(
                http.HTTPStatus.OK,
                json.dumps(self.health()).encode(),
                "application/json",
                extra=[("Cache-Control", "no-store")],
            )
        via_query = False
        if self._token:
            via_query = self._query_token(url.query)
            if not (via_query or self._header_token(request)):
                return _response(
                    http.HTTPStatus.UNAUTHORIZED,
                    b"Missing or wrong token.\n",
                    "text/plain; charset=utf-8",
                    extra=[("WWW-Authenticate", "Bearer")],
                )
        if url.path == WS_PATH:
            if len(self._clients) >= self._max_clients:
                return _response(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, b"Too many clients.\n", "text/plain; charset=utf-8"
                )
            return None  # the websocket handshake proceeds (426 if it is not an upgrade)
        if "upgrade" in request.headers.get("Connection", "").lower():
            return _response(
                http.HTTPStatus.NOT_FOUND,
                f"Websockets are at {WS_PATH}.\n".encode(),
                "text/plain; charset=utf-8",
            )
        response = self._static(url.path)
        if via_query:
            # The page's own requests (scripts, styles, the websocket) then carry the token.
            response.headers["Set-Cookie"] = (
                f"{self.token_cookie}={self._token}; HttpOnly; SameSite=Strict; Path=/"
            )
        return response

    @property
    def token_cookie(self) -> str:
        """The name of this gateway's token cookie (its port is known once it listens)."""
        return f"{TOKEN_COOKIE_PREFIX}{self.port}"

    def _query_token(self, query: str) -> bool:
        return any(self._matches(value) for value in parse_qs(query).get("token", []))

    def _header_token(self, request: Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and self._matches(auth[7:].strip()):
            return True
        for raw in request.headers.get_all("Cookie"):
            try:
                morsel = SimpleCookie(raw).get(self.token_cookie)
            except CookieError:
                continue
            if morsel is not None and self._matches(morsel.value):
                return True
        return False

    def _matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(errors="surrogateescape"), self._token.encode())

    def _static(self, path: str) -> Response:
        not_found = _response(http.HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain; charset=utf-8")
        if self._web_dir is None:
            return not_found
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (self._web_dir / name).resolve()
        if not target.is_relative_to(self._web_dir) or not target.is_file():
            return not_found
        try:
            if target.stat().st_size > _MAX_STATIC_BYTES:
                return not_found
            body = target.read_bytes()
        except OSError as exc:
            log.warning("cannot read %s: %s", target, exc)
            return not_found
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        return _response(http.HTTPStatus.OK, body, kind, extra=[("Cache-Control", "no-cache")])

    # -- websocket clients -----------------------------------------------------------------------
    async def _handle(self, conn: ServerConnection) -> None:
        client = _Client(next(self._numbers), conn, self._client_queue, self._max_errors)
        if self._send_buffer is not None:
            # A fixed kernel send buffer (no autotuning up to 4 MiB per socket) bounds what a stuck
            # client pins in the kernel, and lets its backpressure reach the queue policy sooner.
            sock = conn.transport.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            except OSError as exc:  # the peer is already gone: the receive loop below notices
                log.debug("client #%d: cannot set its send buffer: %s", client.number, exc)
        self._clients[client.number] = client
        writer = asyncio.get_running_loop().create_task(self._writer(client))
        log.debug("client #%d connected from %s", client.number, conn.remote_address)
        try:
            async for raw in conn:
                self._on_client_message(client, raw)
        except ConnectionClosed as exc:
            log.debug("client #%d went away: %s", client.number, exc)
        finally:
            self._clients.pop(client.number, None)
            self._asks.drop_client(client.number)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            log.debug("client #%d closed (code %s)", client.number, conn.close_code)

    async def _writer(self, client: _Client) -> None:
        """Drain the client's queue with backpressure (only this client waits on its socket)."""
        try:
            while True:
                await client.wakeup.wait()
                client.wakeup.clear()
                while (item := client.queue.pop()) is not None:
                    client.sending = True
                    await client.conn.send(item, text=True)
                    client.sending = False
        except ConnectionClosed:
            pass  # the handler notices the closure and cleans up
        finally:
            client.sending = False

    def _on_client_message(self, client: _Client, raw: str | bytes) -> None:
        try:
            request = messages.parse_client_message(raw, max_bytes=self._max_message_bytes)
            if isinstance(request, Subscribe):
                self._subscribe(client, request)
            elif isinstance(request, Ask):
                self._ask(client, request)
            elif isinstance(request, Ping):
                self._send(client, Pong(id=request.id, t=request.t, wall=time.time()))
        except MessageError as exc:
            self._client_error(client, exc)

    def _client_error(self, client: _Client, exc: MessageError) -> None:
        self.stats["error_replies"] += 1
        self._send(client, exc.to_reply())
        now = time.monotonic()
        client.errors.append(now)
        if len(client.errors) == client.errors.maxlen and now - client.errors[0] < self._error_window:
            self._close_soon(
                client,
                CloseCode.POLICY_VIOLATION,
                f"too many invalid messages ({self._max_errors} in {self._error_window:g} s)",
            )

    def _subscribe(self, client: _Client, request: Subscribe) -> None:
        client.subscription = request
        replay = self._replay.recent(request, request.replay)
        self._send(
            client,
            Subscribed(
                streams="*" if request.streams is None else sorted(request.streams),
                replay=request.replay,
                replayed=len(replay),
                thumbnails=request.thumbnails,
            ),
        )
        for caption in replay:
            self._deliver(client, caption)
        if request.thumbnails:
            for stream, thumb in self._thumbnails.items():
                if request.wants(stream):
                    self._deliver(client, thumb)
        self._send(client, self._status_message())

    def _ask(self, client: _Client, request: Ask) -> None:
        if self._ask_sender is None:
            raise MessageError(
                ErrorCode.ASK_UNAVAILABLE, "asking questions is not enabled on this server", request.id
            )
        streams = self._board.streams() | set(self._replay.streams())
        if streams and request.stream not in streams:
            raise MessageError(
                ErrorCode.UNKNOWN_STREAM, f"there is no stream named {request.stream!r}", request.id
            )
        pending = self._asks.add(client.number, request, time.monotonic())
        forwarded = AskRequest(
            id=pending.key,
            stream=request.stream,
            question=request.question,
            wall=time.time(),
            client=client.number,
        )
        if not self._ask_sender.send(forwarded):
            self._asks.resolve(pending.key)
            self._send(
                client,
                ErrorReply(
                    error=ErrorCode.ASK_UNAVAILABLE,
                    message="the inference process is not running; try again later",
                    id=request.id,
                ),
            )

    # -- delivery --------------------------------------------------------------------------------
    def _send(self, client: _Client, message: ServerMessage) -> None:
        self._deliver(client, message.to_json())

    def _deliver(self, client: _Client, data: bytes) -> None:
        if client.closing:
            return
        if self._writable_now(client):
            client.conn.transport.write(_text_frame(data))
        else:
            self._enqueue(client, data, time.monotonic())

    def _fanout(self, data: bytes, stream: str | None, *, thumbnail: bool = False) -> None:
        """Give ``data`` to every subscribed client that wants ``stream`` (None: all of them)."""
        now = time.monotonic()
        frame: bytes | None = None
        for client in self._clients.values():
            sub = client.subscription
            if sub is None or client.closing:
                continue
            if stream is not None and not sub.wants(stream):
                continue
            if thumbnail and not sub.thumbnails:
                continue
            if self._writable_now(client):
                if frame is None:
                    frame = _text_frame(data)
                client.conn.transport.write(frame)
            else:
                self._enqueue(client, data, now)

    def _writable_now(self, client: _Client) -> bool:
        """True when nothing is waiting for this client and its socket buffer has room: the message
        can be written at once, in order, without a task switch. (websockets writes whole frames
        from this same thread, and this gateway never sends fragmented messages, so a frame written
        here cannot interleave with one of its own.)"""
        conn = client.conn
        return (
            not client.queue
            and not client.sending
            and conn.protocol.state is State.OPEN
            and conn.send_in_progress is None
            and not conn.transport.is_closing()
            and conn.transport.get_write_buffer_size() <= self._write_buffer
        )

    def _enqueue(self, client: _Client, data: bytes, now: float) -> None:
        if client.queue.push(data, now):
            self.stats["dropped_messages"] += 1
            self._check_slow(client, now)
        client.wakeup.set()

    def _check_slow(self, client: _Client, now: float) -> None:
        behind = client.queue.behind_for(now)
        if behind > self._slow_client_timeout and self._close_soon(
            client,
            CloseCode.TOO_SLOW,
            f"too slow: dropping messages for {behind:.0f} s ({client.queue.dropped_total} dropped)",
        ):
            self.stats["slow_clients_closed"] += 1

    def _close_soon(self, client: _Client, code: int, reason: str) -> bool:
        """Start closing ``client`` (once: False if it already is); nothing more is sent to it."""
        if client.closing:
            return False
        client.closing = True
        if code != CloseCode.GOING_AWAY:
            log.info("closing client #%d (code %d): %s", client.number, code, reason)
        while client.queue.pop() is not None:  # free its memory now
            pass
        self._spawn(self._close(client, code, reason))
        return True

    async def _close(self, client: _Client, code: int, reason: str) -> None:
        """Close with ``code``; a client that does not complete the handshake in time is aborted
        (``close()`` alone would wait forever for a client that stopped reading)."""
        try:
            async with asyncio.timeout(self._close_timeout):
                await client.conn.close(code, reason)
        except TimeoutError:
            client.conn.transport.abort()

    # -- the bus ---------------------------------------------------------------------------------
    async def _read_bus(self) -> None:
        assert self._subscriber is not None
        while True:
            try:
                self._on_bus_message(await self._subscriber.recv())
            except (ProtocolError, ValueError, TypeError, KeyError) as exc:
                self._bad_bus_message(exc)
            except asyncio.CancelledError:
                raise
            except Exception:  # the reader must outlive any one message; say what happened
                log.exception("unexpected error handling a bus message; continuing")

    def _on_bus_message(self, envelope: Envelope) -> None:
        self.stats["bus_messages"] += 1
        self._last_bus_wall = time.time()
        kind, stream = envelope.type, envelope.stream
        if kind in _FORWARDED:
            if stream is None:
                raise ValueError(f"bus {kind!r} message without a 'stream' name")
            if kind == "caption":
                self._replay.add(stream, envelope.body)
            elif kind == "thumbnail":
                if stream in self._thumbnails or len(self._thumbnails) < self._max_streams:
                    self._thumbnails[stream] = envelope.body
            self._fanout(envelope.body, stream, thumbnail=kind == "thumbnail")
        elif kind == "answer" or kind in _REPORTS:
            message = envelope.decode()
            if isinstance(message, Answer):
                self._on_answer(message)
            elif isinstance(message, CaptureStatus | InferenceStatus | Processes):
                if self._board.update(message, time.monotonic()):
                    self._status_soon()
        else:
            raise ValueError(f"bus message of unknown type {kind!r}")

    def _on_answer(self, answer: Answer) -> None:
        pending = self._asks.resolve(answer.id)
        if pending is None:
            log.debug("answer for an unknown or expired ask %r", answer.id)
            return
        client = self._clients.get(pending.client)
        if client is None:
            return
        if answer.error is not None:
            text = answer.message or "the inference process could not answer"
            self._send(client, ErrorReply(error=answer.error, message=text, id=pending.request_id))
        else:
            self._send(client, dataclasses.replace(answer, id=pending.request_id))

    def _bad_bus_message(self, exc: Exception) -> None:
        self.stats["bad_bus_messages"] += 1
        now = time.monotonic()
        if now - self._bad_bus_logged > 5.0:  # one line per 5 s, not one per message
            self._bad_bus_logged = now
            log.warning("ignoring a bad bus message (%d so far): %s", self.stats["bad_bus_messages"], exc)

    # -- status and timers -----------------------------------------------------------------------
    def _status_message(self) -> Status:
        return self._board.snapshot(now=time.monotonic(), wall=time.time(), clients=len(self._clients))

    def _broadcast_status(self) -> None:
        self._status_handle = None
        self._last_status = time.monotonic()
        self._fanout(self._status_message().to_json(), None)

    def _status_soon(self) -> None:
        """Send status now, or as soon as the minimum gap allows (once for a burst of changes)."""
        if self._status_handle is not None:
            return
        wait = self._last_status + _STATUS_MIN_GAP - time.monotonic()
        if wait <= 0:
            self._broadcast_status()
        else:
            self._status_handle = asyncio.get_running_loop().call_later(wait, self._broadcast_status)

    async def _tick(self) -> None:
        last_slow_check = 0.0
        while True:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            for pending in self._asks.expire(now):
                self._ask_expired(pending)
            if now - self._last_status >= self._status_interval and self._status_handle is None:
                self._broadcast_status()
            if now - last_slow_check >= 1.0:  # a stuck client is closed even when no new message comes
                last_slow_check = now
                for client in list(self._clients.values()):
                    self._check_slow(client, now)

    def _ask_expired(self, pending: PendingAsk) -> None:
        client = self._clients.get(pending.client)
        if client is not None:
            self._send(
                client,
                ErrorReply(
                    error=ErrorCode.ASK_TIMEOUT,
                    message=f"no answer within {self._asks.timeout:g} s; "
                    "the inference process may be busy or down",
                    id=pending.request_id,
                ),
            )


def _text_frame(data: bytes) -> bytes:
    """The wire bytes of a server text message (unmasked, no extensions: the same for every client)."""
    return Frame(Opcode.TEXT, data).serialize(mask=False)


def _response(
    status: http.HTTPStatus, body: bytes, content_type: str, *, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


class _RedactToken(logging.Filter):
    """Keeps the token out of websockets' own log lines (its debug log prints request lines)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        # Any token= value goes, as sent: a percent-encoded token is accepted, so it must not show.
        redacted = _TOKEN_IN_QUERY.sub(r"\1***", text.replace(self._token, "***"))
        if redacted != text:
            record.msg = redacted
            record.args = ()
        return True


_TOKEN_IN_QUERY = re.compile(r"([?&;]token=)[^&\s\"']*")


# -- process entry -------------------------------------------------------------------------------


def gateway_main(
    events_endpoints: list[str],
    asks_endpoint: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    web_dir: str | None = None,
    ready_file: str | None = None,
    ready_event: Any = None,
    stop_event: Any = None,
    **options: Any,
) -> int:
    """Run the gateway until ``stop_event`` (a ``multiprocessing`` event) is set, or SIGTERM/SIGINT
    when there is none. Returns the process exit code: 0 after a clean stop, 2 when it cannot listen.

    ``token`` None means "use $VIDNARRATE_TOKEN" (empty: no auth). Once listening, the bound port is
    written to ``ready_file`` as JSON ``{"port", "pid", "url"}`` (atomically) and ``ready_event`` is set.
    ``options`` go to :class:`Gateway` (``client_queue``, ``replay``, ``max_message_bytes``, ...).
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    gateway = Gateway(
        events_endpoints,
        asks_endpoint,
        host=host,
        port=port,
        token=token,
        web_dir=web_dir if web_dir is not None else DEFAULT_WEB_DIR,
        **options,
    )
    return asyncio.run(_run(gateway, ready_file, ready_event, stop_event))


async def _run(gateway: Gateway, ready_file: str | None, ready_event: Any, stop_event: Any) -> int:
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", gateway.host, gateway.port, exc)
        return ExitCode.USAGE
    try:
        if ready_file is not None:
            _write_ready_file(Path(ready_file), gateway)
        if ready_event is not None:
            ready_event.set()
        if stop_event is not None:
            while not stop_event.is_set():
                await asyncio.sleep(0.1)
        else:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    finally:
        await gateway.stop()
    return 0


def _write_ready_file(path: Path, gateway: Gateway) -> None:
    info = {"port": gateway.port, "pid": os.getpid(), "url": f"http://{gateway.host}:{gateway.port}/"}
    write_ready_file(path, json.dumps(info))
