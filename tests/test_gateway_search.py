"""Websocket ``search`` and ``history`` with real parts: an in-process gateway over a real SQLite store
file (filled with :meth:`Store.add`, as the recorder fills it), real websocket clients over loopback; and
one real ``vidnarrate run --model tiny`` recording into a store of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from liverun import LiveRun, collect, of_type, short_run_root
from realparts import make_clip
from websockets.asyncio.client import ClientConnection, connect

from stream import messages
from stream.gateway import Gateway
from stream.gateway_options import GatewayOptions
from stream.store import Record, Store, StoredMessage

Json = dict[str, Any]

pytestmark = pytest.mark.timeout(60)

BASE = 1_800_000_000.0  # wall clock of the stored captions


def caption(stream: str, seq: int, text: str, *, run_id: str = "run-a") -> Record:
    message = messages.Caption(
        stream=stream,
        seq=seq,
        t_start=4.0 * seq,
        t_end=4.0 * seq + 8.0,
        frame_times=[4.0 * seq + i for i in range(8)],
        wall_start=BASE + 10.0 * seq,
        wall_end=BASE + 10.0 * seq + 8.0,
        text=text,
        model="tiny",
        latency_ms=5.0,
    )
    return Record(run_id=run_id, message=message, body=message.to_json())


TEXTS = {
    "door": [
        "a man in a red coat opens the front door",
        "the porch is empty",
        "a delivery van stops by the door",
        "a cat walks past the red car",
    ],
    "yard": [
        "a red car is parked in the yard",
        "the yard is empty at night",
        "a man waters the plants near the door",
    ],
}


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    path = tmp_path / "store" / "vidnarrate.db"
    with Store.open(path) as store:
        store.add(
            [caption(stream, seq, text) for stream, texts in TEXTS.items() for seq, text in enumerate(texts)]
        )
    return path


@contextlib.asynccontextmanager
async def gateway(store: Path | None, **options: Any) -> AsyncIterator[Gateway]:
    """A started in-process gateway (no bus publishers: only store requests are exercised)."""
    gw = Gateway([], None, GatewayOptions(port=0, store=None if store is None else str(store), **options))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def recv(ws: ClientConnection, timeout: float = 10.0) -> Json:
    """The next message that is not a status (those arrive on their own schedule)."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] != "status":
                return dict(message)


async def request(ws: ClientConnection, **fields: Any) -> Json:
    await ws.send(json.dumps(fields))
    return await recv(ws)


def texts(reply: Json) -> list[str]:
    assert reply["type"] == "results", reply
    return [item["text"] for item in reply["items"]]


def test_search_finds_words_and_phrases_filtered_by_stream_and_time(store_file: Path) -> None:
    async def scenario() -> None:
        async with gateway(store_file) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            words = await request(ws, type="search", id="s1", query="red door")
            assert words["id"] == "s1"
            assert sorted(texts(words)) == ["a man in a red coat opens the front door"]
            item = words["items"][0]
            assert item["type"] == "caption" and item["stream"] == "door" and item["seq"] == 0
            assert isinstance(item["score"], float) and item["wall_end"] == BASE + 8.0

            red = texts(await request(ws, type="search", id=2, query="red"))
            assert sorted(red) == sorted(
                [
                    "a man in a red coat opens the front door",
                    "a cat walks past the red car",
                    "a red car is parked in the yard",
                ]
            )
            phrase = texts(await request(ws, type="search", id="p", query='"red car"'))
            assert sorted(phrase) == ["a cat walks past the red car", "a red car is parked in the yard"]

            only_yard = await request(ws, type="search", id="y", query="red", streams=["yard"])
            assert texts(only_yard) == ["a red car is parked in the yard"]

            # door seq 3 ends at BASE + 38: a span from BASE + 30 keeps only it
            late = await request(
                ws, type="search", id="t", query="red", **{"from": BASE + 30, "to": BASE + 100}
            )
            assert texts(late) == ["a cat walks past the red car"]
            nothing = await request(ws, type="search", id="n", query="submarine")
            assert nothing == {"type": "results", "id": "n", "items": []}
            limited = await request(ws, type="search", id="l", query="red", limit=2)
            assert len(limited["items"]) == 2

    asyncio.run(scenario())


