"""The gateway with real parts: websockets clients over loopback, zmq publishers on ipc:// sockets, raw
TCP sockets for clients that die mid-frame. The inference side of ``ask`` is simulated by a thread with
a real :class:`AskReceiver` and :class:`Publisher` (the real bus; only the model is absent)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import http.client
import json
import logging
import multiprocessing
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stream import messages
from stream.bus import AskReceiver, Publisher, RunPaths
from stream.gateway import Gateway, gateway_main
from stream.gateway_options import GatewayOptions
from stream.messages import CloseCode
from stream.process import ExitCode
from stream.routes import DEFAULT_WEB_DIR

Json = dict[str, Any]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def run() -> Iterator[RunPaths]:
    paths = RunPaths.create(run_id=f"test-{uuid.uuid4().hex[:10]}")
    yield paths
    paths.remove()


def caption(stream: str, seq: int, text: str | None = None) -> messages.Caption:
    return messages.Caption(
        stream=stream,
        seq=seq,
        t_start=4.0 * seq,
        t_end=4.0 * seq + 16.0,
        frame_times=[4.0 * seq + i for i in range(16)],
        wall_start=1000.0 + seq,
        wall_end=1016.0 + seq,
        text=text if text is not None else f"{stream} caption {seq}",
        model="tiny",
        latency_ms=5.0,
    )


def wire(message: messages.ServerMessage) -> Json:
    """What a client receives for ``message``."""
    return json.loads(message.to_json())


@contextlib.asynccontextmanager
async def gateway_on_bus(run: RunPaths, **options: Any) -> AsyncIterator[tuple[Gateway, Publisher]]:
    """A started in-process gateway reading a real publisher (slow-joiner guard passed)."""
    publisher = Publisher(run.publisher_endpoint("inference"))
    gateway = Gateway(
        [publisher.endpoint],
        options.pop("asks_endpoint", run.asks_endpoint),
        GatewayOptions(port=0, **options),
    )
    await gateway.start()
    try:
        assert await asyncio.to_thread(publisher.wait_for_subscriber, 5.0)
        yield gateway, publisher
    finally:
        await gateway.stop()
        publisher.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def recv(ws: ClientConnection, timeout: float = 5.0, skip: tuple[str, ...] = ("status",)) -> Json:
    """The next message whose type is not in ``skip`` (status arrives on its own schedule)."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            assert isinstance(message, dict) and isinstance(message.get("type"), str)
            if message["type"] not in skip:
                return message


