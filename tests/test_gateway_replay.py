"""The gateway's replay from the caption store and its stored thumbnails over HTTP: an in-process gateway
on a real zmq bus, a real SQLite store, real websocket and HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from stream import messages
from stream.bus import Publisher, RunPaths
from stream.gateway import Gateway
from stream.gateway_options import GatewayOptions
from stream.requests import Subscribe
from stream.store import Record, Store

Json = dict[str, Any]
RUN = "run-now"
TOKEN = "replay-test-token"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def run() -> Iterator[RunPaths]:
    paths = RunPaths.create(run_id=f"test-{uuid.uuid4().hex[:10]}")
    yield paths
    paths.remove()


def caption(stream: str, seq: int, wall: float, text: str | None = None) -> messages.Caption:
    return messages.Caption(
        stream=stream,
        seq=seq,
        t_start=float(seq),
        t_end=seq + 4.0,
        frame_times=[float(seq)],
        wall_start=wall - 4.0,
        wall_end=wall,
        text=text or f"{stream} caption {seq}",
        model="tiny",
        latency_ms=5.0,
    )


def record(message: messages.Caption, run_id: str, thumbnail: bytes | None = None) -> Record:
    return Record(run_id=run_id, message=message, body=message.to_json(), thumbnail=thumbnail)


@contextlib.asynccontextmanager
async def gateway_on_bus(
    run: RunPaths, store: Path, **options: Any
) -> AsyncIterator[tuple[Gateway, Publisher]]:
    publisher = Publisher(run.publisher_endpoint("inference"))
    gw = Gateway([publisher.endpoint], None, GatewayOptions(port=0, store=str(store), **options))
    await gw.start()
    try:
        assert await asyncio.to_thread(publisher.wait_for_subscriber, 5.0)
        yield gw, publisher
    finally:
        await gw.stop()
        publisher.close()


async def subscribe(gw: Gateway, replay: int, **headers: str) -> tuple[ClientConnection, list[Json]]:
    """Subscribe; returns the connection and the replayed captions (everything before the status)."""
    ws = await connect(f"ws://127.0.0.1:{gw.port}/ws", additional_headers=headers or None)
    await ws.send(json.dumps({"type": "subscribe", "streams": "*", "replay": replay}))
    got: list[Json] = []
    async with asyncio.timeout(10):
        while (message := json.loads(await ws.recv()))["type"] != "status":
            got.append(message)
    assert got[0]["type"] == "subscribed" and got[0]["replayed"] == len(got) - 1
    return ws, got[1:]


async def buffered(gw: Gateway, count: int) -> None:
    """Until the gateway has read ``count`` captions from the bus into its buffer."""
    async with asyncio.timeout(10):
        while len(gw._replay.recent(Subscribe(), 1000)) < count:
            await asyncio.sleep(0.01)


def http(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_replay_merges_earlier_runs_from_the_store_with_this_runs_buffer(
    run: RunPaths, tmp_path: Path
) -> None:
    store_path = tmp_path / "vidnarrate.db"
    with Store.open(store_path) as store:
        store.add([record(caption("door", seq, 100.0 + seq), "run-old") for seq in range(5)])
        store.add([record(caption("door", seq, 500.0 + seq), RUN) for seq in range(2)])

    async def scenario() -> None:
        async with gateway_on_bus(run, store_path, run_id=RUN, replay=4) as (gw, publisher):
            # This run: seq 1 (stored too) and 2 (not committed yet) reach the gateway's buffer.
            for seq in (1, 2):
                publisher.send(caption("door", seq, 500.0 + seq))
            await buffered(gw, 2)
            ws, replay = await subscribe(gw, 10)
            # Four per stream (the server's replay cap): the newest earlier-run one, then this run's.
            assert [(m["seq"], m.get("earlier_run", False)) for m in replay] == [
                (4, True),
                (0, False),
                (1, False),
                (2, False),
            ]
            assert all(m["replayed"] is True for m in replay)
            # Then live, unmarked.
            publisher.send(caption("door", 3, 503.0))
            async with asyncio.timeout(10):
                while (live := json.loads(await ws.recv()))["type"] != "caption":
                    pass
            assert live["seq"] == 3 and "replayed" not in live
            await ws.close()

    asyncio.run(scenario())


def test_without_a_run_id_or_store_file_replay_is_the_buffer_alone(run: RunPaths, tmp_path: Path) -> None:
    store_path = tmp_path / "vidnarrate.db"
    with Store.open(store_path) as store:
        store.add([record(caption("door", seq, 100.0 + seq), "run-old") for seq in range(3)])

    async def scenario() -> None:
        async with gateway_on_bus(run, store_path) as (gw, publisher):  # no run_id
            publisher.send(caption("door", 0, 500.0))
            await buffered(gw, 1)
            _, replay = await subscribe(gw, 10)
            assert [(m["seq"], m.get("earlier_run")) for m in replay] == [(0, None)]
        missing = tmp_path / "not-yet.db"
        async with gateway_on_bus(run, missing, run_id=RUN) as (gw, publisher):  # not recorded yet
            publisher.send(caption("door", 0, 500.0))
            await buffered(gw, 1)
            _, replay = await subscribe(gw, 10)
            assert [(m["seq"], m.get("earlier_run")) for m in replay] == [(0, None)]

    asyncio.run(scenario())


def test_stored_thumbnails_are_served_by_store_id_behind_the_token(run: RunPaths, tmp_path: Path) -> None:
    store_path = tmp_path / "vidnarrate.db"
    jpeg = b"\xff\xd8\xff\xe0 a small jpeg \xff\xd9"
    with Store.open(store_path) as store:
        store.add([record(caption("door", 0, 100.0, "a red van at the door"), "run-old", thumbnail=jpeg)])
        store.add([record(caption("door", 1, 101.0, "an empty porch by the door"), "run-old")])

    async def scenario() -> None:
        async with gateway_on_bus(run, store_path, run_id=RUN, token=TOKEN) as (gw, _):
            auth = {"Authorization": f"Bearer {TOKEN}"}
            ws, _ = await subscribe(gw, 0, **auth)
            await ws.send(json.dumps({"type": "search", "id": "s", "query": "door"}))
            async with asyncio.timeout(10):
                while (reply := json.loads(await ws.recv()))["type"] != "results":
                    pass
            ids = {item["text"]: item["store_id"] for item in reply["items"]}
            assert all(item["earlier_run"] is True for item in reply["items"])  # stored by run-old
            base = f"http://127.0.0.1:{gw.port}/thumbnail/"
            found = str(ids["a red van at the door"])
            status, headers, content = await asyncio.to_thread(http, "GET", base + found, auth)
            assert status == 200 and content == jpeg and headers["Content-Type"] == "image/jpeg"
            status, headers, content = await asyncio.to_thread(http, "HEAD", base + found, auth)
            assert status == 200 and content == b"" and headers["Content-Length"] == str(len(jpeg))
            for name in (str(ids["an empty porch by the door"]), "999999", "-1", "x", "1" * 40):
                assert (await asyncio.to_thread(http, "GET", base + name, auth))[0] == 404, name
            assert (await asyncio.to_thread(http, "GET", base + found, {}))[0] == 401
            await ws.close()

    asyncio.run(scenario())


def test_a_store_that_hangs_delays_no_subscription_past_the_replay_timeout(
    run: RunPaths, tmp_path: Path
) -> None:
    store_path = tmp_path / "vidnarrate.db"
    with Store.open(store_path) as store:
        store.add([record(caption("door", seq, 100.0 + seq), "run-old") for seq in range(3)])
    release = threading.Event()

    async def scenario() -> None:
        async with gateway_on_bus(run, store_path, run_id=RUN, replay_timeout=0.5) as (gw, publisher):
            assert gw._store is not None
            reader_recent = gw._store.reader.recent

            def hung(*args: Any) -> Any:  # a disk that does not answer until released
                release.wait(20)
                return reader_recent(*args)

            gw._store.reader.recent = hung  # type: ignore[method-assign]
            publisher.send(caption("door", 0, 500.0))
            await buffered(gw, 1)
            started = time.monotonic()
            ws, replay = await subscribe(gw, 10)
            assert time.monotonic() - started < 5.0
            assert [(m["seq"], m.get("earlier_run")) for m in replay] == [(0, None)]  # the buffer alone
            publisher.send(caption("door", 1, 501.0))
            async with asyncio.timeout(10):
                while (live := json.loads(await ws.recv()))["type"] != "caption":
                    pass
            assert live["seq"] == 1 and "replayed" not in live
            # The hung read still counts against the client until the thread is done with it.
            assert gw.health()["queries_in_flight"] == 1
            release.set()
            async with asyncio.timeout(10):
                while gw.health()["queries_in_flight"]:
                    await asyncio.sleep(0.01)
            await ws.close()

    try:
        asyncio.run(scenario())
    finally:
        release.set()


def test_a_replay_of_every_stream_covers_the_runs_sources_not_every_stream_ever_stored(
    run: RunPaths, tmp_path: Path
) -> None:
    store_path = tmp_path / "vidnarrate.db"
    with Store.open(store_path) as store:
        store.add(
            [record(caption("door", 0, 100.0), "run-old"), record(caption("attic", 0, 101.0), "run-old")]
        )

    async def scenario() -> None:
        async with gateway_on_bus(run, store_path, run_id=RUN, streams=("door", "yard")) as (gw, _):
            _, replay = await subscribe(gw, 10)
            assert [(m["stream"], m["earlier_run"]) for m in replay] == [("door", True)]
            # A client that names a stream gets it, source of this run or not.
            ws = await connect(f"ws://127.0.0.1:{gw.port}/ws")
            await ws.send(json.dumps({"type": "subscribe", "streams": ["attic"], "replay": 10}))
            async with asyncio.timeout(10):
                while (message := json.loads(await ws.recv()))["type"] != "caption":
                    pass
            assert message["stream"] == "attic" and message["earlier_run"] is True
            await ws.close()

    asyncio.run(scenario())
