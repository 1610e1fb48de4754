"""stream/timeline.py: source pts to stream time, the one clock capture and the offline command share."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.timeline import MIN_STEP_S, Timeline


def stamps(
    timeline: Timeline, pts: list[float | None], walls: list[float] | None = None
) -> list[float | None]:
    walls = walls if walls is not None else [100.0 + (p or 0.0) for p in pts]
    return [timeline.stamp(p, w) for p, w in zip(pts, walls, strict=True)]


def test_stream_time_follows_pts_from_zero() -> None:
    assert stamps(Timeline(), [5.0, 5.04, 5.08, 6.0]) == pytest.approx([0.0, 0.04, 0.08, 1.0])


def test_repeated_pts_are_dropped() -> None:
    timeline = Timeline()
    assert stamps(timeline, [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 2.0]) == [0.0, None, 0.5, 1.0, None, None, 2.0]
    assert timeline.counters.repeats == 3


def test_small_step_back_is_reordering_and_dropped() -> None:
    timeline = Timeline(reorder=1.0)
    assert stamps(timeline, [0.0, 0.5, 1.0, 0.9, 1.5, 2.0]) == [0.0, 0.5, 1.0, None, 1.5, 2.0]
    assert timeline.counters.reordered == 1 and timeline.counters.restarts == 0


def test_big_step_back_is_a_restart_that_continues_by_the_wall_clock() -> None:
    """pts restart at 0 after 10 s of stream and a 5-s outage: time continues at 15 s, then follows pts."""
    pts = [i / 30 for i in range(300)] + [i / 30 for i in range(150)]
    walls = [100.0 + i / 30 for i in range(300)] + [100.0 + 15 + i / 30 for i in range(150)]
    timeline = Timeline()
    times = stamps(timeline, list(pts), walls)
    assert timeline.counters.restarts == 1
    assert times[300] == pytest.approx(15.0, abs=1e-6)
    assert times[449] == pytest.approx(15.0 + 149 / 30, abs=1e-6)


def test_forward_jump_keeps_the_gap_for_files_and_not_for_live_sources() -> None:
    files = Timeline(max_jump=None)  # a file's pts outrun the wall clock when decoded fast
    assert stamps(files, [0.0, 40.0, 3600.0], [0.0, 0.001, 0.002]) == [0.0, 40.0, 3600.0]
    live = Timeline(max_jump=10.0)
    assert stamps(live, [10.0, 10.5, 50000.0, 50000.5], [0.0, 0.5, 2.0, 2.5]) == pytest.approx(
        [0.0, 0.5, 2.0, 2.5]
    )
    assert live.counters.jumps == 1


def test_new_segment_and_missing_pts_continue_by_the_wall_clock() -> None:
    timeline = Timeline()
    for i in range(10):
        timeline.stamp(1000.0 + i * 0.1, 50.0 + i * 0.1)  # last frame: t = 0.9 at wall 50.9
    timeline.new_segment()
    # The camera came back 3 s later with its pts restarted at 0: stream time goes on from 0.9 + 3.
    assert timeline.stamp(0.0, 53.9) == pytest.approx(3.9)
    assert timeline.stamp(0.1, 54.0) == pytest.approx(4.0)
    timeline.new_segment()
    assert timeline.stamp(123456.0, 55.0) == pytest.approx(5.0)  # ... or at any value
    assert timeline.stamp(None, 55.5) == pytest.approx(5.5)  # no pts: the wall clock
    assert timeline.stamp(float("nan"), 55.5) == pytest.approx(5.5 + MIN_STEP_S)  # same instant: a step


def test_resume_continues_after_an_earlier_readers_newest_frame() -> None:
    """A restarted capture continues the ring's timeline instead of starting again at 0."""
    timeline = Timeline(resume=(42.0, 1000.0))
    assert timeline.stamp(0.0, 1002.5) == pytest.approx(44.5)
    assert timeline.stamp(0.04, 1002.54) == pytest.approx(44.54)


def test_end_is_the_last_frame_plus_its_duration() -> None:
    timeline = Timeline()
    assert timeline.end is None
    for i in range(208):  # 8.3 s at 25 fps: the last frame starts at 8.28 s and lasts 40 ms
        timeline.stamp(i / 25, 0.0)
    assert timeline.last == pytest.approx(8.28)
    assert timeline.end == pytest.approx(8.32)


def test_bad_settings_and_wall_times_are_named() -> None:
    with pytest.raises(ValueError, match="max_jump"):
        Timeline(max_jump=0)
    with pytest.raises(ValueError, match="wall-clock"):
        Timeline(name="cam").stamp(0.0, float("inf"))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.floats(-1e6, 1e6)), st.floats(0.0, 30.0), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_stream_time_is_strictly_increasing_whatever_the_source_does(
    steps: list[tuple[float | None, float, bool]],
) -> None:
    timeline = Timeline(max_jump=10.0)
    wall = 1_700_000_000.0
    kept: list[tuple[float, float | None, float, bool]] = []  # (t, pts, wall gap since last kept, reconnect)
    gap_since = 0.0
    reconnect_since = False
    for pts, gap, reconnect in steps:
        if reconnect:
            timeline.new_segment()
        reconnect_since = reconnect_since or reconnect
        wall += gap
        gap_since += gap
        t = timeline.stamp(pts, wall)
        if t is not None:
            kept.append((t, pts, gap_since, reconnect_since))
            gap_since, reconnect_since = 0.0, False
    assert kept and kept[0][0] == 0.0
    for (t0, pts0, _, _), (t1, pts1, gap, reconnect) in zip(kept, kept[1:], strict=False):
        step = t1 - t0
        assert step > 0  # strictly increasing, whatever the pts did
        assert (
            step <= max(gap, MIN_STEP_S) + 10.0 + 1e-6
        )  # never ahead of the wall clock by more than max_jump
        if pts0 is not None and pts1 is not None and not reconnect and 0 < pts1 - pts0 <= gap + 10.0:
            assert step == pytest.approx(pts1 - pts0, abs=1e-6)  # a sane pts step is kept exactly
        elif reconnect or pts1 is None or pts0 is None:
            assert step == pytest.approx(max(gap, MIN_STEP_S), abs=1e-6)  # continues by the wall clock
