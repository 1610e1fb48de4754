"""Issue 11's crash check, as a test: SIGKILL a whole real run mid-stream, then every caption a
websocket client received more than 1 s before the kill must be in the store (the full measurement,
more kills and streams: ``tools/bench_crash.py``, whose round this runs)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from pathlib import Path

import pytest
from liverun import shm_rings, short_run_root
from realparts import load_tool


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_caption_received_a_second_before_a_sigkill_of_the_whole_run_is_stored(tmp_path: Path) -> None:
    crash = load_tool("bench_crash")
    clips = crash.make_clips(tmp_path, 2)
    store = tmp_path / "crash.db"
    with short_run_root() as root:
        # Twice on one file: the second run opens what the first SIGKILL left and adds to it.
        rounds = [
            crash.crash_round(clips, store, root, captions=5, rng=random.Random(seed), timeout=420)
            for seed in (1, 2)
        ]
        run_ids = [p.name for p in root.glob("vidnarrate-*/*")]
    for r in rounds:
        assert len(r.pids) >= 5  # the supervisor, gateway, inference, recorder, two captures: all killed
        assert len(r.old) >= 3, f"the check needs captions older than the margin: {r.received}"
        assert r.missing_old == [], f"received over 1 s before the kill but not stored: {r.missing_old}"
    assert run_ids and not any(shm_rings(run_id) for run_id in run_ids)  # the killed runs' memory is freed
    with contextlib.closing(sqlite3.connect(store)) as db:
        runs = db.execute("SELECT COUNT(DISTINCT run_id) FROM messages WHERE kind = 'caption'").fetchone()[0]
    assert runs == 2, "the second run recorded into the file the first SIGKILL left"
