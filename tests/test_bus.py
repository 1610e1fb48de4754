"""The zmq bus, over real ipc:// sockets: run paths, slow-joiner guard, fan-in, asks."""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from stream.bus import (
    AskReceiver,
    AskSender,
    AsyncSubscriber,
    Envelope,
    LockedPublisher,
    Publisher,
    RunPaths,
    Subscriber,
    encode,
    unpack,
)
from stream.errors import ProtocolError
from stream.messages import AskRequest, CaptureStatus, Partial, Processes, StreamState


@pytest.fixture
def run() -> Iterator[RunPaths]:
    paths = RunPaths.create(run_id=f"test-{uuid.uuid4().hex[:10]}")
    yield paths
    paths.remove()


def test_run_paths_hold_the_run_id_and_are_removed(run: RunPaths) -> None:
    assert run.run_dir.is_dir() and run.run_id in str(run.run_dir)
    endpoint = run.publisher_endpoint("capture:cam 0")
    assert endpoint.startswith("ipc://") and run.run_id in endpoint and "capture-cam-0" in endpoint
    assert run.asks_endpoint.startswith("ipc://") and run.run_id in run.asks_endpoint
    other = RunPaths.create(run_id=f"test-{uuid.uuid4().hex[:10]}", root=run.run_dir.parent)
    assert other.publisher_endpoint("inference") != run.publisher_endpoint("inference")
    other.remove()
    assert not other.run_dir.exists()


def _partial(seq: int, stream: str = "cam0") -> Partial:
    return Partial(stream=stream, seq=seq, text=f"so far {seq}")


def _report(stream: str) -> CaptureStatus:
    return CaptureStatus(
        stream=stream,
        state=StreamState.LIVE,
        frames=1,
        fps=25.0,
        decode_errors=0,
        reconnects=0,
        drops=0,
        width=640,
        height=360,
        error=None,
        wall=1.0,
    )


def test_a_message_travels_as_type_stream_and_its_json_once_encoded() -> None:
    message = Partial(stream="cam0", seq=1, text="é")
    frames = encode(message)
    assert frames == [b"partial", b"cam0", message.to_json()]
    envelope = unpack(frames)
    assert envelope == Envelope("partial", "cam0", message.to_json())
    assert envelope.decode() == message
    assert encode(Processes(processes={}, wall=1.0))[1] == b""  # a message of no stream
    assert unpack(encode(Processes(processes={}, wall=1.0))).stream is None
    with pytest.raises(ProtocolError, match="JSON"):
        encode(Partial(stream="cam0", seq=1, text=math.nan))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="frames"):
        unpack([b"caption", b"{}"])
    with pytest.raises(ProtocolError, match="UTF-8"):
        unpack([b"\xff", b"", b"{}"])
    with pytest.raises(ProtocolError, match="not JSON"):
        unpack([b"caption", b"cam0", b"{nope"]).decode()
    with pytest.raises(ProtocolError, match="not JSON"):
        unpack([b"caption", b"cam0", b"\xff"]).decode()
    with pytest.raises(ProtocolError, match="object"):
        unpack([b"caption", b"cam0", b"[1]"]).decode()


def test_nothing_is_lost_after_wait_for_subscriber(run: RunPaths) -> None:
    publisher = Publisher(run.publisher_endpoint("inference"))
    subscriber = Subscriber([publisher.endpoint])
    try:
        assert publisher.wait_for_subscriber(timeout=5.0)
        for seq in range(50):
            publisher.send(_partial(seq))
        got = [subscriber.recv(timeout=5.0) for _ in range(50)]
        assert got == [_partial(seq) for seq in range(50)]
        assert subscriber.recv(timeout=0.05) is None
    finally:
        subscriber.close()
        publisher.close()


