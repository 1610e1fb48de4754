"""Alert rules through a real ``vidnarrate run`` with the tiny model: its yes/no answers are arbitrary,
so the plumbing is tested with a rule that always fires (threshold 0) and one that never does
(threshold 1): events reach an events-only websocket client and the store, the open event gets its
``end`` when the file ends, and ``vidnarrate events`` lists it. The logic is tests/test_alerts.py's."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import websockets
from liverun import VIDNARRATE, LiveRun, collect, short_run_root
from realparts import make_clip

from stream.store import Store

RULES = """
[[alerts]]
name = "always"
question = "Is anything in view?"
threshold = 0.0
off_after = 1

[[alerts]]
name = "never"
streams = ["door"]
question = "Is a person at the door?"
threshold = 1.0
"""


def events_until_closed(ws_url: str, started: threading.Event) -> list[dict[str, Any]]:
    """Every event an events-only client receives until the server closes the connection; ``started``
    is set once an event has started."""

    async def run() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with websockets.connect(ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "types": ["event"]}))
            async for raw in ws:  # ends when the gateway closes (1001 on stop)
                got.append(json.loads(raw))
                if got[-1].get("state") == "start":
                    started.set()
        return got

    return asyncio.run(run())


def stored_events(path: Path) -> list[dict[str, Any]]:
    with Store.open(path, readonly=True) as store:
        return [json.loads(row.json) for row in reversed(list(store.iter_events()))]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_rule_that_always_fires_starts_an_event_and_ends_it_when_the_file_ends(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "door.mp4", seconds=10.0, fps=10.0)
    config = tmp_path / "alerts.toml"
    config.write_text(RULES)
    store = tmp_path / "store.db"
    with short_run_root() as root:
        live = LiveRun(
            [f"door={clip}"],
            root,
            extra=["--config", str(config), "--alert", "flagged: Is it daytime?", "--window", "4"]
            + ["--stride", "2", "--store", str(store)],
        )
        try:
            live.start()
            got = collect(
                live.ws_url,
                lambda m: any(e.get("state") == "end" and e.get("rule") == "always" for e in m),
                timeout=180,
                subscribe={"type": "subscribe", "types": ["event"]},
            )
            assert live.proc is not None and live.proc.wait(120) == 0, live.log()
            live.wait_output()
        finally:
            live.kill()
    assert got[0]["type"] == "subscribed" and got[0]["types"] == ["event"], got[:1]
    events = got[1:]
    assert {m["type"] for m in events} == {"event"}, "an events-only client gets nothing else"
    always = [e for e in events if e["rule"] == "always"]
    assert not [e for e in events if e["rule"] == "never"], "threshold 1: never positive"
    start, *updates, end = always
    assert (start["state"], end["state"]) == ("start", "end")
    assert {e["state"] for e in updates} <= {"update"} and len(updates) >= 1
    assert len({e["event_id"] for e in always}) == 1 and start["stream"] == "door"
    assert base64.b64decode(start["thumbnail"])[:2] == b"\xff\xd8", "a JPEG of the window's newest frame"
    assert "thumbnail" not in end
    assert start["t_start"] == 0.0 and end["t_end"] >= updates[-1]["t_end"] > start["t_end"]
    assert end["t_end"] > 9.0, "the event ends with the file's last window"
    assert start["text"] and all(0.0 <= e["score"] <= 1.0 for e in always)
    # The recorder kept every event message; the events command folds them into one ended event.
    kept = stored_events(store)
    assert [(e["event_id"], e["state"]) for e in kept if e["rule"] == "always"] == [
        (e["event_id"], e["state"]) for e in always
    ]
    assert not [e for e in kept if e["rule"] == "never"]
    done = subprocess.run(
        [str(VIDNARRATE), "events", "--store", str(store), "--rule", "always", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (listed,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (listed["event_id"], listed["state"], listed["messages"]) == (
        start["event_id"],
        "ended",
        len(always),
    )
    assert (listed["t_start"], listed["t_end"]) == (start["t_start"], end["t_end"])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_an_event_open_when_the_run_is_stopped_gets_its_end_in_the_store_and_at_its_clients(
    tmp_path: Path,
) -> None:
    clip = make_clip(tmp_path / "door.mp4", seconds=6.0, fps=10.0)
    config = tmp_path / "alerts.toml"
    config.write_text(
        '[[alerts]]\nname = "always"\nquestion = "Anything?"\nthreshold = 0.0\noff_after = 1000\n'
    )
    store = tmp_path / "store.db"
    with short_run_root() as root:
        live = LiveRun(
            [f"door={clip}"],
            root,
            extra=[
                "--config",
                str(config),
                "--window",
                "4",
                "--stride",
                "2",
                "--loop",
                "--store",
                str(store),
            ],
        )
        try:
            live.start()
            started = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                listening = pool.submit(events_until_closed, live.ws_url, started)
                assert started.wait(180), live.log()
                assert live.stop(signal.SIGINT) == 0, live.log()
                got = listening.result(timeout=60)
            (start,) = [e for e in got if e.get("state") == "start"]
        finally:
            live.kill()
    kept = [(e["event_id"], e["state"]) for e in stored_events(store)]
    assert kept[0] == (start["event_id"], "start") and kept[-1] == (start["event_id"], "end"), kept
    assert {state for _, state in kept[1:-1]} <= {"update"}
    # The connected client heard the end too: the gateway forwards what the inference process
    # published last before it closes its clients.
    heard = [(e["event_id"], e["state"]) for e in got if e.get("type") == "event"]
    assert heard[-1] == (start["event_id"], "end"), heard
