"""The recorder's core: what is kept (captions with their window's thumbnail, events, answers), the
bounded queue that drops its oldest when full, and the batching by size and age, time passed in."""

from __future__ import annotations

import base64

import pytest

from stream.messages import (
    Answer,
    Caption,
    CaptureStatus,
    ErrorCode,
    Event,
    EventState,
    Partial,
    StreamState,
    Thumbnail,
)
from stream.recordqueue import Kept, RecordQueue, Selection, Thumbnails


def caption(stream: str = "cam0", seq: int = 0, t_end: float = 8.0, text: str = "a cat") -> Caption:
    return Caption(
        stream=stream,
        seq=seq,
        t_start=t_end - 8.0,
        t_end=t_end,
        frame_times=[t_end - 1.0],
        wall_start=1000.0 + t_end - 8.0,
        wall_end=1000.0 + t_end,
        text=text,
        model="tiny",
        latency_ms=10.0,
    )


def thumbnail(stream: str, t: float, jpeg: bytes) -> Thumbnail:
    return Thumbnail(stream=stream, t=t, wall=1000.0 + t, jpeg=base64.b64encode(jpeg).decode())


def kept(seq: int, size: int = 0) -> Kept:
    message = caption(seq=seq, text="x" * size)
    return Kept(message, message.to_json())


def test_a_caption_is_kept_with_the_newest_thumbnail_of_its_stream_at_or_before_its_end() -> None:
    selection = Selection()
    for t, jpeg in ((5.0, b"five"), (7.0, b"seven"), (9.0, b"nine")):
        assert selection.offer(thumbnail("cam0", t, jpeg), b"{}") is None
    selection.offer(thumbnail("cam1", 8.0, b"other stream"), b"{}")
    message = caption(t_end=8.0)
    got = selection.offer(message, message.to_json())
    assert got == Kept(message, message.to_json(), b"seven")
    early = caption(t_end=4.0)
    assert selection.offer(early, b"{}") == Kept(early, b"{}", None), "no thumbnail that early"
    other = caption(stream="cam2")
    assert selection.offer(other, b"{}") == Kept(other, b"{}", None), "no thumbnail of that stream"


def test_events_and_answers_are_kept_and_failed_answers_status_and_partials_are_not() -> None:
    selection = Selection()
    event = Event(
        stream="door",
        rule="person",
        event_id="e1",
        state=EventState.START,
        t_start=1.0,
        t_end=2.0,
        wall_start=1.0,
        wall_end=2.0,
        score=0.9,
        text="someone at the door",
    )
    answer = Answer(id="k-1", stream="door", text="a red car", t_start=0.0, t_end=8.0)
    failed = Answer(id="k-2", stream="door", text="", error=ErrorCode.NO_FRAMES, message="no frames yet")
    status = CaptureStatus(
        stream="door",
        state=StreamState.LIVE,
        frames=1,
        fps=25.0,
        decode_errors=0,
        reconnects=0,
        drops=0,
        width=None,
        height=None,
        error=None,
        wall=1.0,
    )
    assert selection.offer(event, b"e") == Kept(event, b"e")
    assert selection.offer(answer, b"a") == Kept(answer, b"a")
    assert selection.offer(failed, b"f") is None
    assert selection.offer(status, b"s") is None
    assert selection.offer(Partial(stream="door", seq=1, text="a re"), b"p") is None
    assert [k for k in ("caption", "event", "answer", "thumbnail") if Selection.reads(k)] == [
        "caption",
        "event",
        "answer",
        "thumbnail",
    ]
    assert not any(Selection.reads(k) for k in ("partial", "capture_status", "processes", "recorder_status"))


def test_a_thumbnail_that_is_not_base64_is_counted_and_skipped() -> None:
    selection = Selection()
    bad = Thumbnail(stream="cam0", t=1.0, wall=1.0, jpeg="not base64!")
    assert selection.offer(bad, b"{}") is None
    assert selection.bad_thumbnails == 1
    message = caption(t_end=8.0)
    assert selection.offer(message, b"{}") == Kept(message, b"{}", None)


def test_thumbnails_are_bounded_per_stream_and_in_streams() -> None:
    thumbs = Thumbnails(per_stream=2, max_streams=2)
    for t in (1.0, 2.0, 3.0):
        thumbs.add("a", t, str(t).encode())
    assert thumbs.at_or_before("a", 1.5) is None, "the oldest was forgotten"
    assert thumbs.at_or_before("a", 2.5) == b"2.0"
    thumbs.add("b", 1.0, b"b")
    thumbs.add("c", 1.0, b"c")
    assert thumbs.at_or_before("a", 9.0) is None, "the stream heard from least recently went"
    assert thumbs.at_or_before("c", 9.0) == b"c"


