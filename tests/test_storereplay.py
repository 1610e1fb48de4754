"""Replay merged from the store and the gateway's buffer: the I/O-free rules of stream.storereplay."""

from __future__ import annotations

import json

import pytest

from stream import messages
from stream.errors import ProtocolError
from stream.fanout import ReplayStore
from stream.requests import Subscribe
from stream.storereplay import ReplayEntry, mark_stored, merge_replay

RUN = "run-now"


def body(stream: str, seq: int, wall: float) -> bytes:
    return messages.Caption(
        stream=stream,
        seq=seq,
        t_start=float(seq),
        t_end=seq + 1.0,
        frame_times=[float(seq)],
        wall_start=wall - 1.0,
        wall_end=wall,
        text=f"{stream} caption {seq}",
        model="tiny",
        latency_ms=1.0,
    ).to_json()


def stored(stream: str, seq: int, wall: float, run_id: str = RUN) -> ReplayEntry:
    return ReplayEntry(stream, seq, wall, body(stream, seq, wall), run_id=run_id)


def buffered(*entries: tuple[str, int, float]) -> dict[str, list[ReplayEntry]]:
    store = ReplayStore(100)
    for stream, seq, wall in entries:
        store.add(stream, body(stream, seq, wall), seq=seq, wall_end=wall)
    return store.entries(Subscribe())


def decoded(replay: list[bytes]) -> list[tuple[str, int, bool]]:
    out = []
    for raw in replay:
        data = json.loads(raw)
        assert data["replayed"] is True
        out.append((data["stream"], data["seq"], data.get("earlier_run", False)))
    return out


def test_earlier_runs_come_first_marked_then_this_runs_captions() -> None:
    rows = [
        stored("door", 7, 100.0, "run-old"),
        stored("door", 8, 101.0, "run-old"),
        stored("door", 0, 500.0),
    ]
    replay = merge_replay(rows, buffered(("door", 1, 501.0)), run_id=RUN, count=10)
    assert decoded(replay) == [("door", 7, True), ("door", 8, True), ("door", 0, False), ("door", 1, False)]


def test_a_caption_both_stored_and_buffered_is_sent_once_as_buffered() -> None:
    rows = [stored("door", seq, 500.0 + seq) for seq in range(3)]
    live = buffered(("door", 1, 501.0), ("door", 2, 502.0), ("door", 3, 503.0))
    replay = merge_replay(rows, live, run_id=RUN, count=10)
    assert decoded(replay) == [("door", seq, False) for seq in range(4)]
    assert replay[1:] == [entry.body for entry in live["door"]]  # the buffer's own bytes


def test_a_stored_caption_the_gateway_has_not_heard_yet_is_left_to_the_live_path() -> None:
    # The recorder committed seq 5 before the gateway read it from the bus: it arrives live next.
    rows = [stored("door", 4, 504.0), stored("door", 5, 505.0)]
    replay = merge_replay(rows, buffered(("door", 4, 504.0)), run_id=RUN, count=10)
    assert decoded(replay) == [("door", 4, False)]


def test_a_restarted_gateway_replays_this_runs_stored_captions_unmarked() -> None:
    rows = [stored("door", seq, 500.0 + seq) for seq in range(3)]
    assert decoded(merge_replay(rows, {}, run_id=RUN, count=10)) == [("door", seq, False) for seq in range(3)]


def test_the_count_is_per_stream_and_keeps_the_newest_in_wall_order_across_streams() -> None:
    rows = [stored("a", 0, 10.0, "old"), stored("a", 1, 11.0, "old"), stored("b", 0, 12.0, "old")]
    live = buffered(("b", 0, 600.0), ("a", 0, 601.0), ("b", 1, 602.0))
    replay = merge_replay(rows, live, run_id=RUN, count=2)
    assert decoded(replay) == [("a", 1, True), ("b", 0, False), ("a", 0, False), ("b", 1, False)]
    assert merge_replay(rows, live, run_id=RUN, count=0) == []


def test_same_seq_of_another_run_is_not_a_duplicate() -> None:
    rows = [stored("door", 3, 100.0, "run-old")]
    replay = merge_replay(rows, buffered(("door", 3, 500.0)), run_id=RUN, count=10)
    assert decoded(replay) == [("door", 3, True), ("door", 3, False)]


def test_marking_splices_fields_into_the_stored_json() -> None:
    raw = body("door", 1, 5.0)
    assert json.loads(mark_stored(raw, earlier_run=True)) == {
        **json.loads(raw),
        "replayed": True,
        "earlier_run": True,
    }
    assert "earlier_run" not in json.loads(mark_stored(raw + b"\n", earlier_run=False))
    with pytest.raises(ProtocolError, match="not an object"):
        mark_stored(b"[1, 2]", earlier_run=False)
