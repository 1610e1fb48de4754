"""The gateway: zmq bus in, websocket clients out, on one port.

* ``/``: the viewer (static files of ``stream/web/``), ``/healthz`` and the token check:
  :mod:`stream.routes` and :mod:`stream.auth`; ``/metrics``: :mod:`stream.metrics`;
* ``/ws``: the websocket protocol of ``docs/protocol.md`` (subscribe, ask, ping, search, history);
  the connections and the fan-out to them are :mod:`stream.clients`, the state behind them (queues,
  replay, status, pending asks) the I/O-free :mod:`stream.fanout`, the caption store's reads
  :mod:`stream.storereader`.

This module wires them: it reads the bus, forwards captions, partials, events, thumbnails and summaries
as the bytes their publisher encoded, merges status reports, routes asks to the inference process and
their answers back to the asker, hands every request that reads the caption store (a replay, a stored
thumbnail, an ask about the past, searches and histories) to :mod:`stream.gatewaystore`, and runs the
status and ask timers.

Run it in-process (:class:`Gateway`, ``await start()`` / ``await stop()``) or as a child process
(:func:`gateway_main`, picklable for ``multiprocessing`` "spawn").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve

from .auth import RedactToken, TokenAuth
from .bus import AskSender, AsyncSubscriber, Envelope
from .clients import Client, Clients
from .errors import ProtocolError
from .fanout import PendingAsk, PendingAsks, ReplayStore, StatusBoard
from .gateway_options import GatewayOptions
from .gatewaystore import GatewayStore
from .messages import (
    Answer,
    AskRequest,
    CaptureStatus,
    CloseCode,
    ErrorCode,
    ErrorReply,
    InferenceStatus,
    Message,
    MessageError,
    OutputsStatus,
    Pong,
    Processes,
    RecorderStatus,
    Status,
    Subscribed,
)
from .metrics import CONTENT_TYPE, StatusMetrics
from .process import ExitCode, write_ready_file
from .requests import Ask, Ping, Subscribe, parse_client_message
from .routes import WS_PATH, Routes
from .storereader import StoreReader

log = logging.getLogger(__name__)
_ws_log = logging.getLogger(__name__ + ".websockets")

_FORWARDED = frozenset({"caption", "partial", "event", "thumbnail", "summary"})  # bus bytes go to clients
_REPORTS = frozenset({"capture_status", "inference_status", "processes", "recorder_status", "outputs_status"})
_STATUS_MIN_GAP = 0.2  # seconds between two "on change" status messages
# Stopping a run: the bus is drained once it has been quiet this long, or after the most (as the
# recorder does; the supervisor kills a child only after its stop_timeout).
_DRAIN_QUIET = 0.5
_DRAIN_MAX = 2.0
_TICK = 0.1
T = TypeVar("T")


class Gateway:
    """The websocket gateway, in-process. With ``port=0`` it binds a free port: read :attr:`port`
    after :meth:`start`."""

    def __init__(
        self,
        events_endpoints: Sequence[str] = (),
        asks_endpoint: str | None = None,
        options: GatewayOptions | None = None,
        ask_routes: Mapping[str, str] | None = None,
    ) -> None:
        """``ask_routes``: stream -> the asks endpoint of the inference process that owns it, when
        ``[model] devices`` starts several; a stream not in it is asked at ``asks_endpoint``."""
        self.options = options = options or GatewayOptions()
        self.host = options.host
        self.port = options.port
        self._endpoints = list(events_endpoints)
        self._asks_endpoint = asks_endpoint
        self._ask_routes = dict(ask_routes or {})
        self._auth = TokenAuth(options.token) if options.token else None
        self._metrics = StatusMetrics(
            status=self._status_message, gateway=self.health, max_streams=options.max_streams
        )
        self._routes = Routes(
            web_dir=options.web_dir,
            auth=self._auth,
            health=self.health,
            admit=lambda: len(self._clients) < options.max_clients,
            thumbnail=self._stored_thumbnail if options.store is not None else None,
            metrics=lambda: (CONTENT_TYPE, self._metrics.render()),
        )
        self._clients = Clients(options)
        self._replay = ReplayStore(options.replay, max_streams=options.max_streams)
        self._board = StatusBoard(max_streams=options.max_streams)
        self._asks = PendingAsks(
            timeout=options.ask_timeout, per_client=options.asks_per_client, total=options.max_pending_asks
        )
        self._thumbnails: dict[str, bytes] = {}  # the latest of each stream, as published
        self._store = (
            GatewayStore(
                StoreReader(Path(options.store), run_id=options.run_id),
                options,
                self._clients,
                self._replay,
                self._asks,
                start_subscription=self._start_subscription,
                sender_for=self._sender_for,
                on_error_reply=self._count_error_reply,
            )
            if options.store is not None
            else None
        )
        self._subscriber: AsyncSubscriber | None = None
        self._ask_sender: AskSender | None = None
        self._routed_senders: dict[str, AskSender] = {}  # endpoint -> its sender, per ask_routes
        self._server: Server | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._redactor: RedactToken | None = None
        self._started_at = 0.0
        self._last_status = 0.0
        self._status_handle: asyncio.TimerHandle | None = None
        self._last_bus_wall: float | None = None
        self._last_bus_at = 0.0  # monotonic
        self._bad_bus_logged = 0.0
        self._counts = {"bus_messages": 0, "bad_bus_messages": 0, "error_replies": 0}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen, connect to the bus, start the reader and the status ticker."""
        options = self.options
        if options.token:
            self._redactor = RedactToken(options.token)
            _ws_log.addFilter(self._redactor)
        # websockets says "connection open/closed" at INFO: a line per client, noise at 1000.
        _ws_log.setLevel(logging.NOTSET if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        self._subscriber = AsyncSubscriber(self._endpoints)
        if self._asks_endpoint:
            self._ask_sender = AskSender(self._asks_endpoint)
            for endpoint in set(self._ask_routes.values()) - {self._asks_endpoint}:
                self._routed_senders[endpoint] = AskSender(endpoint)
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._routes.process_request,
                compression=None,  # see stream.clients: one frame's bytes serve every client
                # Past max_message_bytes a message gets an error reply; past this hard limit
                # websockets closes with 1009 without reading it into memory.
                max_size=options.max_frame_bytes,
                max_queue=4,
                close_timeout=options.close_timeout,
                ping_interval=options.ping_interval,
                ping_timeout=options.ping_timeout,
                logger=_ws_log,
                backlog=1024,
            )
        except OSError:
            self._close_bus()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        if self._auth is not None:
            self._auth.port = self.port  # names the cookie
        self._started_at = self._last_status = time.monotonic()
        self._loops = [self._spawn(self._read_bus()), self._spawn(self._tick())]
        log.info(
            "gateway listening on http://%s:%d/ (websockets at %s, auth %s)",
            self.host,
            self.port,
            WS_PATH,
            "on" if self._auth else "off",
        )

    async def stop(self) -> None:
        """Close every client (1001), stop reading the bus, release the port and the sockets."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=False)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._store is not None:
            await self._store.close()
        await self._clients.close_all(CloseCode.GOING_AWAY, "server shutting down")
        grace = self.options.close_timeout + 2.0
        try:
            async with asyncio.timeout(grace):
                await server.wait_closed()
        except TimeoutError:
            log.warning("connections still open after %.1f s; aborting them", grace)
            for conn in server.connections:
                conn.transport.abort()
        if self._status_handle is not None:
            self._status_handle.cancel()
        self._close_bus()
        if self._redactor is not None:
            _ws_log.removeFilter(self._redactor)
        log.info("gateway stopped")

    async def drain(self) -> None:
        """Keep forwarding until the bus has been quiet for a moment. A run is stopped inference
        first: by the time the gateway is told, the inference process has exited, and what it
        published last (the ``end`` of every event still open, its last captions) may still be on its
        way; clients get it before they are closed."""
        began = time.monotonic()
        while (now := time.monotonic()) - began < _DRAIN_MAX:
            quiet = now - max(self._last_bus_at, began)
            if quiet >= _DRAIN_QUIET:
                return
            await asyncio.sleep(min(_DRAIN_QUIET - quiet, _DRAIN_MAX - (now - began)))

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
        for sender in self._routed_senders.values():
            sender.close()
        self._routed_senders.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def stats(self) -> dict[str, int]:
        """The counters ``/healthz`` reports."""
        return {
            **self._counts,
            "dropped_messages": self._clients.dropped_messages,
            "slow_clients_closed": self._clients.slow_clients_closed,
        }

    def health(self) -> Message:
        now = time.time()
        behind, queued = self._clients.queued()
        return {
            "ok": self._server is not None,
            "clients": len(self._clients),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "last_message_wall": self._last_bus_wall,
            "last_message_age_s": None
            if self._last_bus_wall is None
            else round(now - self._last_bus_wall, 3),
            "pending_asks": len(self._asks),
            "queries_in_flight": 0 if self._store is None else len(self._store.queries),
            "clients_behind": behind,
            "queued_messages": queued,
            **self.stats,
        }

    # -- client requests -------------------------------------------------------------------------
    async def _handle(self, conn: ServerConnection) -> None:
        await self._clients.serve(conn, self._on_client_message, self._client_gone)

    def _client_gone(self, client: Client) -> None:
        self._asks.drop_client(client.number)
        if self._store is not None:
            self._store.forget(client.number)

    def _on_client_message(self, client: Client, raw: str | bytes) -> None:
        try:
            request = parse_client_message(raw, max_bytes=self.options.max_message_bytes)
            if isinstance(request, Subscribe):
                self._subscribe(client, request)
            elif isinstance(request, Ask):
                self._ask(client, request)
            elif isinstance(request, Ping):
                self._clients.send(client, Pong(id=request.id, t=request.t, wall=time.time()))
            elif self._store is None:
                raise MessageError(
                    ErrorCode.STORE_UNAVAILABLE,
                    "this server keeps no caption store (a run started with --no-store records nothing)",
                    request.id,
                )
            else:
                self._store.query(client, request)
        except MessageError as exc:
            self._counts["error_replies"] += 1
            self._clients.send(client, exc.to_reply())
            self._clients.count_error(client, time.monotonic())

    def _subscribe(self, client: Client, request: Subscribe) -> None:
        count = min(request.replay, self.options.replay) if request.wants_type("caption") else 0
        store = self._store
        if store is not None and store.replays and count > 0 and store.subscribe(client, request, count):
            return
        # No store, or this client already has store reads running: this gateway's buffer only.
        if store is not None:
            store.forget(client.number)
        self._start_subscription(client, request, self._replay.recent(request, request.replay))

    def _start_subscription(self, client: Client, request: Subscribe, replay: list[bytes]) -> None:
        client.subscription = request
        self._clients.send(
            client,
            Subscribed(
                streams="*" if request.streams is None else sorted(request.streams),
                replay=request.replay,
                replayed=len(replay),
                thumbnails=request.thumbnails,
                types=None if request.types is None else sorted(request.types),
            ),
        )
        for caption in replay:
            self._clients.deliver(client, caption)
        if request.thumbnails and request.wants_type("thumbnail"):
            for stream, thumb in self._thumbnails.items():
                if request.wants(stream):
                    self._clients.deliver(client, thumb)
        if request.wants_type("status"):
            self._clients.send(client, self._status_message())

    async def _stored_thumbnail(self, store_id: int) -> bytes | None:
        return None if self._store is None else await self._store.thumbnail(store_id)

    def _count_error_reply(self) -> None:
        self._counts["error_replies"] += 1

    def _ask(self, client: Client, request: Ask) -> None:
        if self._ask_sender is None:
            raise MessageError(
                ErrorCode.ASK_UNAVAILABLE, "asking questions is not enabled on this server", request.id
            )
        if request.about_past:
            if self._store is None:
                raise MessageError(
                    ErrorCode.STORE_UNAVAILABLE,
                    "questions over the past need the caption store, and this server keeps none "
                    "(a run started with --no-store records nothing)",
                    request.id,
                )
            self._store.ask_past(client, request)
            return
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
        sender = self._sender_for(request.stream)
        if sender is None or not sender.send(forwarded):
            self._asks.resolve(pending.key)
            self._clients.send(
                client,
                ErrorReply(
                    error=ErrorCode.ASK_UNAVAILABLE,
                    message="the inference process is not running; try again later",
                    id=request.id,
                ),
            )

    def _sender_for(self, stream: str) -> AskSender | None:
        """The sender to the inference process that owns ``stream``; None when asking is off."""
        endpoint = self._ask_routes.get(stream, self._asks_endpoint)
        return self._routed_senders.get(endpoint or "", self._ask_sender)

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
        self._counts["bus_messages"] += 1
        self._last_bus_wall = time.time()
        self._last_bus_at = time.monotonic()
        kind, stream = envelope.type, envelope.stream
        if kind in _FORWARDED:
            if stream is None:
                raise ValueError(f"bus {kind!r} message without a 'stream' name")
            if kind == "caption":
                replays = self._store is not None and self._store.replays
                seq, wall_end = _replay_key(envelope.body) if replays else (None, 0.0)
                self._replay.add(stream, envelope.body, seq=seq, wall_end=wall_end)
                self._metrics.observe_caption(stream, envelope.body)
            elif kind == "thumbnail":
                if stream in self._thumbnails or len(self._thumbnails) < self.options.max_streams:
                    self._thumbnails[stream] = envelope.body
            self._clients.fanout(envelope.body, stream, thumbnail=kind == "thumbnail", kind=kind)
        elif kind == "answer" or kind in _REPORTS:
            message = envelope.decode()
            if isinstance(message, Answer):
                self._on_answer(message)
            elif isinstance(
                message, CaptureStatus | InferenceStatus | Processes | RecorderStatus | OutputsStatus
            ):
                if isinstance(message, InferenceStatus):
                    self._metrics.inference_report(message)
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
            self._clients.send(client, ErrorReply(error=answer.error, message=text, id=pending.request_id))
        else:
            self._clients.send(client, dataclasses.replace(answer, id=pending.request_id))

    def _bad_bus_message(self, exc: Exception) -> None:
        self._counts["bad_bus_messages"] += 1
        now = time.monotonic()
        if now - self._bad_bus_logged > 5.0:  # one line per 5 s, not one per message
            self._bad_bus_logged = now
            log.warning("ignoring a bad bus message (%d so far): %s", self._counts["bad_bus_messages"], exc)

    # -- status and timers -----------------------------------------------------------------------
    def _status_message(self) -> Status:
        return self._board.snapshot(now=time.monotonic(), wall=time.time(), clients=len(self._clients))

    def _broadcast_status(self) -> None:
        self._status_handle = None
        self._last_status = time.monotonic()
        self._clients.fanout(self._status_message().to_json(), None, kind="status")

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
            if now - self._last_status >= self.options.status_interval and self._status_handle is None:
                self._broadcast_status()
            if now - last_slow_check >= 1.0:  # a stuck client is closed even when no new message comes
                last_slow_check = now
                self._clients.check_slow(now)

    def _ask_expired(self, pending: PendingAsk) -> None:
        client = self._clients.get(pending.client)
        if client is not None:
            self._clients.send(
                client,
                ErrorReply(
                    error=ErrorCode.ASK_TIMEOUT,
                    message=f"no answer within {self._asks.timeout:g} s; "
                    "the inference process may be busy or down",
                    id=pending.request_id,
                ),
            )


def _replay_key(body: bytes) -> tuple[int | None, float]:
    """A caption's ``seq`` and ``wall_end``, what merging its replay with the store's needs."""
    data = json.loads(body)
    seq, wall_end = data.get("seq"), data.get("wall_end")
    return (
        seq if isinstance(seq, int) else None,
        float(wall_end) if isinstance(wall_end, int | float) else 0.0,
    )


# -- process entry -------------------------------------------------------------------------------


def gateway_main(
    events_endpoints: list[str],
    asks_endpoint: str | None,
    options: GatewayOptions,
    *,
    ready_file: str | None = None,
    ready_event: Any = None,
    stop_event: Any = None,
    ask_routes: Mapping[str, str] | None = None,
) -> int:
    """Run the gateway until ``stop_event`` (a ``multiprocessing`` event) is set, or SIGTERM/SIGINT
    when there is none. Returns the exit code: 0 after a clean stop, ``USAGE`` when it cannot listen.

    Once listening, the bound port is written to ``ready_file`` as JSON ``{"port", "pid", "url"}``
    (atomically) and ``ready_event`` is set.
    """
    gateway = Gateway(events_endpoints, asks_endpoint, options, ask_routes)
    return asyncio.run(_run(gateway, ready_file, ready_event, stop_event))


async def _run(gateway: Gateway, ready_file: str | None, ready_event: Any, stop_event: Any) -> int:
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", gateway.host, gateway.port, exc)
        return ExitCode.USAGE
    try:
        if ready_file is not None:
            info = {"port": gateway.port, "pid": os.getpid(), "url": f"http://{gateway.host}:{gateway.port}/"}
            write_ready_file(Path(ready_file), json.dumps(info))
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
        await gateway.drain()
    finally:
        await gateway.stop()
    return ExitCode.OK