def test_history_returns_a_streams_captions_of_a_span_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "vidnarrate.db"
    with Store.open(path) as store:  # stored out of order: history sorts by wall time
        store.add([caption("door", seq, f"moment {seq}") for seq in (5, 1, 3, 0, 4, 2)])
        store.add([caption("yard", 0, "moment in the yard")])

    async def scenario() -> None:
        async with gateway(path) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            every = await request(ws, type="history", id="h", stream="door")
            assert every["id"] == "h" and texts(every) == [f"moment {seq}" for seq in range(6)]
            assert all("score" not in item for item in every["items"])
            span = await request(
                ws, type="history", id="h2", stream="door", **{"from": BASE + 15, "to": BASE + 40}
            )
            assert texts(span) == ["moment 1", "moment 2", "moment 3"]  # wall_end BASE + 18, 28, 38
            first = await request(ws, type="history", id="h3", stream="door", limit=2)
            assert texts(first) == ["moment 0", "moment 1"]
            assert texts(await request(ws, type="history", id="h4", stream="garage")) == []

    asyncio.run(scenario())


BAD_REQUESTS: list[tuple[Json, str, str]] = [
    ({"type": "search", "query": "door"}, "missing_field", "'id'"),
    ({"type": "search", "id": "x"}, "missing_field", "'query'"),
    ({"type": "search", "id": "x", "query": "  "}, "bad_field", "'query'"),
    ({"type": "search", "id": "x", "query": 5}, "bad_field", "'query'"),
    ({"type": "search", "id": "x", "query": "door " * 300}, "too_large", "'query'"),
    ({"type": "search", "id": "x", "query": '"open quote'}, "bad_query", "quote"),
    ({"type": "search", "id": "x", "query": "!!! ..."}, "bad_query", "no words"),
    ({"type": "search", "id": "x", "query": "door", "streams": "door"}, "bad_field", "'streams'"),
    ({"type": "search", "id": "x", "query": "door", "streams": []}, "bad_field", "'streams'"),
    ({"type": "search", "id": "x", "query": "door", "streams": [""]}, "bad_field", "'streams'"),
    ({"type": "search", "id": "x", "query": "door", "from": 10, "to": 5}, "bad_field", "'from'"),
    ({"type": "search", "id": "x", "query": "door", "from": "yesterday"}, "bad_field", "'from'"),
    ({"type": "search", "id": "x", "query": "door", "to": True}, "bad_field", "'to'"),
    ({"type": "search", "id": "x", "query": "door", "limit": 0}, "bad_field", "'limit'"),
    ({"type": "search", "id": "x", "query": "door", "limit": 501}, "bad_field", "'limit'"),
    ({"type": "history", "id": "x"}, "missing_field", "'stream'"),
    ({"type": "history", "id": "x", "stream": 3}, "bad_field", "'stream'"),
    ({"type": "history", "id": "x", "stream": "door", "from": 2, "to": 1}, "bad_field", "'from'"),
    ({"type": "history", "id": "x", "stream": "door", "limit": 1.5}, "bad_field", "'limit'"),
]


def test_bad_requests_get_error_replies_naming_the_field(store_file: Path) -> None:
    async def scenario() -> None:
        async with gateway(store_file, max_errors=100) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            for bad, code, named in BAD_REQUESTS:
                reply = await request(ws, **bad)
                assert reply["type"] == "error" and reply["error"] == code, (bad, reply)
                assert named in reply["message"], (bad, reply)
                assert reply.get("id") == bad.get("id"), (bad, reply)
            # the connection still serves good requests after all that
            assert texts(await request(ws, type="search", id="ok", query="porch")) == ["the porch is empty"]

    asyncio.run(scenario())


def test_without_a_store_search_and_history_are_store_unavailable() -> None:
    async def scenario() -> None:
        async with gateway(None) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            for req in (
                {"type": "search", "id": 1, "query": "door"},
                {"type": "history", "id": 2, "stream": "door"},
            ):
                reply = await request(ws, **req)
                assert reply["type"] == "error" and reply["error"] == "store_unavailable", reply
                assert reply["id"] == req["id"] and "--no-store" in reply["message"]

    asyncio.run(scenario())


def test_a_store_the_recorder_has_not_made_yet_is_opened_once_it_exists(tmp_path: Path) -> None:
    path = tmp_path / "later" / "vidnarrate.db"

    async def scenario() -> None:
        async with gateway(path) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            before = await request(ws, type="search", id="b", query="door")
            assert before["error"] == "store_unavailable" and str(path) in before["message"], before
            with Store.open(path) as store:
                store.add([caption("door", 0, "someone at the door")])
            after = await request(ws, type="search", id="a", query="door")
            assert texts(after) == ["someone at the door"]

    asyncio.run(scenario())