def test_locked_publisher_is_shared_by_threads(run: RunPaths) -> None:
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    subscriber = Subscriber([publisher.endpoint])
    shared = LockedPublisher(publisher)
    try:
        assert publisher.wait_for_subscriber(timeout=5.0)

        def send(stream: str) -> None:
            for seq in range(200):
                shared.send(_partial(seq, stream))

        threads = [threading.Thread(target=send, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        got = [subscriber.recv(timeout=5.0) for _ in range(400)]
        for name in ("a", "b"):  # every message whole, each thread's in its order
            assert [m.seq for m in got if isinstance(m, Partial) and m.stream == name] == list(range(200))
    finally:
        shared.close()
        subscriber.close()


def test_wait_for_subscriber_times_out_without_one(run: RunPaths) -> None:
    publisher = Publisher(run.publisher_endpoint("lonely"))
    try:
        assert publisher.wait_for_subscriber(timeout=0.1) is False
    finally:
        publisher.close()


def test_subscriber_fans_in_from_several_publishers(run: RunPaths) -> None:
    a = Publisher(run.publisher_endpoint("capture:a"))
    b = Publisher(run.publisher_endpoint("capture:b"))
    subscriber = Subscriber([a.endpoint, b.endpoint])
    subscriber.connect(a.endpoint)  # connecting twice is harmless
    try:
        assert a.wait_for_subscriber(5.0) and b.wait_for_subscriber(5.0)
        a.send(_report("a"))
        b.send(_report("b"))
        got = {subscriber.recv(timeout=5.0) for _ in range(2)}
        assert got == {_report("a"), _report("b")}
        assert subscriber.endpoints == [a.endpoint, b.endpoint]
    finally:
        subscriber.close()
        a.close()
        b.close()


def test_async_subscriber_reaches_a_publisher_bound_later(run: RunPaths) -> None:
    endpoint = run.publisher_endpoint("inference")

    async def scenario() -> Envelope:
        subscriber = AsyncSubscriber([])
        subscriber.connect(endpoint)  # nothing is bound there yet: zmq retries
        publisher = Publisher(endpoint)
        try:
            assert await asyncio.to_thread(publisher.wait_for_subscriber, 5.0)
            publisher.send(_partial(0))
            return await asyncio.wait_for(subscriber.recv(), 5.0)
        finally:
            subscriber.close()
            publisher.close()

    assert asyncio.run(scenario()) == Envelope("partial", "cam0", _partial(0).to_json())


def test_async_subscriber_raises_protocol_error_for_a_bad_message(run: RunPaths) -> None:
    endpoint = run.publisher_endpoint("bad")

    async def scenario() -> None:
        raw = zmq.Context.instance().socket(zmq.XPUB)
        raw.setsockopt(zmq.LINGER, 0)
        raw.bind(endpoint)
        subscriber = AsyncSubscriber([endpoint])
        try:
            assert await asyncio.to_thread(raw.poll, 5000)
            raw.recv()  # the subscription
            raw.send_multipart([b"caption", b"not three frames"])
            with pytest.raises(ProtocolError):
                await asyncio.wait_for(subscriber.recv(), 5.0)
        finally:
            subscriber.close()
            raw.close()

    asyncio.run(scenario())


def test_ask_sender_refuses_while_no_receiver_is_there(run: RunPaths) -> None:
    sender = AskSender(run.asks_endpoint)
    try:
        assert sender.send(AskRequest(id="g-1", stream="cam0", question="q", wall=1.0)) is False
    finally:
        sender.close()


def test_asks_travel_and_malformed_ones_are_dropped(run: RunPaths) -> None:
    receiver = AskReceiver(run.asks_endpoint)
    sender = AskSender(run.asks_endpoint)
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(run.asks_endpoint)
    try:
        deadline = 50
        ask = AskRequest(id="g-1", stream="cam0", question="who?", wall=1.0, client=7)
        while not sender.send(ask):
            deadline -= 1
            assert deadline > 0, "the sender never saw the receiver"
            receiver.poll(timeout=0.02)
        raw.send_multipart([b"ask", b"cam0", b"{broken"])
        raw.send_multipart(encode(_partial(0)))  # not an ask
        asks = receiver.poll(timeout=2.0)
        while len(asks) < 1:
            asks += receiver.poll(timeout=2.0)
        assert asks[0] == ask
        assert receiver.poll(timeout=0.2) == []  # the broken ones were logged and dropped
    finally:
        raw.close()
        sender.close()
        receiver.close()


def test_stale_run_directories_of_dead_runs_are_removed(tmp_path) -> None:
    import multiprocessing
    import os

    from stream.bus import remove_stale_runs

    def make_dead_run() -> Path:
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:  # a process that creates a run directory, then is gone
            return Path(pool.apply(_create_run, (str(tmp_path),)))

    dead = make_dead_run()
    live = RunPaths.create(root=tmp_path).run_dir
    foreign = tmp_path / "not-a-run"
    foreign.mkdir()
    assert (dead / "owner").read_text().split()[0] != str(os.getpid())
    assert remove_stale_runs(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and foreign.exists()


def _create_run(root: str) -> str:
    return str(RunPaths.create(root=Path(root)).run_dir)
