"""The gateway's side of the caption store: every request a client makes that reads the store.

A replay from the store when a client subscribes, a stored thumbnail (``/thumbnail/<id>``), the
stored captions of an ask about the past, and searches and histories. Each read runs on one worker
thread of this class's own (a :class:`~stream.store.Store` is used by one thread at a time, and SQLite
never blocks the event loop); a client has at most ``queries_per_client`` reads there at once, counted
until the thread is done with them, so a client cannot pile reads onto a stuck disk. Whatever is read
goes back to the client through the gateway's :class:`~stream.clients.Clients`; an ask about the past
goes on to the inference process that owns its stream with its captions.

What the gateway decides (whether a subscribe is served from the store at all, the asks it keeps
pending, the status) stays in :mod:`stream.gateway`; the readers and their answers are
:mod:`stream.storereader`, the merge of a replay with the gateway's own buffer :mod:`stream.storereplay`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .bus import AskSender
from .clients import Client, Clients
from .fanout import ClientLimit, PendingAsk, PendingAsks, ReplayStore
from .gateway_options import GatewayOptions
from .messages import AskRequest, ErrorCode, ErrorReply, MessageError, Results
from .requests import Ask, StoreRequest, Subscribe
from .storereader import PastCaptions, StoreReader
from .storereplay import merge_replay

log = logging.getLogger(__name__)
T = TypeVar("T")

StartSubscription = Callable[[Client, Subscribe, list[bytes]], None]
SenderFor = Callable[[str], AskSender | None]


class GatewayStore:
    """The store reads of one gateway. ``start_subscription`` starts a client's subscription with its
    replay; ``sender_for`` names the asks sender of a stream's inference process; ``on_error_reply``
    counts each error sent back to a client."""

    def __init__(
        self,
        reader: StoreReader,
        options: GatewayOptions,
        clients: Clients,
        buffer: ReplayStore,
        asks: PendingAsks,
        *,
        start_subscription: StartSubscription,
        sender_for: SenderFor,
        on_error_reply: Callable[[], None],
    ) -> None:
        self.reader = reader
        self.options = options
        self._clients = clients
        self._buffer = buffer
        self._asks = asks
        self._start_subscription = start_subscription
        self._sender_for = sender_for
        self._on_error_reply = on_error_reply
        self.queries = ClientLimit(options.queries_per_client)
        self._tasks: set[asyncio.Task[None]] = set()
        self._replaying: dict[int, Subscribe] = {}  # client -> its subscribe waiting for the store
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def replays(self) -> bool:
        """Whether subscribes are replayed from the store: that needs the run id, to tell this run's
        captions from earlier runs'."""
        return self.options.run_id is not None

    async def close(self) -> None:
        """Cancel the reads in flight; the reader is closed on its own thread, after a read that may
        still run there."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._thread is not None:
            self._thread.submit(self.reader.close)
            self._thread.shutdown(wait=False, cancel_futures=False)
            self._thread = None

    def forget(self, number: int) -> None:
        """A client left or subscribed again without the store: its replay waiting here is dropped."""
        self._replaying.pop(number, None)

    # -- replay ----------------------------------------------------------------------------------
    def subscribe(self, client: Client, request: Subscribe, count: int) -> bool:
        """Start reading ``count`` captions per stream for a subscribe; its subscription starts once
        the store has answered (replay first, then live, as always). False when this client already
        has its reads running: the caller serves it from its buffer alone."""
        if not self.queries.start(client.number):
            self._replaying.pop(client.number, None)
            return False
        self._replaying[client.number] = request
        self._spawn(self._replay(client.number, request, count))
        return True

    async def _replay(self, number: int, request: Subscribe, count: int) -> None:
        assert self.options.run_id is not None
        wanted = request.streams
        if wanted is None and self.options.streams:
            wanted = frozenset(self.options.streams)
        read = self._on_thread(self.reader.recent, wanted, count, self.options.max_streams)
        read.add_done_callback(lambda _: self.queries.finish(number))
        try:
            stored = await asyncio.wait_for(asyncio.shield(read), self.options.replay_timeout)
        except TimeoutError:  # a slow or hung disk: live captions must not wait for it
            log.warning(
                "the store gave no replay within %g s; replaying this gateway's buffer alone",
                self.options.replay_timeout,
            )
            stored = []
        except Exception:  # a bug: the client still gets its subscription, from the buffer
            log.exception("unexpected error reading the replay from the store")
            stored = []
        client = self._clients.get(number)
        if client is None or self._replaying.get(number) is not request:
            return  # gone, or subscribed again meanwhile (the newer subscribe answers)
        del self._replaying[number]
        # In the same step as the subscription starts: what the gateway heard until now is in its
        # buffer (merged here), what it hears after goes live.
        replay = merge_replay(stored, self._buffer.entries(request), run_id=self.options.run_id, count=count)
        self._start_subscription(client, request, replay)

    # -- thumbnails ------------------------------------------------------------------------------
    async def thumbnail(self, store_id: int) -> bytes | None:
        return await self._on_thread(self.reader.thumbnail, store_id)

    # -- asks about the past ---------------------------------------------------------------------
    def ask_past(self, client: Client, request: Ask) -> None:
        """A question over the past: its stored captions are read on the store thread, then it goes
        to the inference process with them (counted and timed out like any ask meanwhile)."""
        pending = self._asks.add(client.number, request, time.monotonic())
        now = time.time()
        wall_from = now - request.since if request.since is not None else request.wall_from
        wall_to = request.wall_to if request.wall_to is not None else now
        self._spawn(self._forward_past(client.number, pending, request, wall_from, wall_to))

    async def _forward_past(
        self, number: int, pending: PendingAsk, request: Ask, wall_from: float | None, wall_to: float
    ) -> None:
        try:
            found = await self._on_thread(
                self.reader.past_captions, request.id, request.stream, request.question, wall_from, wall_to
            )
        except Exception:  # a bug, not a bad store (past_captions replies to those): the asker hears
            log.exception("unexpected error reading the captions of an ask over the past")
            found = ErrorReply(
                error=ErrorCode.STORE_UNAVAILABLE,
                message="the store could not be read (an error on the server; see its log)",
                id=request.id,
            )
        sent = (
            isinstance(found, PastCaptions)
            and (sender := self._sender_for(request.stream)) is not None
            and sender.send(
                AskRequest(
                    id=pending.key,
                    stream=request.stream,
                    question=request.question,
                    wall=time.time(),
                    client=number,
                    captions=found.captions,
                    from_=found.wall_from,
                    to=found.wall_to,
                )
            )
        )
        if sent:
            return
        if self._asks.resolve(pending.key) is None:
            return  # expired meanwhile: the asker was told
        if not isinstance(found, ErrorReply):
            found = ErrorReply(
                error=ErrorCode.ASK_UNAVAILABLE,
                message="the inference process is not running; try again later",
                id=request.id,
            )
        client = self._clients.get(number)
        if client is not None:
            self._on_error_reply()
            self._clients.send(client, found)

    # -- searches and histories ------------------------------------------------------------------
    def query(self, client: Client, request: StoreRequest) -> None:
        if not self.queries.start(client.number):
            raise MessageError(
                ErrorCode.TOO_MANY_QUERIES,
                f"{self.queries.per_client} of your searches are still running; wait for their results",
                request.id,
            )
        self._spawn(self._answer(client.number, request))

    async def _answer(self, number: int, request: StoreRequest) -> None:
        reply: Results | ErrorReply
        try:
            reply = await self._on_thread(self.reader.answer, request)
        except Exception:  # a bug, not a bad store (answer() replies to those): the asker still hears
            log.exception("unexpected error answering a %s request", type(request).__name__.lower())
            reply = ErrorReply(
                error=ErrorCode.STORE_UNAVAILABLE,
                message="the store could not be read (an error on the server; see its log)",
                id=request.id,
            )
        finally:
            self.queries.finish(number)
        client = self._clients.get(number)
        if client is not None:  # else the client left while its query ran
            if isinstance(reply, ErrorReply):
                self._on_error_reply()
            self._clients.send(client, reply)

    # -- the thread ------------------------------------------------------------------------------
    def _on_thread(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gateway-store")
        return asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
