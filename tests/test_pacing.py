"""stream/pacing.py: the pacing rule, driven with made-up clocks (no sleeping), and the one thin
sleeping call. Files paced end to end are in test_decoders.py."""

from __future__ import annotations

import time

import pytest

from stream.pacing import MAX_PACING_GAP_S, MAX_PACING_LAG_S, RealTimePacer

T0 = 1000.0  # any monotonic reading


def test_frames_are_due_at_their_pts_from_the_first_one() -> None:
    pacer = RealTimePacer()
    assert pacer.delay(5.0, T0) == 0.0  # the first frame anchors the timeline: pts 5.0 is now
    assert pacer.delay(5.5, T0 + 0.1) == pytest.approx(0.4)
    assert pacer.delay(6.0, T0 + 1.0) == 0.0  # already due
    assert pacer.delay(7.0, T0 + 1.0) == pytest.approx(1.0)


def test_a_little_late_catches_up_without_re_anchoring() -> None:
    pacer = RealTimePacer()
    pacer.delay(0.0, T0)
    late = MAX_PACING_LAG_S / 2
    assert pacer.delay(1.0, T0 + 1.0 + late) == 0.0
    # The anchor stayed: pts 2.0 is still due at T0 + 2.0, so the decoder catches up.
    assert pacer.delay(2.0, T0 + 1.0 + late) == pytest.approx(1.0 - late)


def test_far_behind_resumes_from_where_it_is_instead_of_bursting() -> None:
    pacer = RealTimePacer()
    pacer.delay(0.0, T0)
    behind = MAX_PACING_LAG_S + 1.0
    assert pacer.delay(1.0, T0 + 1.0 + behind) == 0.0
    # Re-anchored at (T0 + 1 + behind, pts 1.0): the next frame waits its own frame time again.
    assert pacer.delay(1.5, T0 + 1.0 + behind) == pytest.approx(0.5)


def test_a_forward_jump_beyond_the_gap_limit_is_played_on_at_once() -> None:
    pacer = RealTimePacer()
    pacer.delay(0.0, T0)
    jump = MAX_PACING_GAP_S + 3600.0
    assert pacer.delay(jump, T0 + 0.04) == 0.0  # not an hour at 0 fps
    assert pacer.delay(jump + 0.5, T0 + 0.04) == pytest.approx(0.5)  # paced from the jump on


def test_a_gap_within_the_limit_is_waited_out() -> None:
    pacer = RealTimePacer()
    pacer.delay(0.0, T0)
    assert pacer.delay(MAX_PACING_GAP_S, T0 + 0.04) == pytest.approx(MAX_PACING_GAP_S - 0.04)


def test_wait_sleeps_until_due_and_stamps_the_release_time() -> None:
    pacer = RealTimePacer()
    assert pacer.wait(0.0, wall=123.0) == 123.0  # due at once: its decode time stands
    before = time.time()
    released = pacer.wait(0.2, wall=123.0)
    assert released >= before + 0.15  # held back, and stamped when it was let go