async def subscribed_client(gateway: Gateway, **subscribe: Any) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{gateway.port}/ws")
    await ws.send(json.dumps({"type": "subscribe", **subscribe}))
    ack = await recv(ws)
    assert ack["type"] == "subscribed"
    return ws


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def raw_http(port: int, request: bytes) -> bytes:
    """Everything the server sends back for ``request`` until it closes (http.client would not read
    a body that a HEAD response must not have)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- captions, filters, replay, thumbnails ---------------------------------------------------------


def test_captions_reach_every_subscriber_by_stream_filter(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, publisher):
            everything = await subscribed_client(gateway, streams="*")
            cam0 = await subscribed_client(gateway, streams=["cam0"])
            cam1 = await subscribed_client(gateway, streams=["cam1", "cam9"])
            silent = await connect(f"ws://127.0.0.1:{gateway.port}/ws")  # never subscribes
            for seq in range(5):
                publisher.send(caption("cam0", seq))
                publisher.send(caption("cam1", seq))
                publisher.send(messages.Partial(stream="cam1", seq=seq + 1, text="so far"))
            publisher.send(
                messages.Event(
                    stream="cam0",
                    rule="fence",
                    event_id="fence-1",
                    state=messages.EventState.START,
                    t_start=0.0,
                    t_end=4.0,
                    wall_start=1000.0,
                    wall_end=1004.0,
                    score=0.75,
                    text="someone climbs",
                )
            )
            got_all = [await recv(everything) for _ in range(16)]
            got_cam0 = [await recv(cam0) for _ in range(6)]
            got_cam1 = [await recv(cam1) for _ in range(10)]
            assert [(m["type"], m["stream"]) for m in got_all].count(("caption", "cam0")) == 5
            assert got_cam0 == [wire(caption("cam0", s)) for s in range(5)] + [got_all[-1]]
            assert got_all[-1]["type"] == "event" and got_all[-1]["rule"] == "fence"
            assert [m["type"] for m in got_cam1] == ["caption", "partial"] * 5
            assert all(m["stream"] == "cam1" for m in got_cam1)
            # Nothing else was queued for the filtered clients or the one that never subscribed.
            for ws in (cam0, cam1, silent):
                await ws.send(json.dumps({"type": "ping", "id": "after"}))
                assert await recv(ws) == {
                    "type": "pong",
                    "id": "after",
                    "wall": pytest.approx(time.time(), abs=5),
                }
            for ws in (everything, cam0, cam1, silent):
                await ws.close()

    asyncio.run(scenario())


def test_subscribe_replays_the_last_captions_then_goes_live(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run, replay=3) as (gateway, publisher):
            for seq in range(5):
                publisher.send(caption("cam0", seq))
            publisher.send(caption("cam1", 0))
            await until(lambda: gateway.stats["bus_messages"] == 6, what="the bus messages")
            ws = await connect(f"ws://127.0.0.1:{gateway.port}/ws")
            await ws.send(json.dumps({"type": "subscribe", "streams": ["cam0"], "replay": 10}))
            ack = await recv(ws)
            assert ack == {
                "type": "subscribed",
                "streams": ["cam0"],
                "replay": 10,
                "replayed": 3,
                "thumbnails": False,
            }
            replayed = [await recv(ws) for _ in range(3)]
            assert [m["seq"] for m in replayed] == [2, 3, 4]
            assert all(m["replayed"] is True and m["stream"] == "cam0" for m in replayed)
            assert (await recv(ws, skip=()))["type"] == "status"  # right after the replay
            publisher.send(caption("cam0", 5))
            live = await recv(ws)
            assert live == wire(caption("cam0", 5)) and "replayed" not in live
            # Subscribing again replaces the filter; replay 0 sends none.
            await ws.send(json.dumps({"type": "subscribe", "streams": ["cam1"]}))
            assert (await recv(ws))["replayed"] == 0
            publisher.send(caption("cam0", 6))
            publisher.send(caption("cam1", 1))
            assert await recv(ws) == wire(caption("cam1", 1))
            await ws.close()

    asyncio.run(scenario())


def test_thumbnails_go_only_to_clients_that_asked_for_them(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, publisher):
            wants_cam0 = await subscribed_client(gateway, streams=["cam0"], thumbnails=True)
            no_thumbs = await subscribed_client(gateway, streams="*")
            wants_cam1 = await subscribed_client(gateway, streams=["cam1"], thumbnails=True)
            jpeg = base64.b64encode(b"\xff\xd8fake jpeg\xff\xd9").decode()
            publisher.send(messages.Thumbnail(stream="cam0", t=3.0, wall=1003.0, jpeg=jpeg))
            publisher.send(caption("cam0", 0))  # a sentinel: per-client order is kept
            publisher.send(caption("cam1", 0))
            assert (await recv(wants_cam0))["jpeg"] == jpeg
            assert (await recv(wants_cam0))["type"] == "caption"
            assert [(await recv(no_thumbs))["type"] for _ in range(2)] == ["caption", "caption"]
            assert (await recv(wants_cam1)) == wire(caption("cam1", 0))
            # A later subscriber that wants thumbnails gets the latest one at once.
            late = await connect(f"ws://127.0.0.1:{gateway.port}/ws")
            await late.send(json.dumps({"type": "subscribe", "thumbnails": True}))
            assert (await recv(late))["type"] == "subscribed"
            assert (await recv(late))["type"] == "thumbnail"
            for ws in (wants_cam0, no_thumbs, wants_cam1, late):
                await ws.close()

    asyncio.run(scenario())


def test_subscribe_types_event_receives_only_events(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, publisher):
            publisher.send(caption("cam0", 0))  # in the replay store: not replayed to events-only
            await until(lambda: gateway._replay.streams() == ["cam0"], what="the caption to be stored")
            events_only = await connect(f"ws://127.0.0.1:{gateway.port}/ws")
            await events_only.send(
                json.dumps({"type": "subscribe", "types": ["event"], "replay": 5, "thumbnails": True})
            )
            ack = await recv(events_only, skip=())
            assert (ack["type"], ack["types"], ack["replayed"]) == ("subscribed", ["event"], 0)
            everything = await subscribed_client(gateway, thumbnails=True)
            jpeg = base64.b64encode(b"\xff\xd8fake jpeg\xff\xd9").decode()
            event = messages.Event(
                stream="cam0", rule="person", event_id="r-cam0-person-1", state=messages.EventState.START,
                t_start=0.0, t_end=8.0, wall_start=1000.0, wall_end=1008.0, score=0.9, text="a person",
                thumbnail=jpeg,
            )  # fmt: skip
            publisher.send(caption("cam0", 1))
            publisher.send(messages.Partial(stream="cam0", seq=2, text="a pe"))
            publisher.send(messages.Thumbnail(stream="cam0", t=3.0, wall=1003.0, jpeg=jpeg))
            publisher.send(event)
            gateway._broadcast_status()
            publisher.send(caption("cam0", 2))
            publisher.send(dataclasses.replace(event, state=messages.EventState.END, thumbnail=None))
            kinds = [(await recv(everything, skip=("status",)))["type"] for _ in range(6)]
            assert kinds == ["caption", "partial", "thumbnail", "event", "caption", "event"]
            # the events-only client: the events and nothing else (no status, no caption between);
            # a last event after one more status and caption is the next thing it gets
            gateway._broadcast_status()
            publisher.send(caption("cam0", 3))
            sentinel = dataclasses.replace(event, event_id="r-cam0-person-2", thumbnail=None)
            publisher.send(sentinel)
            received = [await recv(events_only, skip=()) for _ in range(3)]
            assert received == [
                wire(event),
                wire(dataclasses.replace(event, state=messages.EventState.END, thumbnail=None)),
                wire(sentinel),
            ]
            for ws in (events_only, everything):
                await ws.close()

    asyncio.run(scenario())


# -- asks ----------------------------------------------------------------------------------------


class InferenceSide(threading.Thread):
    """The inference process's half of ``ask`` on the real bus: an AskReceiver and a Publisher.
    Only the model is missing; answers echo the question so the test can tell them apart."""

    def __init__(self, run: RunPaths, *, answer: bool = True) -> None:
        super().__init__(daemon=True)
        self.endpoint = run.publisher_endpoint("inference-side")
        self.asks_endpoint = run.asks_endpoint
        self.answer = answer
        self.received: list[messages.AskRequest] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        receiver = AskReceiver(self.asks_endpoint)
        publisher = Publisher(self.endpoint)
        try:
            self.ready.set()
            publisher.wait_for_subscriber(5.0)
            while not self.stop.is_set():
                for ask in receiver.poll(timeout=0.02):
                    self.received.append(ask)
                    if not self.answer:
                        continue
                    if ask.question == "fail":
                        publisher.send(
                            messages.Answer(
                                id=ask.id,
                                stream=ask.stream,
                                text="",
                                error=messages.ErrorCode.MODEL_ERROR,
                                message="the model ran out of memory",
                            )
                        )
                    else:
                        publisher.send(
                            messages.Answer(
                                id=ask.id, stream=ask.stream, text=f"{ask.stream}: {ask.question}"
                            )
                        )
        except BaseException as exc:  # surfaced by the test after join
            self.error = exc
        finally:
            receiver.close()
            publisher.close()


async def ask(ws: ClientConnection, request_id: Any, stream: str, question: str) -> Json:
    """Send an ask, retrying while the gateway's ask socket has not reached the receiver yet."""
    for _ in range(100):
        await ws.send(json.dumps({"type": "ask", "id": request_id, "stream": stream, "question": question}))
        reply = await recv(ws)
        if reply.get("error") != "ask_unavailable":
            return reply
        await asyncio.sleep(0.05)
    raise AssertionError("asks never reached the inference side")


