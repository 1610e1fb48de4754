"""Live summaries and questions over the past through a real ``vidnarrate run``: a clip played as
live (looped), the tiny model, a real store, real websocket clients."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from liverun import LiveRun, collect, of_type, short_run_root, wait_for
from realparts import make_clip

from stream import messages

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]


def stored(path: Path, kind: str) -> list[tuple[str, float, float, str]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT stream, t_start, t_end, text FROM messages WHERE kind = ?", (kind,))
        return list(rows)


def test_a_run_publishes_and_stores_summaries_and_answers_asks_over_the_past(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "door.mp4", size="320x240", fps=25.0, seconds=12.0)
    store = tmp_path / "store.db"
    with short_run_root() as root:
        live = LiveRun(
            [f"door={clip}"],
            root,
            extra=["--window", "4", "--stride", "2", "--loop", "--store", str(store)]
            + ["--set", "summaries.every=6", "--set", "summaries.max_new_tokens=6"],
        )
        try:
            live.start()
            got = collect(live.ws_url, lambda m: len(of_type(m, "summary")) >= 2, timeout=200)
            summaries = of_type(got, "summary")
            assert len(summaries) >= 2, live.log()
            captions = of_type(got, "caption")
            for summary in summaries:
                messages.Summary.from_dict(summary)  # every field, of its type
                assert summary["stream"] == "door" and summary["captions"] >= 1
                assert summary["t_start"] < summary["t_end"] and summary["wall_start"] <= summary["wall_end"]
            # Consecutive summaries cover consecutive spans: each starts where a caption after the
            # previous one's end starts, every 6 s of stream time.
            first, second = summaries[0], summaries[1]
            assert second["t_end"] > first["t_end"] and second["t_start"] >= first["t_end"] - 4.0
            assert {c["seq"] for c in captions}, live.log()
            wait_for(
                lambda: any(
                    row[3] == first["text"] and row[2] == first["t_end"] for row in stored(store, "summary")
                ),
                10.0,
                "the summary in the store",
            )

            ask = {"type": "ask", "id": "past", "stream": "door", "question": "what happened?", "since": 120}
            asked = time.time()

            def answered(m: list[dict[str, Any]]) -> bool:
                return any(x.get("id") == "past" for x in m)

            # The store may lag the ask's first try by its ~0.5 s commit: a reply either way.
            reply = next(
                x for x in collect(live.ws_url, answered, timeout=60, send=[ask]) if x.get("id") == "past"
            )
            assert reply["type"] == "answer", reply
            assert reply["stream"] == "door" and isinstance(reply["text"], str)
            assert 1 <= reply["captions"] <= len(stored(store, "caption"))
            assert asked - 121 <= reply["from"] <= asked - 119 and asked <= reply["to"] <= time.time()
            live_ask = {"type": "ask", "id": "now", "stream": "door", "question": "what now?"}
            heard = collect(
                live.ws_url, lambda m: any(x.get("id") == "now" for x in m), timeout=60, send=[live_ask]
            )
            now = next(x for x in heard if x.get("id") == "now")
            assert now["type"] == "answer" and "from" not in now and "frame_times" in now, now
        finally:
            live.kill()