def test_a_slow_query_blocks_neither_the_event_loop_nor_other_clients(
    store_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slowness is injected at the thread boundary: Store.search (which the gateway runs on its
    # store thread) blocks until the test releases it, while another client pings the gateway.
    entered = threading.Event()
    release = threading.Event()
    real_search: Callable[..., list[StoredMessage]] = Store.search

    def slow_search(self: Store, *args: Any, **kwargs: Any) -> list[StoredMessage]:
        entered.set()
        assert release.wait(30), "the test never released the slow search"
        return real_search(self, *args, **kwargs)

    monkeypatch.setattr(Store, "search", slow_search)

    async def scenario() -> None:
        async with (
            gateway(store_file, queries_per_client=2) as gw,
            connect(f"ws://127.0.0.1:{gw.port}/ws") as searcher,
            connect(f"ws://127.0.0.1:{gw.port}/ws") as other,
        ):
            try:
                await searcher.send(json.dumps({"type": "search", "id": "slow", "query": "porch"}))
                assert await asyncio.to_thread(entered.wait, 10), "the search never reached the store"
                pong = await request(other, type="ping", id="p1")
                assert pong["type"] == "pong" and pong["id"] == "p1"
                # the same client: a second query waits its turn, a third is over the limit
                await searcher.send(json.dumps({"type": "search", "id": "second", "query": "yard"}))
                over = await request(searcher, type="search", id="third", query="red")
                assert (
                    over["type"] == "error" and over["error"] == "too_many_queries" and over["id"] == "third"
                )
                assert gw.health()["queries_in_flight"] == 2
            finally:
                release.set()
            replies = {reply["id"]: reply for reply in [await recv(searcher), await recv(searcher)]}
            assert texts(replies["slow"]) == ["the porch is empty"]
            assert sorted(texts(replies["second"])) == [
                "a red car is parked in the yard",
                "the yard is empty at night",
            ]
            assert gw.health()["queries_in_flight"] == 0

    asyncio.run(scenario())


def test_results_are_bounded_in_size(tmp_path: Path) -> None:
    path = tmp_path / "vidnarrate.db"
    with Store.open(path) as store:
        store.add([caption("door", seq, f"door {seq} " + "x" * 3000) for seq in range(500)])

    async def scenario() -> None:
        async with gateway(path) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws", max_size=None) as ws:
            reply = await request(ws, type="history", id="big", stream="door", limit=500)
            assert reply["truncated"] is True
            assert 0 < len(reply["items"]) < 500
            # Measured as the server does: each item compact (the list's brackets and commas aside).
            size = sum(
                len(json.dumps(i, separators=(",", ":"), ensure_ascii=False).encode()) for i in reply["items"]
            )
            assert size <= 1024 * 1024
            assert [item["seq"] for item in reply["items"]] == list(range(len(reply["items"])))
            small = await request(ws, type="history", id="small", stream="door", limit=3)
            assert "truncated" not in small and len(small["items"]) == 3

    asyncio.run(scenario())


# -- through a real run ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_live_run_answers_a_search_for_a_word_of_a_caption_it_sent(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "door.mp4", size="320x240", fps=25.0, seconds=12.0)
    store = tmp_path / "store.db"
    with short_run_root() as root:
        live = LiveRun(
            [f"door={clip}"], root, extra=["--window", "4", "--stride", "2", "--loop", "--store", str(store)]
        )
        try:
            live.start()
            got = collect(live.ws_url, lambda m: len(of_type(m, "caption")) >= 2, timeout=150)
            captions = of_type(got, "caption")
            assert captions, live.log()
            # the tiny model writes gibberish: search for a word it wrote
            first = captions[0]
            words = [w for w in re.findall(r"\w+", first["text"]) if len(w) >= 2]
            assert words, first
            word = max(words, key=len)
            search = {"type": "search", "id": "w", "query": word, "streams": ["door"], "limit": 500}

            def found(messages_: list[Json]) -> bool:
                return any(m.get("id") == "w" for m in messages_)

            # The recorder commits at most ~0.5 s behind: ask again until it has (a deadline, not a sleep).
            deadline = time.monotonic() + 30
            while True:
                reply = next(
                    m for m in collect(live.ws_url, found, timeout=20, send=[search]) if m.get("id") == "w"
                )
                assert reply["type"] == "results", reply
                hits = [(item["stream"], item["seq"]) for item in reply["items"]]
                if ("door", first["seq"]) in hits or time.monotonic() > deadline:
                    break
            assert ("door", first["seq"]) in hits, (word, reply)
            hit = next(item for item in reply["items"] if item["seq"] == first["seq"])
            assert hit["text"] == first["text"] and isinstance(hit["score"], float)
        finally:
            live.kill()