def test_answers_reach_only_their_asker_even_with_the_same_id(run: RunPaths) -> None:
    side = InferenceSide(run)
    side.start()
    assert side.ready.wait(5.0)

    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, publisher):
            gateway.connect(side.endpoint)  # a publisher added at run time
            publisher.send(caption("cam0", 0))
            publisher.send(caption("cam1", 0))
            await until(lambda: gateway.stats["bus_messages"] == 2, what="the streams to be known")
            alice = await subscribed_client(gateway, streams="*")
            bob = await subscribed_client(gateway, streams="*")
            onlooker = await subscribed_client(gateway, streams="*")
            a = await ask(alice, 1, "cam0", "who is at the door?")
            b = await ask(bob, 1, "cam1", "what is on screen?")
            assert a == {"type": "answer", "id": 1, "stream": "cam0", "text": "cam0: who is at the door?"}
            assert b == {"type": "answer", "id": 1, "stream": "cam1", "text": "cam1: what is on screen?"}
            failed = await ask(alice, "x", "cam0", "fail")
            assert failed == {
                "type": "error",
                "error": "model_error",
                "message": "the model ran out of memory",
                "id": "x",
            }
            # Nobody else saw the answers.
            for ws in (alice, bob, onlooker):
                await ws.send(json.dumps({"type": "ping", "id": "end"}))
                assert (await recv(ws))["type"] == "pong"
            # The inference side saw the gateway's ids, not the clients'.
            assert len({m.id for m in side.received}) == len(side.received)
            assert all(m.id != "1" for m in side.received)
            unknown = await ask(alice, 2, "nowhere", "?")
            assert unknown["type"] == "error" and unknown["error"] == "unknown_stream" and unknown["id"] == 2
            for ws in (alice, bob, onlooker):
                await ws.close()

    try:
        asyncio.run(scenario())
    finally:
        side.stop.set()
        side.join(5.0)
    assert side.error is None


