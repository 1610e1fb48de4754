"""The gateway's websocket connections and the fan-out to them.

Fan-out never waits for a client. A message goes straight into a client's socket buffer while that
buffer is short (``write_buffer`` bytes, beyond a kernel send buffer fixed at ``send_buffer``) and
nothing is queued for it; otherwise into the client's :class:`~stream.fanout.ClientQueue`
(``client_queue`` messages), which a per-client writer task drains with backpressure. A full queue
drops its oldest message and the client is told how many it lost (a ``dropped`` message right before
the next one it gets); a client whose queue stays overflowing for ``slow_client_timeout`` seconds is
closed with code 4000 ("too slow"). So a slow or stuck client costs bounded memory and never delays
the bus reader or the other clients.

Permessage-deflate is off (the gateway serves with ``compression=None``): compressing every message
once per client costs more CPU than captions save in bandwidth. Without it, and since server frames
are not masked, a message's frame is the same bytes for every client: the direct path serializes it
once (with websockets' own ``Frame``) and writes those bytes to each client, the cost that dominates
a fan-out to a thousand clients. Queued messages go through ``connection.send()`` as usual.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .fanout import ClientQueue
from .gateway_options import GatewayOptions
from .messages import CloseCode, ServerMessage
from .requests import Subscribe

log = logging.getLogger(__name__)


class Client:
    """One websocket connection and its fan-out state."""

    def __init__(self, number: int, conn: ServerConnection, capacity: int, max_errors: int) -> None:
        self.number = number
        self.conn = conn
        self.queue = ClientQueue(capacity)
        self.subscription: Subscribe | None = None
        self.wakeup = asyncio.Event()
        self.sending = False
        self.closing = False
        self.errors: deque[float] = deque(maxlen=max_errors)  # when its last error replies went out


class Clients:
    """Every connected client of one gateway, and the delivery of messages to them."""

    def __init__(self, options: GatewayOptions) -> None:
        self._options = options
        self._clients: dict[int, Client] = {}
        self._numbers = itertools.count(1)
        self._closing: set[asyncio.Task[None]] = set()
        self.dropped_messages = 0  # dropped for slow clients, in all
        self.slow_clients_closed = 0

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._clients.values()))

    def get(self, number: int) -> Client | None:
        return self._clients.get(number)

    def queued(self) -> tuple[int, int]:
        """Clients with messages waiting in their queue (their socket buffer is full), and those messages."""
        behind = [len(c.queue) for c in self._clients.values() if c.queue]
        return len(behind), sum(len(c.queue) for c in self._clients.values())

    # -- a connection's life ---------------------------------------------------------------------
    async def serve(
        self,
        conn: ServerConnection,
        on_message: Callable[[Client, str | bytes], None],
        on_gone: Callable[[Client], None],
    ) -> None:
        """The websocket handler: register the client, hand each message it sends to ``on_message``
        until it goes, then ``on_gone``."""
        client = Client(next(self._numbers), conn, self._options.client_queue, self._options.max_errors)
        if self._options.send_buffer is not None:
            # A fixed kernel send buffer (no autotuning up to 4 MiB per socket) bounds what a stuck
            # client pins in the kernel, and lets its backpressure reach the queue policy sooner.
            sock = conn.transport.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._options.send_buffer)
            except OSError as exc:  # the peer is already gone: the receive loop below notices
                log.debug("client #%d: cannot set its send buffer: %s", client.number, exc)
        self._clients[client.number] = client
        writer = asyncio.get_running_loop().create_task(self._writer(client))
        log.debug("client #%d connected from %s", client.number, conn.remote_address)
        try:
            async for raw in conn:
                on_message(client, raw)
        except ConnectionClosed as exc:
            log.debug("client #%d went away: %s", client.number, exc)
        finally:
            self._clients.pop(client.number, None)
            on_gone(client)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            log.debug("client #%d closed (code %s)", client.number, conn.close_code)

    async def _writer(self, client: Client) -> None:
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

    # -- delivery --------------------------------------------------------------------------------
    def send(self, client: Client, message: ServerMessage) -> None:
        self.deliver(client, message.to_json())

    def deliver(self, client: Client, data: bytes) -> None:
        """Give one client ``data`` (a message's JSON), now or through its queue."""
        if client.closing:
            return
        if self._writable_now(client):
            client.conn.transport.write(_text_frame(data))
        else:
            self._enqueue(client, data, time.monotonic())

    def fanout(
        self, data: bytes, stream: str | None, *, thumbnail: bool = False, kind: str | None = None
    ) -> None:
        """Give ``data`` to every subscribed client that wants ``stream`` (None: all of them) and
        messages of type ``kind`` (None: every client)."""
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
            if kind is not None and not sub.wants_type(kind):
                continue
            if self._writable_now(client):
                if frame is None:
                    frame = _text_frame(data)
                client.conn.transport.write(frame)
            else:
                self._enqueue(client, data, now)

    def _writable_now(self, client: Client) -> bool:
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
            and conn.transport.get_write_buffer_size() <= self._options.write_buffer
        )

    def _enqueue(self, client: Client, data: bytes, now: float) -> None:
        if client.queue.push(data, now):
            self.dropped_messages += 1
            self._check_slow(client, now)
        client.wakeup.set()

    # -- policing --------------------------------------------------------------------------------
    def count_error(self, client: Client, now: float) -> None:
        """The client was sent an error reply; too many within ``error_window`` closes it (1008)."""
        client.errors.append(now)
        window = self._options.error_window
        if len(client.errors) == client.errors.maxlen and now - client.errors[0] < window:
            self.close_soon(
                client,
                CloseCode.POLICY_VIOLATION,
                f"too many invalid messages ({self._options.max_errors} in {window:g} s)",
            )

    def check_slow(self, now: float) -> None:
        """Close every client that has stayed behind too long (also when no new message comes)."""
        for client in list(self._clients.values()):
            self._check_slow(client, now)

    def _check_slow(self, client: Client, now: float) -> None:
        behind = client.queue.behind_for(now)
        if behind > self._options.slow_client_timeout and self.close_soon(
            client,
            CloseCode.TOO_SLOW,
            f"too slow: dropping messages for {behind:.0f} s ({client.queue.dropped_total} dropped)",
        ):
            self.slow_clients_closed += 1

    # -- closing ---------------------------------------------------------------------------------
    def close_soon(self, client: Client, code: int, reason: str) -> bool:
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

    async def close_all(self, code: int, reason: str) -> None:
        """Close every client and wait until each close has ended (within ``close_timeout``)."""
        for client in list(self._clients.values()):
            self.close_soon(client, code, reason)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _close(self, client: Client, code: int, reason: str) -> None:
        """Close with ``code``; a client that does not complete the handshake in time is aborted
        (``close()`` alone would wait forever for a client that stopped reading)."""
        try:
            async with asyncio.timeout(self._options.close_timeout):
                await client.conn.close(code, reason)
        except TimeoutError:
            client.conn.transport.abort()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _text_frame(data: bytes) -> bytes:
    """The wire bytes of a server text message (unmasked, no extensions: the same for every client)."""
    return Frame(Opcode.TEXT, data).serialize(mask=False)