def test_a_batch_is_due_when_its_oldest_message_has_waited_max_delay_or_it_is_full() -> None:
    queue = RecordQueue(batch_size=3, max_delay=0.2)
    assert queue.wait(0.0) is None and queue.take(0.0) == []
    queue.push(kept(0), now=10.0)
    assert queue.wait(10.1) == pytest.approx(0.1)
    assert queue.take(10.1) == []
    batch = queue.take(10.2)
    assert [k.message.seq for k in batch] == [0]  # type: ignore[union-attr]
    assert len(queue) == 1, "in flight until written"
    assert queue.take(10.3) == [] and queue.wait(10.3) is None, "one batch in flight at a time"
    queue.written()
    assert len(queue) == 0
    for seq in range(4):
        queue.push(kept(seq), now=20.0)
    assert queue.wait(20.0) == 0.0, "a full batch is due at once"
    assert [k.message.seq for k in queue.take(20.0)] == [0, 1, 2]  # type: ignore[union-attr]
    queue.written()
    assert queue.take(20.0) == [], "the rest waits for max_delay"
    assert [k.message.seq for k in queue.take(20.0, force=True)] == [3]  # type: ignore[union-attr]


def test_a_full_queue_drops_its_oldest_and_counts_them_but_never_the_batch_in_flight() -> None:
    queue = RecordQueue(capacity=3, batch_size=2, max_delay=0.0)
    for seq in range(3):
        queue.push(kept(seq), now=0.0)
    in_flight = queue.take(0.0)
    assert [k.message.seq for k in in_flight] == [0, 1]  # type: ignore[union-attr]
    dropped = [queue.push(kept(seq), now=0.0) for seq in range(3, 7)]
    assert dropped == [0, 0, 1, 1] and queue.dropped == 2
    queue.written()
    rest = queue.take(0.0, force=True)
    assert [k.message.seq for k in rest] == [4, 5], "2 and 3 were the oldest waiting"


def test_the_queue_is_bounded_in_bytes_too() -> None:
    queue = RecordQueue(capacity=1000, max_bytes=3000, batch_size=100)
    for seq in range(5):
        queue.push(kept(seq, size=1000), now=0.0)
    assert len(queue) == 2 and queue.dropped == 3
    assert [k.message.seq for k in queue.take(0.0, force=True)] == [3, 4]  # type: ignore[union-attr]


def test_a_failed_batch_is_retried_first_after_a_doubling_backoff_then_dropped() -> None:
    queue = RecordQueue(batch_size=10, max_delay=0.0, max_attempts=3, backoff_initial=0.5, backoff_max=8.0)
    for seq in range(2):
        queue.push(kept(seq), now=0.0)
    assert len(queue.take(0.0)) == 2
    queue.push(kept(2), now=0.1)
    assert queue.failed(now=1.0) == 0 and queue.failures == 1
    assert queue.take(1.4) == [] and queue.wait(1.4) == pytest.approx(0.1)
    batch = queue.take(1.5)
    assert [k.message.seq for k in batch] == [0, 1, 2], "the failed batch goes first, in order"
    assert queue.failed(now=2.0) == 0
    assert queue.take(2.9) == [], "the backoff doubled"
    assert len(queue.take(3.0)) == 3
    assert queue.failed(now=4.0) == 3, "third failure in a row: dropped"
    assert queue.dropped == 3 and len(queue) == 0 and queue.failures == 3
    queue.push(kept(9), now=5.0)
    assert len(queue.take(5.0)) == 1, "no backoff left over"
    queue.written()
    assert len(queue) == 0


def test_a_success_resets_the_attempts() -> None:
    queue = RecordQueue(batch_size=10, max_delay=0.0, max_attempts=2)
    queue.push(kept(0), now=0.0)
    queue.take(0.0)
    queue.failed(now=0.0)
    queue.take(10.0)
    queue.written()
    queue.push(kept(1), now=11.0)
    queue.take(11.0)
    assert queue.failed(now=11.0) == 0, "one failure since the last success"


def test_a_failed_batch_put_back_into_a_full_queue_loses_its_oldest_first() -> None:
    queue = RecordQueue(capacity=3, batch_size=2, max_delay=0.0)
    for seq in range(2):
        queue.push(kept(seq), now=0.0)
    queue.take(0.0)
    for seq in range(2, 5):
        queue.push(kept(seq), now=0.0)
    assert queue.failed(now=0.0) == 2 and queue.dropped == 2
    assert [k.message.seq for k in queue.take(99.0, force=True)] == [2, 3]  # type: ignore[union-attr]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecordQueue(capacity=0)