def test_ask_errors_when_the_inference_side_is_down_or_silent(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run, ask_timeout=0.3) as (gateway, _publisher):
            ws = await subscribed_client(gateway)
            await ws.send(json.dumps({"type": "ask", "id": "q1", "stream": "cam0", "question": "anyone?"}))
            down = await recv(ws)  # nobody bound the asks endpoint: immediate error
            assert down["type"] == "error" and down["error"] == "ask_unavailable" and down["id"] == "q1"
            side = InferenceSide(run, answer=False)  # bound, but never answers
            side.start()
            try:
                assert side.ready.wait(5.0)
                gateway.connect(side.endpoint)
                started = time.monotonic()
                reply = await ask(ws, "q2", "cam0", "anyone?")
                assert reply["type"] == "error" and reply["error"] == "ask_timeout" and reply["id"] == "q2"
                assert time.monotonic() - started >= 0.25
                assert side.received and side.received[-1].question == "anyone?"
            finally:
                side.stop.set()
                side.join(5.0)
            await ws.close()
        async with gateway_on_bus(run, asks_endpoint=None) as (gateway, _publisher):
            ws = await subscribed_client(gateway)
            await ws.send(json.dumps({"type": "ask", "id": 5, "stream": "cam0", "question": "q"}))
            off = await recv(ws)
            assert off["error"] == "ask_unavailable" and "not enabled" in off["message"]
            await ws.close()

    asyncio.run(scenario())


# -- ping, malformed input, limits -----------------------------------------------------------------


def test_ping_is_answered_with_pong_echoing_id_and_t(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, _publisher):
            async with connect(f"ws://127.0.0.1:{gateway.port}/ws") as ws:
                await ws.send(json.dumps({"type": "ping", "id": "hb-7", "t": 1234.5}))
                pong = await recv(ws)
                assert pong["type"] == "pong" and pong["id"] == "hb-7" and pong["t"] == 1234.5
                assert abs(pong["wall"] - time.time()) < 5
                await ws.send(json.dumps({"type": "ping"}))
                assert set(await recv(ws)) == {"type", "wall"}

    asyncio.run(scenario())


def test_malformed_unknown_and_oversized_messages_get_errors_and_others_are_served(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run, max_message_bytes=1024) as (gateway, publisher):
            bystander = await subscribed_client(gateway)
            async with connect(f"ws://127.0.0.1:{gateway.port}/ws", max_size=None) as ws:
                cases: list[tuple[str | bytes, str]] = [
                    ("{not json", "bad_json"),
                    (b"\xff\xfe\x00", "bad_json"),
                    ("[1,2,3]", "not_object"),
                    ('{"no": "type"}', "unknown_type"),
                    ('{"type": "launch", "id": "r1"}', "unknown_type"),
                    ('{"type": "ask", "id": 9, "stream": "cam0"}', "missing_field"),
                    ('{"type": "subscribe", "replay": "all"}', "bad_field"),
                    (json.dumps({"type": "ping", "pad": "x" * 2000}), "too_large"),
                ]
                for raw, code in cases:
                    await ws.send(raw)
                    reply = await recv(ws)
                    assert reply["type"] == "error" and reply["error"] == code, (raw, reply)
                    assert isinstance(reply["message"], str) and reply["message"]
                await ws.send('{"type": "launch", "id": "r1"}')
                assert (await recv(ws))["id"] == "r1"
                await ws.send(json.dumps({"type": "ping", "id": 1}))
                assert (await recv(ws))["type"] == "pong"  # still served
                # Past the hard limit (4 x max_message_bytes) websockets closes with 1009.
                await ws.send("x" * 5000)
                with pytest.raises(ConnectionClosed) as info:
                    await recv(ws)
                assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
            publisher.send(caption("cam0", 0))
            assert await recv(bystander) == wire(caption("cam0", 0))
            assert gateway.stats["error_replies"] == 9
            await bystander.close()

    asyncio.run(scenario())


def test_the_documented_size_line_with_default_options(run: RunPaths) -> None:
    # The README and docs/protocol.md: over 64 KiB up to 256 KiB gets too_large; a 2 MB message, 1009.
    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, _publisher):
            assert gateway.options.max_message_bytes == 64 * 1024
            async with connect(f"ws://127.0.0.1:{gateway.port}/ws", max_size=None) as ws:
                for size in (64 * 1024 + 1, 256 * 1024):
                    await ws.send(json.dumps({"type": "ping", "pad": "x" * (size - 28)}).ljust(size))
                    reply = await recv(ws)
                    assert reply["type"] == "error" and reply["error"] == "too_large", reply
                    assert f"is {size} bytes" in reply["message"]
                await ws.send("x" * 2_000_000)
                with pytest.raises(ConnectionClosed) as info:
                    await recv(ws)
                assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG

    asyncio.run(scenario())


