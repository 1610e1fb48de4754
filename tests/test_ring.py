"""FrameRing in one process, on real POSIX shared memory: the slot protocol, reader API and errors.

Cross-process behaviour (torn reads, lossless with slow readers, crashes, resource_tracker) is in
tests/test_ring_processes.py.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from stream.errors import RingError
from stream.ring import Frame, FrameInfo, FrameRing, ring_name

SHM = Path("/dev/shm")

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux) to check for leaks")

MakeRing = Callable[..., FrameRing]


@pytest.fixture
def make_ring() -> Iterator[MakeRing]:
    """Create rings with fresh names; close and unlink them afterwards and check nothing leaked."""
    run_id = uuid.uuid4().hex
    made: list[FrameRing] = []

    def make(
        source: str = "cam0",
        *,
        slots: int = 4,
        max_height: int = 48,
        max_width: int = 64,
        lossless: bool = False,
    ) -> FrameRing:
        ring = FrameRing.create(
            ring_name(run_id, source),
            slots=slots,
            max_height=max_height,
            max_width=max_width,
            lossless=lossless,
        )
        made.append(ring)
        return ring

    yield make
    for ring in made:
        ring.close()
        ring.unlink()
    assert not [p for p in SHM.iterdir() if p.name.startswith(ring_name(run_id, "x")[:12])]


def frame_for(seq: int, h: int = 40, w: int = 60) -> np.ndarray:
    """A frame whose every byte depends on seq and position (any mix-up shows)."""
    rows = (
        np.arange(h, dtype=np.uint16)[:, None, None] * 3
        + np.arange(w)[None, :, None]
        + np.arange(3)[None, None, :]
        + seq * 7
    )
    return (rows % 251).astype(np.uint8)


def test_ring_name_is_short_valid_and_unique_per_run_and_source() -> None:
    names = {ring_name(run, src) for run in ("a1b2c3d4e5f6", "a1b2c3d4e5f7") for src in ("cam0", "cam1")}
    assert len(names) == 4
    for name in names:
        assert re.fullmatch(r"vn-[A-Za-z0-9]+-[0-9a-f]{10}", name)
        assert len(name) + 1 <= 31  # "/" + name within macOS's PSHMNAMLEN
    assert ring_name("run/with:odd chars", "screen") == ring_name("run/with:odd chars", "screen")
    with pytest.raises(RingError, match="run id"):
        ring_name("", "cam0")


def test_empty_ring(make_ring: MakeRing) -> None:
    ring = make_ring()
    assert ring.head_seq == -1
    assert ring.latest() is None
    assert ring.read(0) is None and ring.read(-1) is None
    assert ring.since(-1) == []
    assert not ring.ended


def test_write_read_round_trip_with_differing_shapes(make_ring: MakeRing) -> None:
    ring = make_ring(slots=4, max_height=48, max_width=64)
    shapes = [(48, 64), (1, 1), (40, 60), (17, 33)]
    for seq, (h, w) in enumerate(shapes):
        assert ring.write(frame_for(seq, h, w), pts=seq / 30, wall=1000.0 + seq) == seq
    assert ring.head_seq == 3
    for seq, (h, w) in enumerate(shapes):
        frame = ring.read(seq)
        assert isinstance(frame, Frame)
        assert (frame.seq, frame.pts, frame.wall) == (seq, seq / 30, 1000.0 + seq)
        assert frame.image.shape == (h, w, 3) and frame.image.dtype == np.uint8
        np.testing.assert_array_equal(frame.image, frame_for(seq, h, w))


def test_info_gives_metadata_without_pixels(make_ring: MakeRing) -> None:
    ring = make_ring(slots=2)
    for seq, (h, w) in enumerate([(40, 60), (17, 33), (48, 64)]):
        ring.write(frame_for(seq, h, w), seq / 30, 1000.0 + seq)
    assert ring.info(2) == FrameInfo(2, 2 / 30, 1002.0, 48, 64)
    assert ring.info(1) == FrameInfo(1, 1 / 30, 1001.0, 17, 33)
    assert ring.info(0) is None and ring.info(3) is None and ring.info(-1) is None


def test_frames_are_private_copies(make_ring: MakeRing) -> None:
    ring = make_ring(slots=2)
    ring.write(frame_for(0), 0.0, 0.0)
    frame = ring.read(0)
    assert frame is not None
    assert frame.image.flags.owndata and frame.image.flags.writeable
    frame.image[:] = 0  # changing our copy does not change the ring
    np.testing.assert_array_equal(ring.read(0).image, frame_for(0))
    ring.write(frame_for(1), 0.0, 0.0)
    ring.write(frame_for(2), 0.0, 0.0)  # overwrites slot 0: the copy we hold is unaffected
    kept = ring.since(-1)
    assert [f.seq for f in kept] == [1, 2]
    np.testing.assert_array_equal(kept[0].image, frame_for(1))


def test_non_contiguous_input_is_written_correctly(make_ring: MakeRing) -> None:
    ring = make_ring()
    big = frame_for(5, 80, 120)
    view = big[::2, ::2]  # 40x60, strided
    ring.write(view, 0.0, 0.0)
    np.testing.assert_array_equal(ring.latest().image, view)


def test_overwritten_and_future_frames_read_as_none(make_ring: MakeRing) -> None:
    ring = make_ring(slots=3)
    for seq in range(7):
        ring.write(frame_for(seq), seq, seq)
    assert [ring.read(s) is None for s in range(9)] == [True] * 4 + [False] * 3 + [True] * 2
    assert ring.latest().seq == 6


def test_since_is_ascending_bounded_and_skips_what_is_gone(make_ring: MakeRing) -> None:
    ring = make_ring(slots=4)
    for seq in range(10):
        ring.write(frame_for(seq), seq, seq)
    assert [f.seq for f in ring.since(-1)] == [6, 7, 8, 9]  # 0..5 were overwritten
    assert [f.seq for f in ring.since(7)] == [8, 9]
    assert [f.seq for f in ring.since(5, limit=2)] == [6, 7]
    assert ring.since(9) == [] and ring.since(100) == []
    for f in ring.since(-1):
        np.testing.assert_array_equal(f.image, frame_for(f.seq))


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [
        ((49, 64, 3), np.uint8, r"\(49, 64, 3\).*\(48, 64, 3\)"),
        ((48, 65, 3), np.uint8, r"\(48, 65, 3\).*\(48, 64, 3\)"),
        ((10, 10, 4), np.uint8, "uint8 \\(H, W, 3\\)"),
        ((10, 10), np.uint8, "uint8 \\(H, W, 3\\)"),
        ((10, 10, 3), np.float32, "float32"),
        ((0, 10, 3), np.uint8, "does not fit"),
    ],
)
def test_bad_frames_are_clear_errors_naming_ring_and_shapes(
    make_ring: MakeRing, shape: tuple, dtype: type, match: str
) -> None:
    ring = make_ring(max_height=48, max_width=64)
    with pytest.raises(RingError, match=match) as info:
        ring.write(np.zeros(shape, dtype), 0.0, 0.0)
    assert ring.name in str(info.value)
    assert ring.head_seq == -1  # nothing was written


def test_attach_sees_the_same_frames_and_can_continue_writing(make_ring: MakeRing) -> None:
    ring = make_ring(slots=4)
    ring.write(frame_for(0), 0.5, 10.0)
    other = FrameRing.attach(ring.name)
    try:
        assert (other.slots, other.max_shape, other.lossless) == (4, (48, 64, 3), False)
        assert other.creator_pid == os.getpid()
        np.testing.assert_array_equal(other.latest().image, frame_for(0))
        assert other.write(frame_for(1), 1.0, 11.0) == 1  # a re-attached writer continues the sequence
        assert ring.head_seq == 1
        np.testing.assert_array_equal(ring.read(1).image, frame_for(1))
        other.mark_ended()
        assert ring.ended
    finally:
        other.close()
    assert ring.read(1) is not None  # closing an attachment leaves the ring alone


def test_attach_errors_name_the_ring() -> None:
    missing = ring_name(uuid.uuid4().hex, "nope")
    with pytest.raises(RingError, match=f"no ring named {missing}"):
        FrameRing.attach(missing)
    with pytest.raises(RingError, match="bad ring name"):
        FrameRing.attach("../etc/passwd")


def test_attach_refuses_a_segment_that_is_not_a_ring() -> None:
    name = ring_name(uuid.uuid4().hex, "junk")
    path = SHM / name
    path.write_bytes(os.urandom(8192))
    try:
        with pytest.raises(RingError, match=f"ring {name}: not a vidnarrate ring"):
            FrameRing.attach(name)
    finally:
        path.unlink()


def test_create_refuses_an_existing_name_and_bad_geometry(make_ring: MakeRing) -> None:
    ring = make_ring()
    with pytest.raises(RingError, match="already exists"):
        FrameRing.create(ring.name, slots=2, max_height=8, max_width=8)
    with pytest.raises(RingError, match="slots"):
        FrameRing.create(ring_name(uuid.uuid4().hex, "x"), slots=1, max_height=8, max_width=8)
    with pytest.raises(RingError, match="max frame size"):
        FrameRing.create(ring_name(uuid.uuid4().hex, "x"), slots=2, max_height=0, max_width=8)


def test_create_that_cannot_get_its_memory_fails_cleanly() -> None:
    # Each slot alone is bigger than the whole /dev/shm file system, so the kernel refuses at once
    # (asking for just more than what is free would fill memory before failing).
    fs = os.statvfs(SHM)
    side = int((fs.f_blocks * fs.f_frsize / 3) ** 0.5) + 64
    name = ring_name(uuid.uuid4().hex, "huge")
    with pytest.raises(RingError, match=f"ring {name}: cannot reserve"):
        FrameRing.create(name, slots=2, max_height=side, max_width=side)
    assert not (SHM / name).exists()


def test_context_manager_creator_unlinks_attacher_only_closes() -> None:
    name = ring_name(uuid.uuid4().hex, "cm")
    with FrameRing.create(name, slots=2, max_height=8, max_width=8) as ring:
        ring.write(np.ones((8, 8, 3), np.uint8), 0.0, 0.0)
        with FrameRing.attach(name) as reader:
            assert reader.latest() is not None
        assert (SHM / name).exists()
    assert not (SHM / name).exists()
    with pytest.raises(RingError, match="closed"):
        ring.latest()
    ring.close()  # idempotent
    ring.unlink()


def test_lossless_writer_waits_for_a_reader_and_its_releases(make_ring: MakeRing) -> None:
    ring = make_ring(slots=2, lossless=True)
    assert ring.write(frame_for(0), 0, 0) == 0
    assert ring.write(frame_for(1), 1, 1) == 1
    # Slot 0 still holds frame 0 and no reader has taken it: the writer waits, then gives up.
    t0 = time.monotonic()
    assert ring.write(frame_for(2), 2, 2, timeout=0.1) == -1
    assert time.monotonic() - t0 >= 0.1
    assert ring.head_seq == 1 and ring.read(0) is not None
    rid = ring.register_reader()  # default: everything still in the ring is unread
    assert ring.write(frame_for(2), 2, 2, timeout=0.05) == -1
    ring.release(rid, 0)
    assert ring.write(frame_for(2), 2, 2, timeout=0.05) == 2
    assert ring.write(frame_for(3), 3, 3, timeout=0.05) == -1
    ring.release(rid, 2)  # released up to 2: both slots are free
    assert ring.write(frame_for(3), 3, 3, timeout=0.05) == 3
    assert ring.write(frame_for(4), 4, 4, timeout=0.05) == 4
    ring.unregister_reader(rid)
    assert ring.write(frame_for(5), 5, 5, timeout=0.05) == -1  # no reader: nothing may be overwritten
    with pytest.raises(RingError, match="not registered"):
        ring.release(rid, 5)


def test_lossless_waits_for_the_slowest_reader(make_ring: MakeRing) -> None:
    ring = make_ring(slots=2, lossless=True)
    fast, slow = ring.register_reader(), ring.register_reader(after=-1)
    ring.write(frame_for(0), 0, 0)
    ring.write(frame_for(1), 1, 1)
    ring.release(fast, 1)
    assert ring.write(frame_for(2), 2, 2, timeout=0.05) == -1
    ring.release(slow, 0)
    assert ring.write(frame_for(2), 2, 2, timeout=0.05) == 2


def test_live_mode_ignores_readers_and_never_blocks(make_ring: MakeRing) -> None:
    ring = make_ring(slots=2)
    ring.register_reader()
    for seq in range(10):
        assert ring.write(frame_for(seq), seq, seq, timeout=0) == seq


def test_reader_table_is_bounded_and_released_on_close(make_ring: MakeRing) -> None:
    ring = make_ring(lossless=True)
    other = FrameRing.attach(ring.name)
    ids = [other.register_reader() for _ in range(16)]
    assert sorted(ids) == list(range(16))
    with pytest.raises(RingError, match="all 16 reader slots"):
        ring.register_reader()
    other.close()  # a closing process gives its reader slots back
    assert ring.register_reader() == 0


def test_wait_for_returns_on_new_frame_timeout_and_end(make_ring: MakeRing) -> None:
    ring = make_ring()
    t0 = time.monotonic()
    assert ring.wait_for(-1, timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.05
    ring.write(frame_for(0), 0, 0)
    assert ring.wait_for(-1, timeout=1) is True
    ring.mark_ended()
    t0 = time.monotonic()
    assert ring.wait_for(0, timeout=5) is False  # ended, nothing newer: no waiting
    assert time.monotonic() - t0 < 1


def test_the_end_mark_carries_where_the_source_ended_to_other_processes_views(make_ring: MakeRing) -> None:
    ring = make_ring()
    ring.write(frame_for(0), 9.0, 0)  # the last sample of a file that runs on to 10 s
    assert ring.end_time is None, "not ended yet"
    other = FrameRing.attach(ring.name)
    try:
        ring.mark_ended(10.0)
        assert other.ended and other.end_time == 10.0
    finally:
        other.close()
    plain = make_ring("cam1")
    plain.mark_ended()
    assert plain.ended and plain.end_time is None, "an end without a time says none"
