"""Questions over the past (``ask`` with ``since`` or ``from``/``to``) with real parts: an in-process
gateway over a real SQLite store file, real websocket clients, and the inference process's half on the
real zmq bus (an AskReceiver and a Publisher running the real text-work core; only the model is
absent: its answer names how many captions it was given)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from stream import messages
from stream.bus import AskReceiver, Publisher, RunPaths
from stream.gateway import Gateway
from stream.gateway_options import GatewayOptions
from stream.store import Record, Store
from stream.textwork import AnswerPast, TextSettings, TextWork

Json = dict[str, Any]

pytestmark = pytest.mark.timeout(60)

NOW = time.time()  # stamped again by each store_file: the module may run minutes after its import
TEXTS = [  # the door's captions, one a minute over the last 10 minutes, oldest first
    "the porch is empty",
    "a cat walks past the door",
    "the porch is empty",
    "a delivery van stops in front",
    "a man carries a parcel to the door",
    "the porch is empty",
    "a cat sleeps on the step",
    "the porch is empty",
    "the porch is empty",
    "the porch is empty",
]


def caption(seq: int, text: str) -> Record:
    wall_end = NOW - 60 * (len(TEXTS) - seq)
    message = messages.Caption(
        stream="door", seq=seq, t_start=4.0 * seq, t_end=4.0 * seq + 8, frame_times=[4.0 * seq + 7],
        wall_start=wall_end - 8, wall_end=wall_end, text=text, model="tiny", latency_ms=5.0,
    )  # fmt: skip
    return Record(run_id="run-a", message=message, body=message.to_json())


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    global NOW
    NOW = time.time()
    path = tmp_path / "vidnarrate.db"
    with Store.open(path) as store:
        store.add([caption(seq, text) for seq, text in enumerate(TEXTS)])
    return path


@pytest.fixture
def run() -> Iterator[RunPaths]:
    paths = RunPaths.create(run_id=f"test-{uuid.uuid4().hex[:10]}")
    yield paths
    paths.remove()


class InferenceSide(threading.Thread):
    """The inference process's half on the real bus: asks in, the text-work core's answers out."""

    def __init__(self, run: RunPaths) -> None:
        super().__init__(daemon=True)
        self.endpoint = run.publisher_endpoint("inference")
        self.asks_endpoint = run.asks_endpoint
        self.received: list[messages.AskRequest] = []
        self.prompts: list[str] = []
        self.stop = threading.Event()
        self.work = TextWork(TextSettings(), lambda text: len(text.split()), 8192)

    def run(self) -> None:
        receiver = AskReceiver(self.asks_endpoint)
        publisher = Publisher(self.endpoint)
        try:
            while not self.stop.is_set():
                for ask in receiver.poll(timeout=0.02):
                    self.received.append(ask)
                    self.work.submit_past_ask(ask)
                    action = self.work.next_past_ask()
                    assert isinstance(action, AnswerPast)
                    self.prompts.append(action.prompt)
                    publisher.send(TextWork.past_answered(action, f"from {action.captions} captions"))
        finally:
            receiver.close()
            publisher.close()


@contextlib.asynccontextmanager
async def gateway(run: RunPaths, store: Path | None) -> AsyncIterator[Gateway]:
    side = InferenceSide(run)
    side.start()
    gw = Gateway(
        [side.endpoint],
        run.asks_endpoint,
        GatewayOptions(port=0, store=None if store is None else str(store), max_errors=100),
    )
    await gw.start()
    gw.side = side  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        await gw.stop()
        side.stop.set()
        side.join(5.0)


async def request(ws: ClientConnection, timeout: float = 10.0, **fields: Any) -> Json:
    """Send, retrying while the gateway's ask socket has not reached the receiver yet."""
    for _ in range(100):
        await ws.send(json.dumps(fields))
        async with asyncio.timeout(timeout):
            while True:
                reply = json.loads(await ws.recv())
                if reply["type"] != "status":
                    break
        if reply.get("error") != "ask_unavailable":
            return dict(reply)
        await asyncio.sleep(0.05)
    raise AssertionError("asks never reached the inference side")


def test_an_ask_with_since_is_answered_from_the_stored_captions_of_that_span(
    run: RunPaths, store_file: Path
) -> None:
    async def scenario() -> None:
        async with gateway(run, store_file) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            asked = time.time()
            reply = await request(
                ws, type="ask", id=7, stream="door", question="when was the cat here?", since=330
            )
            assert reply["type"] == "answer" and reply["id"] == 7, reply
            # The last 5.5 minutes hold the last 5 captions, whichever words match.
            assert reply["captions"] == 5 and reply["text"] == "from 5 captions"
            assert asked - 330 - 1 <= reply["from"] <= asked - 330 + 1 and asked <= reply["to"] <= time.time()
            (forwarded,) = gw.side.received  # type: ignore[attr-defined]
            texts = [c["text"] for c in forwarded.captions or []]
            assert texts[0] == "a cat sleeps on the step", "the caption sharing the question's words first"
            (prompt,) = gw.side.prompts  # type: ignore[attr-defined]
            lines = [line for line in prompt.splitlines() if line.startswith("[")]
            assert [line.split("] ", 1)[1] for line in lines] == TEXTS[5:], "in time order"

            earlier = await request(
                ws,
                type="ask",
                id="e",
                stream="door",
                question="a van?",
                **{"from": NOW - 460, "to": NOW - 390},
            )
            assert earlier["captions"] == 1 and (earlier["from"], earlier["to"]) == (NOW - 460, NOW - 390)
            assert gw.side.received[-1].captions[0]["text"] == "a delivery van stops in front"  # type: ignore[attr-defined]
            # An open start: the span covered begins with the stream's first stored caption.
            opening = await request(ws, type="ask", id="o", stream="door", question="first?", to=NOW - 530)
            assert opening["captions"] == 2 and (opening["from"], opening["to"]) == (NOW - 600 - 8, NOW - 530)

    asyncio.run(scenario())


def test_bad_and_unanswerable_asks_over_the_past_get_errors_naming_why(
    run: RunPaths, store_file: Path
) -> None:
    cases: list[tuple[Json, str, str]] = [
        ({"since": -5}, "bad_field", "'since' must be a positive number of seconds"),
        ({"since": "1h"}, "bad_field", "'since' must be a positive number of seconds"),
        ({"from": NOW, "to": NOW - 60}, "bad_field", "'from' ("),
        ({"since": 60, "to": NOW}, "bad_field", "give 'since' or 'from'/'to', not both"),
        (
            {"since": 60, "stream": "gate"},
            "unknown_stream",
            "nothing of stream 'gate' is stored (streams: door)",
        ),
        ({"from": NOW - 86400 * 2, "to": NOW - 86400}, "no_captions", "no caption of door is stored from "),
    ]

    async def scenario() -> None:
        async with gateway(run, store_file) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            for fields, code, named in cases:
                ask = {"type": "ask", "id": "x", "stream": "door", "question": "anyone?", **fields}
                reply = await request(ws, **ask)
                assert reply["type"] == "error" and reply["error"] == code and reply["id"] == "x", (
                    fields,
                    reply,
                )
                assert named in reply["message"], (fields, reply)
            assert gw.side.received == []  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_without_a_store_an_ask_over_the_past_is_store_unavailable(run: RunPaths) -> None:
    async def scenario() -> None:
        async with gateway(run, None) as gw, connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
            reply = await request(ws, type="ask", id=1, stream="door", question="anyone?", since=60)
            assert reply["type"] == "error" and reply["error"] == "store_unavailable", reply
            assert "--no-store" in reply["message"]

    asyncio.run(scenario())