def test_a_client_that_floods_errors_is_closed_with_policy_code(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run, max_errors=5) as (gateway, _publisher):
            async with connect(f"ws://127.0.0.1:{gateway.port}/ws") as ws:
                for _ in range(5):
                    await ws.send("garbage")
                with pytest.raises(ConnectionClosed) as info:
                    for _ in range(10):
                        assert (await recv(ws))["error"] == "bad_json"
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == CloseCode.POLICY_VIOLATION
                assert "too many invalid messages" in info.value.rcvd.reason

    asyncio.run(scenario())


# -- clients that die or stop reading ---------------------------------------------------------------


async def raw_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket client by hand, so it can be killed in the middle of a frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def reset(writer: asyncio.StreamWriter) -> None:
    """Kill the TCP connection with RST (no close frame, no FIN), as a crashed client does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_clients_killed_mid_frame_do_not_disturb_the_others(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, publisher):
            healthy = await subscribed_client(gateway)
            # 1. Killed halfway through a frame it was sending: the header promises 200 bytes.
            _, sender = await raw_ws(gateway.port)
            sender.write(bytes([0x81, 0x80 | 126]) + (200).to_bytes(2, "big") + os.urandom(4) + b"x" * 20)
            await sender.drain()
            await until(lambda: gateway.clients == 2, what="the half-frame sender to be accepted")
            reset(sender)
            await until(lambda: gateway.clients == 1, what="the half-frame sender to be dropped")
            # 2. Killed while the gateway is writing a burst of large messages to it.
            reader, receiver = await raw_ws(gateway.port)
            receiver.write(masked_text_frame(b'{"type":"subscribe"}'))
            await receiver.drain()
            await asyncio.wait_for(reader.readexactly(60), 5.0)  # part of the subscribed ack
            await until(lambda: gateway.clients == 2, what="two clients")
            for seq in range(200):
                publisher.send(caption("cam0", seq, text="y" * 8000))
            await asyncio.wait_for(reader.readexactly(20_000), 5.0)  # mid-message, surely
            reset(receiver)
            got = [await recv(healthy) for _ in range(200)]
            assert [m["seq"] for m in got] == list(range(200))
            await until(lambda: gateway.clients == 1, what="the dead clients to be dropped")
            publisher.send(caption("cam0", 200))
            assert (await recv(healthy))["seq"] == 200
            await healthy.close()

    asyncio.run(scenario())


class Collector:
    """Reads a client's messages as they come (a client that keeps up), into ``messages``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[Json] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.messages.append(json.loads(raw))

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages if m["type"] == "caption"]

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def non_reading_client(port: int) -> ClientConnection:
    """A websockets client that will stop reading, on a socket with a tiny receive buffer so that
    backpressure reaches the gateway after kilobytes, not megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws = await connect(f"ws://127.0.0.1:{port}/ws", sock=sock, max_queue=1)
    await ws.send(json.dumps({"type": "subscribe"}))
    assert (await recv(ws))["type"] == "subscribed"
    assert (await recv(ws, skip=()))["type"] == "status"
    return ws


def test_a_client_that_stops_reading_loses_oldest_messages_and_is_told(run: RunPaths) -> None:
    count = 300

    async def scenario() -> None:
        async with gateway_on_bus(run, client_queue=8, status_interval=3600) as (gateway, publisher):
            fast = [Collector(await subscribed_client(gateway)) for _ in range(2)]
            slow = await non_reading_client(gateway.port)
            started = time.monotonic()
            for seq in range(count):
                publisher.send(caption("cam0", seq, text="z" * 16_000))
                await asyncio.sleep(0.001)
            # The readers get every message, in order, while the slow one is stuck.
            await until(lambda: all(len(c.seqs()) == count for c in fast), timeout=10.0, what="the readers")
            assert time.monotonic() - started < 10.0
            for collector in fast:
                assert collector.seqs() == list(range(count))
                assert [m["type"] for m in collector.messages] == ["status"] + ["caption"] * count
            assert gateway.stats["dropped_messages"] > 0
            # When it reads again, it finds a gap notice and exact accounting: nothing silently lost.
            seqs: list[int] = []
            told = 0
            while len(seqs) + told < count:
                message = await recv(slow, skip=())
                if message["type"] == "dropped":
                    told += message["count"]
                    assert message["total"] == told
                else:
                    seqs.append(message["seq"])
            assert seqs == sorted(seqs) and seqs[-1] == count - 1
            assert told == gateway.stats["dropped_messages"] > 0
            await slow.close()
            for collector in fast:
                await collector.close()

    asyncio.run(scenario())


def test_a_client_that_stays_behind_is_closed_with_the_too_slow_code(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(
            run, client_queue=16, slow_client_timeout=0.3, close_timeout=5.0, status_interval=3600
        ) as (gateway, publisher):
            reader = Collector(await subscribed_client(gateway))
            slow = await non_reading_client(gateway.port)
            seq = 0
            while gateway.stats["slow_clients_closed"] == 0:
                publisher.send(caption("cam0", seq, text="w" * 16_000))
                seq += 1
                assert seq < 2000, "the slow client was never closed"
                await asyncio.sleep(0.001)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await recv(slow, skip=(), timeout=10.0)
            assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.TOO_SLOW
            assert "too slow" in info.value.rcvd.reason
            await until(lambda: len(reader.seqs()) == seq, what="the reader's messages")
            assert reader.seqs() == list(range(seq))  # the reader lost nothing meanwhile
            await until(lambda: gateway.clients == 1, what="the slow client to be gone")
            await reader.close()

    asyncio.run(scenario())


# -- HTTP: token, page, health ----------------------------------------------------------------------


def test_token_guards_websockets_and_page_but_not_health(
    run: RunPaths, caplog: pytest.LogCaptureFixture
) -> None:
    token = "s3cret-token-value"
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with gateway_on_bus(run, token=token) as (gateway, _publisher):
            base = f"ws://127.0.0.1:{gateway.port}/ws"
            for uri, headers in (
                (base, {}),
                (base + "?token=wrong", {}),
                (base, {"Authorization": "Bearer wrong"}),
            ):
                with pytest.raises(InvalidStatus) as info:
                    await connect(uri, additional_headers=headers)
                assert info.value.response.status_code == 401
            async with connect(base + f"?token={token}") as ws:
                await ws.send('{"type":"ping"}')
                assert (await recv(ws))["type"] == "pong"
            async with connect(base, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send('{"type":"ping"}')
                assert (await recv(ws))["type"] == "pong"
            async with connect(base + "?token=s3cre%74-token-value") as ws:  # percent-encoded: accepted
                await ws.send('{"type":"ping"}')
                assert (await recv(ws))["type"] == "pong"
            port = gateway.port
            assert (await asyncio.to_thread(http_get, port, "/"))[0] == 401
            assert (await asyncio.to_thread(http_get, port, "/?token=nope"))[0] == 401
            status, headers, body = await asyncio.to_thread(http_get, port, f"/?token={token}")
            assert status == 200 and headers["content-type"].startswith("text/html")
            cookie = headers["set-cookie"].split(";")[0]
            assert "HttpOnly" in headers["set-cookie"]
            # Named after the port: a browser sends every cookie of the host to every port, so another
            # run's cookie must neither replace this one nor be taken for it.
            assert cookie == f"vidnarrate_token_{port}={token}"
            # The page's own requests carry the cookie instead of the query.
            assert (await asyncio.to_thread(http_get, port, "/", {"Cookie": cookie}))[0] == 200
            both = f"vidnarrate_token_{port + 1}=another-runs-token; {cookie}"
            assert (await asyncio.to_thread(http_get, port, "/", {"Cookie": both}))[0] == 200
            other = f"vidnarrate_token_{port + 1}={token}"
            assert (await asyncio.to_thread(http_get, port, "/", {"Cookie": other}))[0] == 401
            assert (await asyncio.to_thread(http_get, port, "/", {"Authorization": f"Bearer {token}"}))[
                0
            ] == 200
            async with connect(base, additional_headers={"Cookie": cookie}) as ws:
                await ws.send('{"type":"ping"}')
                assert (await recv(ws))["type"] == "pong"
            assert (await asyncio.to_thread(http_get, port, "/healthz"))[0] == 200

    asyncio.run(scenario())
    server_lines = [r.getMessage() for r in caplog.records if r.name.startswith("stream.")]
    assert any("GET /ws" in line for line in server_lines)  # websockets' request lines were logged ...
    assert not any(token in line or "s3cre%74" in line for line in server_lines)  # ... token redacted


def test_page_static_files_and_health(run: RunPaths, tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>viewer</title>")
    (web / "app.js").write_text("console.log('hi');")
    (web / "style.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("do not serve")

    async def scenario() -> None:
        async with gateway_on_bus(run, web_dir=web) as (gateway, publisher):
            port = gateway.port
            status, headers, body = await asyncio.to_thread(http_get, port, "/")
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert body == b"<!doctype html><title>viewer</title>"
            assert int(headers["content-length"]) == len(body)
            status, headers, _ = await asyncio.to_thread(http_get, port, "/app.js")
            assert status == 200 and "javascript" in headers["content-type"]
            status, headers, _ = await asyncio.to_thread(http_get, port, "/style.css")
            assert status == 200 and headers["content-type"].startswith("text/css")
            for path in ("/missing.js", "/../secret.txt", "/%2e%2e/secret.txt", "/web/../../secret.txt"):
                assert (await asyncio.to_thread(http_get, port, path))[0] == 404, path
            # A plain GET on the websocket path is told to upgrade.
            assert (await asyncio.to_thread(http_get, port, "/ws"))[0] == 426
            # HEAD: GET's headers, no body; other methods: 405 naming the allowed ones.
            raw = await asyncio.to_thread(raw_http, port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, after = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"\r\nContent-Length: 36" in head
            assert after == b"", "a HEAD response has no body"
            for method in ("DELETE", "PUT", "OPTIONS"):
                status, headers, _ = await asyncio.to_thread(http_get, port, "/healthz", None, method)
                assert status == 405 and headers["allow"] == "GET, HEAD", method

            status, headers, body = await asyncio.to_thread(http_get, port, "/healthz")
            health = json.loads(body)
            assert status == 200 and headers["content-type"] == "application/json"
            assert health["ok"] is True and health["clients"] == 0 and health["uptime_s"] >= 0
            assert health["last_message_wall"] is None
            ws = await subscribed_client(gateway)
            publisher.send(caption("cam0", 0))
            await recv(ws)
            health = json.loads((await asyncio.to_thread(http_get, port, "/healthz"))[2])
            assert health["clients"] == 1 and abs(health["last_message_wall"] - time.time()) < 5
            assert health["bus_messages"] == 1
            await ws.close()

    asyncio.run(scenario())


def test_the_default_page_is_the_viewer(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, _publisher):
            status, headers, body = await asyncio.to_thread(http_get, gateway.port, "/")
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert body == (DEFAULT_WEB_DIR / "index.html").read_bytes()

    asyncio.run(scenario())


# -- status and the bus ---------------------------------------------------------------------------


def test_status_merges_reports_and_is_sent_on_change_and_periodically(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway_on_bus(run, status_interval=3600) as (gateway, publisher):
            ws = await subscribed_client(gateway)
            first = await recv(ws, skip=())
            assert first["type"] == "status" and first["streams"] == {}
            publisher.send(
                messages.CaptureStatus(
                    stream="cam0",
                    state=messages.StreamState.LIVE,
                    frames=250,
                    fps=25.0,
                    decode_errors=0,
                    reconnects=1,
                    drops=2,
                    width=1280,
                    height=720,
                    error=None,
                    wall=time.time(),
                )
            )
            publisher.send(
                messages.InferenceStatus(
                    streams={
                        "cam0": {
                            "lag_s": 0.8,
                            "skipped": 2,
                            "captions": 10,
                            "encodes_per_frame": 1.0,
                            "caption_latency_ms": 900.0,
                        }
                    },
                    model="tiny",
                    device="cpu",
                    state=messages.ModelState.READY,
                    wall=time.time(),
                )
            )
            publisher.send(
                messages.Processes(
                    processes={
                        "capture:cam0": {"pid": 101, "restarts": 0, "alive": True},
                        "inference": {"pid": 102, "restarts": 1, "alive": True},
                        "gateway": {"pid": os.getpid(), "restarts": 0, "alive": True},
                    },
                    wall=time.time(),
                )
            )
            # No periodic status (interval 1 h): these arrive because something changed.
            deadline = time.monotonic() + 5
            while True:
                status = await recv(ws, skip=())
                assert status["type"] == "status"
                if "gateway" in status["processes"] and status["model"] == "tiny":
                    break
                assert time.monotonic() < deadline
            cam0 = status["streams"]["cam0"]
            assert (cam0["state"], cam0["fps"], cam0["frames"], cam0["drops"], cam0["reconnects"]) == (
                "live",
                25.0,
                250,
                2,
                1,
            )
            assert cam0["lag_s"] == 0.8 and cam0["skipped"] == 2 and cam0["encodes_per_frame"] == 1.0
            assert status["processes"]["inference"] == {"pid": 102, "restarts": 1, "alive": True}
            assert status["clients"] == 1
            publisher.send(
                messages.Processes(
                    processes={"capture:cam0": {"pid": 101, "restarts": 0, "alive": False}}, wall=time.time()
                )
            )
            status = await recv(ws, skip=())
            assert status["streams"]["cam0"]["state"] == "lost"
            await ws.close()
        async with gateway_on_bus(run, status_interval=0.2) as (gateway, _publisher):
            ws = await subscribed_client(gateway)
            started = time.monotonic()
            for _ in range(3):
                assert (await recv(ws, skip=()))["type"] == "status"
            assert time.monotonic() - started < 2.0
            await ws.close()

    asyncio.run(scenario())


def test_bad_bus_messages_are_ignored_and_counted(run: RunPaths) -> None:
    endpoint = run.publisher_endpoint("broken")

    async def scenario() -> None:
        async with gateway_on_bus(run) as (gateway, _publisher):
            raw = zmq.Context.instance().socket(zmq.XPUB)
            raw.setsockopt(zmq.LINGER, 0)
            raw.bind(endpoint)
            try:
                gateway.connect(endpoint)
                assert await asyncio.to_thread(raw.poll, 5000)
                raw.recv()  # the gateway's subscription arrived
                ws = await subscribed_client(gateway)
                report = messages.CaptureStatus(
                    stream="cam0",
                    state=messages.StreamState.LIVE,
                    frames=1,
                    fps=1.0,
                    decode_errors=0,
                    reconnects=0,
                    drops=0,
                    width=None,
                    height=None,
                    error=None,
                    wall=1.0,
                ).to_dict()
                # Captions, partials, events and thumbnails are forwarded as their publisher encoded
                # them; what the gateway reads (routing frames, reports, answers) is checked.
                bad = [
                    [b"", b"", b'{"stream": "cam0", "text": "no type"}'],
                    [b"weird", b"", b'{"type": "weird"}'],
                    [b"caption", b"", b'{"type": "caption", "text": "no stream"}'],
                    [b"capture_status", b"cam0", b"not json"],
                    [b"capture_status", b"cam0", json.dumps({**report, "state": "dancing"}).encode()],
                    [b"processes", b"", b"[1, 2]"],
                    [b"answer", b"cam0", b'{"type": "answer", "id": "g-1"}'],
                    [b"caption", b"cam0"],
                    [b"one frame only"],
                ]
                for frames in bad:
                    raw.send_multipart(frames)
                raw.send_multipart([b"caption", b"cam0", caption("cam0", 0).to_json()])
                assert await recv(ws) == wire(caption("cam0", 0))
                assert gateway.stats["bad_bus_messages"] == len(bad)
                await ws.send('{"type":"ping"}')
                assert (await recv(ws))["type"] == "pong"
                await ws.close()
            finally:
                raw.close()

    asyncio.run(scenario())


# -- the process entry ----------------------------------------------------------------------------


def test_gateway_main_runs_as_a_spawned_process_and_stops_cleanly(run: RunPaths) -> None:
    context = multiprocessing.get_context("spawn")
    publisher = Publisher(run.publisher_endpoint("inference"))
    ready = run.run_dir / "gateway.json"
    stop = context.Event()
    process = context.Process(
        target=gateway_main,
        args=([publisher.endpoint], run.asks_endpoint),
        kwargs={"options": GatewayOptions(port=0), "ready_file": str(ready), "stop_event": stop},
        daemon=True,
    )
    process.start()
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.is_alive() and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == process.pid and info["port"] > 0

        async def client() -> Json:
            async with connect(f"ws://127.0.0.1:{info['port']}/ws") as ws:
                await ws.send('{"type":"subscribe"}')
                assert (await recv(ws))["type"] == "subscribed"
                assert await asyncio.to_thread(publisher.wait_for_subscriber, 5.0)
                publisher.send(caption("cam0", 0))
                return await recv(ws)

        assert asyncio.run(client()) == wire(caption("cam0", 0))
        stop.set()
        process.join(10)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
        publisher.close()


def test_gateway_main_says_when_it_cannot_listen(run: RunPaths) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert (
            gateway_main([], None, GatewayOptions(port=port), stop_event=threading.Event()) == ExitCode.USAGE
        )


def test_asks_go_to_the_inference_process_that_owns_their_stream(run: RunPaths) -> None:
    """[model] devices: one inference process per device, each with its own asks endpoint; the
    gateway sends each ask to its stream's owner (ask_routes), any other stream to asks_endpoint."""
    sides = {role: InferenceSide(run) for role in ("inference:0", "inference:1")}
    for role, side in sides.items():
        side.asks_endpoint = run.asks_endpoint_for(role)
        side.endpoint = run.publisher_endpoint(f"side-{role}")
        side.start()
        assert side.ready.wait(5.0)

    async def scenario() -> None:
        publisher = Publisher(run.publisher_endpoint("inference"))
        gateway = Gateway(
            [publisher.endpoint, *(side.endpoint for side in sides.values())],
            run.asks_endpoint_for("inference:0"),
            GatewayOptions(port=0),
            {"yard": run.asks_endpoint_for("inference:0"), "gate": run.asks_endpoint_for("inference:1")},
        )
        await gateway.start()
        try:
            assert await asyncio.to_thread(publisher.wait_for_subscriber, 5.0)
            for stream in ("yard", "gate", "door"):
                publisher.send(caption(stream, 0))
            await until(lambda: gateway.stats["bus_messages"] == 3, what="the streams to be known")
            client = await subscribed_client(gateway, streams="*")
            for stream in ("gate", "yard", "door"):
                reply = await ask(client, stream, stream, "who?")
                assert reply == {"type": "answer", "id": stream, "stream": stream, "text": f"{stream}: who?"}
            await client.close()
        finally:
            await gateway.stop()
            publisher.close()

    try:
        asyncio.run(scenario())
    finally:
        for side in sides.values():
            side.stop.set()
            side.join(5.0)
    assert all(side.error is None for side in sides.values())
    assert {a.stream for a in sides["inference:1"].received} == {"gate"}
    assert {a.stream for a in sides["inference:0"].received} == {"yard", "door"}  # door: the default
