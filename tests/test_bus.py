"""The zmq bus, over real ipc:// sockets: run paths, slow-joiner guard, fan-in, asks."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from stream.bus import (
    AskReceiver,
    AskSender,
    AsyncSubscriber,
    Publisher,
    RunPaths,
    Subscriber,
    decode,
    encode,
)
from stream.errors import ProtocolError


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


def test_encode_and_decode_round_trip_and_refuse_bad_messages() -> None:
    frames = encode({"type": "caption", "stream": "cam0", "text": "é"})
    assert frames[0] == b"caption"
    assert decode(frames) == {"type": "caption", "stream": "cam0", "text": "é"}
    with pytest.raises(ProtocolError, match="type"):
        encode({"stream": "cam0"})
    with pytest.raises(ProtocolError, match="JSON"):
        encode({"type": "status", "lag_s": math.nan})
    with pytest.raises(ProtocolError, match="frames"):
        decode([b"caption"])
    with pytest.raises(ProtocolError, match="not JSON"):
        decode([b"caption", b"{nope"])
    with pytest.raises(ProtocolError, match="not JSON"):
        decode([b"caption", b"\xff"])
    with pytest.raises(ProtocolError, match="object"):
        decode([b"caption", b"[1]"])


def test_nothing_is_lost_after_wait_for_subscriber(run: RunPaths) -> None:
    publisher = Publisher(run.publisher_endpoint("inference"))
    subscriber = Subscriber([publisher.endpoint])
    try:
        assert publisher.wait_for_subscriber(timeout=5.0)
        for seq in range(50):
            publisher.send({"type": "caption", "stream": "cam0", "seq": seq})
        got = [subscriber.recv(timeout=5.0) for _ in range(50)]
        assert [m["seq"] for m in got if m is not None] == list(range(50))
        assert subscriber.recv(timeout=0.05) is None
    finally:
        subscriber.close()
        publisher.close()


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
        a.send({"type": "capture_status", "stream": "a"})
        b.send({"type": "capture_status", "stream": "b"})
        got = {subscriber.recv(timeout=5.0)["stream"] for _ in range(2)}  # type: ignore[index]
        assert got == {"a", "b"}
        assert subscriber.endpoints == [a.endpoint, b.endpoint]
    finally:
        subscriber.close()
        a.close()
        b.close()


def test_async_subscriber_reaches_a_publisher_bound_later(run: RunPaths) -> None:
    endpoint = run.publisher_endpoint("inference")

    async def scenario() -> dict[str, object]:
        subscriber = AsyncSubscriber([])
        subscriber.connect(endpoint)  # nothing is bound there yet: zmq retries
        publisher = Publisher(endpoint)
        try:
            assert await asyncio.to_thread(publisher.wait_for_subscriber, 5.0)
            publisher.send({"type": "caption", "stream": "cam0", "seq": 0})
            return await asyncio.wait_for(subscriber.recv(), 5.0)
        finally:
            subscriber.close()
            publisher.close()

    assert asyncio.run(scenario()) == {"type": "caption", "stream": "cam0", "seq": 0}


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
            raw.send_multipart([b"caption", b"not json"])
            with pytest.raises(ProtocolError):
                await asyncio.wait_for(subscriber.recv(), 5.0)
        finally:
            subscriber.close()
            raw.close()

    asyncio.run(scenario())


def test_ask_sender_refuses_while_no_receiver_is_there(run: RunPaths) -> None:
    sender = AskSender(run.asks_endpoint)
    try:
        assert sender.send({"type": "ask", "id": "g-1", "stream": "cam0", "question": "q"}) is False
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
        while not sender.send({"type": "ask", "id": "g-1", "stream": "cam0", "question": "who?"}):
            deadline -= 1
            assert deadline > 0, "the sender never saw the receiver"
            receiver.poll(timeout=0.02)
        raw.send_multipart([b"ask", b"{broken"])
        asks = receiver.poll(timeout=2.0)
        while len(asks) < 1:
            asks += receiver.poll(timeout=2.0)
        assert asks[0] == {"type": "ask", "id": "g-1", "stream": "cam0", "question": "who?"}
        assert receiver.poll(timeout=0.2) == []  # the broken one was logged and dropped
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
