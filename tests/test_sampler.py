"""Sampler: property tests over arbitrary timestamp streams (hypothesis) plus worked examples.

Raw pts go through the one clock (:class:`stream.timeline.Timeline`, as capture and the offline command
stamp them) and then the sampler: the timestamp rules hold end to end."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stream.captioning import CaptionSettings
from stream.errors import ConfigError
from stream.sampler import Job, SampledFrame, Sampler, uniform_subsample
from stream.timeline import Timeline

EPS = 1e-9


# -- helpers ----------------------------------------------------------------------------------------


@dataclass
class Run:
    sampler: Sampler
    timeline: Timeline
    offered: list[tuple[int, float, float]] = field(default_factory=list)
    samples: list[SampledFrame] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    max_window: int = 0


def feed(
    sampler: Sampler,
    pts: list[float],
    walls: list[float] | None = None,
    *,
    flush: bool = True,
    timeline: Timeline | None = None,
) -> Run:
    """Stamp every frame's pts with a file's timeline and offer the frames it keeps, collecting jobs."""
    run = Run(sampler, timeline or Timeline(max_jump=None, reorder=1.0 / sampler.fps))
    walls = walls if walls is not None else [1.7e9 + p for p in pts]
    for seq, (p, wall) in enumerate(zip(pts, walls, strict=True)):
        t = run.timeline.stamp(p, wall)
        if t is None:
            continue
        run.offered.append((seq, t, wall))
        sample, jobs = sampler.offer(seq, t, wall)
        if sample is not None:
            assert sample.seq == seq
            run.samples.append(sample)
        run.jobs.extend(jobs)
        run.max_window = max(run.max_window, len(sampler.window_frames))
    if flush:
        run.jobs.extend(sampler.flush())
    return run


def check_invariants(run: Run) -> None:
    s = run.sampler
    b = 1.0 / s.fps
    # At most one sample per bucket; every sample lies within half a bucket before its grid time and
    # before the next grid time; stream times strictly increase (also across restarts).
    buckets = [x.bucket for x in run.samples]
    assert buckets == sorted(set(buckets))
    times = [x.t for x in run.samples]
    assert all(a < c for a, c in zip(times, times[1:], strict=False))
    for x in run.samples:
        assert x.bucket * b - b / 2 - EPS * max(1, x.t) <= x.t < (x.bucket + 1) * b + EPS * max(1, x.t)
    seqs = [x.seq for x in run.samples]
    assert len(seqs) == len(set(seqs))
    by_seq = {x.seq: x for x in run.samples}
    # Jobs: successive t_end strictly increasing, frames ascending, inside the window, capped, real.
    ends = [j.t_end for j in run.jobs]
    assert all(a < c for a, c in zip(ends, ends[1:], strict=False))
    indexes = [j.index for j in run.jobs]
    assert all(a < c for a, c in zip(indexes, indexes[1:], strict=False))
    for job in run.jobs:
        assert job.stream == s.stream
        assert job.frames, "an empty window must be skipped, not emitted"
        assert len(job.frames) <= s.max_frames
        assert 0 <= job.t_start <= job.t_end
        ft = job.frame_times
        assert all(a < c for a, c in zip(ft, ft[1:], strict=False))
        assert all(job.t_start <= t <= job.t_end for t in ft)
        assert job.t_end - job.t_start <= s.window + EPS * max(1, job.t_end)
        assert all(by_seq[f.seq] == f for f in job.frames)
        # Reference model: the job holds exactly the card's subsample of every sample in its window,
        # (index * stride - window, t_end], or [0, t_end] when that reaches back before the start.
        lower = job.index * s.stride - s.window
        inside = [x for x in run.samples if (x.t > lower or lower < 0) and x.t <= job.t_end]
        assert list(job.frames) == uniform_subsample(inside, s.max_frames)
        assert job.t_start == max(lower, 0.0)
    # Every stride point the stream reached whose window holds a sample got its job; the others were
    # skipped.
    grid_jobs = {j.index for j in run.jobs if j.t_end == j.index * s.stride}
    expected = set()
    for x in run.samples:
        for k in range(max(1, math.floor(x.t / s.stride)), math.ceil((x.t + s.window) / s.stride) + 1):
            lower = k * s.stride - s.window
            if k * s.stride <= s.now and (x.t > lower or lower < 0) and x.t <= k * s.stride:
                expected.add(k)
    assert grid_jobs == expected
    # Bounded memory, whatever the stream did.
    assert run.max_window <= s.window_capacity
    assert len(s.window_frames) <= s.window_capacity


def steady(n: int, dt: float, start: float = 0.0) -> list[float]:
    return [start + i * dt for i in range(n)]


# -- strategies -------------------------------------------------------------------------------------


@st.composite
def timestamp_streams(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """pts and wall times: steady runs with jitter, forward jumps, repeats, small and large steps back."""
    pts: list[float] = [draw(st.floats(-1e4, 1e4))]
    walls: list[float] = [1.7e9]
    segments = draw(
        st.lists(st.sampled_from(["run", "run", "run", "jump", "repeat", "back"]), min_size=1, max_size=8)
    )
    for kind in segments:
        if kind == "run":
            dt = draw(st.sampled_from([1 / 60, 1 / 30, 0.1, 0.25, 0.5, 1.0, 1.5, 3.0]))
            jitter = draw(st.sampled_from([0.0, 0.1, 0.45]))
            for _ in range(draw(st.integers(1, 120))):
                step = dt * (1 + jitter * draw(st.floats(-1, 1)))
                pts.append(pts[-1] + step)
                walls.append(walls[-1] + step)
        elif kind == "jump":
            gap = draw(st.floats(2.0, 5000.0))
            pts.append(pts[-1] + gap)
            walls.append(walls[-1] + draw(st.sampled_from([0.001, gap])))
        elif kind == "repeat":
            for _ in range(draw(st.integers(1, 5))):
                pts.append(pts[-1])
                walls.append(walls[-1] + 0.03)
        else:
            pts.append(pts[-1] - draw(st.floats(0.001, 1000.0)))
            walls.append(walls[-1] + draw(st.sampled_from([0.0, 0.03, 12.0])))
    return pts, walls


sampler_params = st.fixed_dictionaries(
    {
        "fps": st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0]),
        "window": st.sampled_from([1.0, 4.0, 16.0, 30.0, 64.0]),
        "stride": st.sampled_from([0.5, 1.0, 4.0, 8.0, 20.0]),
        "max_frames": st.integers(1, 80),
    }
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- properties -------------------------------------------------------------------------------------


@PROPERTY
@given(stream=timestamp_streams(), params=sampler_params)
def test_invariants_hold_for_any_timestamps(stream: tuple[list[float], list[float]], params: dict) -> None:
    pts, walls = stream
    run = feed(Sampler(**params, stream="cam0"), pts, walls)
    check_invariants(run)


@PROPERTY
@given(
    stream=timestamp_streams(),
    fps=st.sampled_from([0.5, 1.0, 2.0]),
    window=st.sampled_from([6.0, 16.0]),
    stride=st.sampled_from([1.0, 4.0]),
)
def test_every_sample_reaches_a_job_when_nothing_is_capped(
    stream: tuple[list[float], list[float]], fps: float, window: float, stride: float
) -> None:
    """With stride < window, no cap and the caller keeping up, no sample is lost (flush takes the tail)."""
    pts, walls = stream
    sampler = Sampler(fps=fps, window=window, stride=stride, max_frames=1000)
    run = feed(sampler, pts, walls)
    check_invariants(run)
    in_jobs = {f.seq for job in run.jobs for f in job.frames}
    assert {x.seq for x in run.samples} <= in_jobs


@PROPERTY
@given(
    dt=st.floats(0.005, 0.99),
    fps=st.sampled_from([0.5, 1.0, 2.0]),
    n=st.integers(2, 400),
    start=st.floats(-100, 1e5),
)
def test_steady_stream_sample_is_the_frame_nearest_each_grid_time(
    dt: float, fps: float, n: int, start: float
) -> None:
    b = 1 / fps
    assume(dt < b)
    pts = steady(n, dt, start)
    run = feed(Sampler(fps=fps), pts, flush=False)
    check_invariants(run)
    times = [p - pts[0] for p in pts]
    # No bucket without a sample: frames come more often than buckets.
    assert [x.bucket for x in run.samples] == list(range(len(run.samples)))
    for x in run.samples:
        grid = x.bucket * b
        best = min(abs(t - grid) for t in times)
        assert abs(x.t - grid) <= best + 1e-6
    # Every grid time the stream reached (by half a frame) has its sample.
    assert (
        len(run.samples) == math.floor((times[-1] + dt / 2) * fps + 1e-9) + 1
        or len(run.samples) == math.floor((times[-1] + dt / 2) * fps - 1e-9) + 1
    )


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 500), cap=st.integers(1, 100))
def test_uniform_subsample_picks_the_model_cards_indices_in_order(n: int, cap: int) -> None:
    def card_uniform_sample(items: list, count: int) -> list:
        # The model card's video example, verbatim in substance: gap = len / n, int(i * gap + gap / 2).
        gap = len(items) / count
        return [items[int(i * gap + gap / 2)] for i in range(count)]

    items = list(range(n))
    picked = uniform_subsample(items, cap)
    if n <= cap:
        assert picked == items
        return
    assert picked == card_uniform_sample(items, cap)
    assert len(picked) == cap
    assert picked == sorted(set(picked))  # order kept, no duplicates
    gap = n / cap
    for i, index in enumerate(picked):  # one pick per equal segment, near its midpoint
        assert math.floor(i * gap) <= index < (i + 1) * gap


# -- examples ---------------------------------------------------------------------------------------


def test_uniform_subsample_examples() -> None:
    assert uniform_subsample(list("abcdefghij"), 4) == ["b", "d", "g", "i"]  # gap 2.5: 1, 3, 6, 8
    assert uniform_subsample(list(range(64)), 32) == list(range(1, 64, 2))
    assert uniform_subsample(list(range(5)), 1) == [2]
    assert uniform_subsample((1, 2), 5) == [1, 2]
    # The card's float arithmetic, kept exactly: for i = 7 and 10, i * (16/12) + (16/12)/2 comes out
    # as 9.999... and 13.999..., so indices 9 and 13 where the exact midpoints are 10 and 14.
    assert uniform_subsample(list(range(16)), 12) == [0, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 15]
    with pytest.raises(ValueError, match="cap"):
        uniform_subsample([1, 2, 3], 0)


def test_30fps_for_20s_gives_20_samples_one_second_apart() -> None:
    run = feed(Sampler(fps=1.0), [i / 30 for i in range(30 * 20)], flush=False)
    assert [x.t for x in run.samples] == [float(k) for k in range(20)]
    assert [x.seq for x in run.samples] == list(range(0, 600, 30))
    assert run.sampler.counters.sampled == 20 and run.sampler.counters.offered == 600


def test_pts_offset_is_removed_and_wall_passes_through() -> None:
    pts = [5000.0 + i / 24 for i in range(100)]
    walls = [1.7e9 + 3 + i / 24 for i in range(100)]
    run = feed(Sampler(fps=2.0), pts, walls, flush=False)
    assert [x.t for x in run.samples] == pytest.approx([k / 2 for k in range(9)], abs=1e-9)
    assert [x.seq for x in run.samples] == list(range(0, 97, 12))
    assert [x.wall for x in run.samples] == [walls[x.seq] for x in run.samples]


def test_jobs_every_stride_with_the_window_frames() -> None:
    sampler = Sampler(fps=1.0, window=16.0, stride=4.0, stream="cam0")
    run = feed(sampler, [i / 30 for i in range(30 * 20)], flush=False)
    assert [(j.index, j.t_start, j.t_end) for j in run.jobs] == [
        (1, 0.0, 4.0),
        (2, 0.0, 8.0),
        (3, 0.0, 12.0),
        (4, 0.0, 16.0),
    ]
    assert run.jobs[0].frame_times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert run.jobs[3].frame_times == [float(t) for t in range(1, 17)]  # (0, 16]: 16 frames
    assert all(j.stream == "cam0" for j in run.jobs)
    # The stream ended at 19.97 s: the flushed job is the next window, cut short there.
    last = sampler.flush()
    assert len(last) == 1 and last[0].index == 5
    assert last[0].t_end == pytest.approx(599 / 30)
    assert last[0].frame_times == [float(t) for t in range(5, 20)]
    assert sampler.flush() == []


def test_a_job_is_due_only_once_its_end_time_is_reached() -> None:
    sampler = Sampler(fps=1.0, window=8.0, stride=4.0)
    for i in range(4):
        assert sampler.offer(i, float(i), 0.0)[1] == []
    _, (job,) = sampler.offer(4, 4.0, 0.0)  # the frame at t_end is in the job it completes
    assert job.t_end == 4.0 and job.frame_times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sampler.offer(5, 5.0, 0.0)[1] == []


def test_64s_window_at_1fps_capped_at_32_gives_32_evenly_spread_frames() -> None:
    sampler = Sampler(fps=1.0, window=64.0, stride=64.0, max_frames=32)
    run = feed(sampler, [float(t) for t in range(65)], flush=False)
    (job,) = run.jobs
    assert (job.t_start, job.t_end) == (0.0, 64.0)
    assert len(job.frames) == 32
    # 64 candidates (1..64 s); the card's picks 1, 3, ..., 63 are the frames at 2, 4, ..., 64 s.
    assert job.frame_times == [float(t) for t in range(2, 65, 2)]


def test_jittery_1fps_camera_keeps_every_frame() -> None:
    """A frame a little early for its bucket is still the one nearest the bucket's start."""
    offsets = [0.0, -0.08, 0.06, -0.12, 0.02, -0.03, 0.11, -0.09, 0.0, -0.15]
    pts = [k + o for k, o in enumerate(offsets)]
    run = feed(Sampler(fps=1.0), pts, flush=False)
    assert [x.seq for x in run.samples] == list(range(10))
    assert [x.bucket for x in run.samples] == list(range(10))


def test_source_slower_than_fps_leaves_empty_buckets_and_never_repeats() -> None:
    run = feed(Sampler(fps=1.0), [0.0, 2.0, 4.0, 6.0], flush=False)
    assert [x.bucket for x in run.samples] == [0, 2, 4, 6]
    assert [x.seq for x in run.samples] == [0, 1, 2, 3]


def test_repeated_pts_are_ignored() -> None:
    run = feed(Sampler(fps=1.0), [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 2.0], flush=False)
    assert [x.seq for x in run.samples] == [0, 3, 6]
    assert run.timeline.counters.repeats == 3


def test_small_step_back_is_reordering_and_ignored() -> None:
    run = feed(Sampler(fps=1.0), [0.0, 0.5, 1.0, 0.9, 1.5, 2.0], flush=False)
    assert [x.t for x in run.samples] == [0.0, 1.0, 2.0]
    assert run.timeline.counters.reordered == 1 and run.timeline.counters.restarts == 0


def test_camera_restart_reanchors_after_the_outage() -> None:
    """pts restart at 0 after 10 s of stream and a 5-s outage: time continues at 15 s, no duplicates."""
    pts = steady(300, 1 / 30) + steady(150, 1 / 30)
    walls = [100.0 + i / 30 for i in range(300)] + [100.0 + 10 + 5 + i / 30 for i in range(150)]
    sampler = Sampler(fps=1.0, window=8.0, stride=4.0)
    run = feed(sampler, pts, walls, flush=False)
    check_invariants(run)
    assert run.timeline.counters.restarts == 1
    times = [x.t for x in run.samples]
    assert times[:10] == [float(k) for k in range(10)]
    assert times[10:] == pytest.approx([15.0 + k for k in range(5)], abs=0.04)
    assert [j.t_end for j in run.jobs] == [4.0, 8.0, 12.0, 16.0]
    assert run.jobs[-1].frame_times == pytest.approx([9.0, 15.0, 16.0], abs=0.04)


def test_forward_jump_emits_a_bounded_number_of_jobs() -> None:
    """An hour-long gap: the windows that still hold frames from before it, then the new frames'."""
    pts = steady(20, 1.0) + steady(10, 1.0, start=3600.0)
    sampler = Sampler(fps=1.0, window=16.0, stride=4.0)
    run = feed(sampler, pts, flush=False)
    check_invariants(run)
    ends = [j.t_end for j in run.jobs]
    before = [e for e in ends if e < 3600]
    assert before == [4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0]  # trailing windows of the old frames
    assert [e for e in ends if e >= 3600] == [3600.0, 3604.0, 3608.0]
    assert sampler.counters.empty_windows == 3600 / 4 - 9
    assert len(run.jobs) <= 19 / 4 + 16 / 4 + 10 / 4 + 2


def test_memory_stays_bounded_over_a_long_run() -> None:
    sampler = Sampler(fps=1.0, window=16.0, stride=4.0)
    jobs = 0
    for i in range(30 * 1800):  # 30 minutes at 30 fps
        jobs += len(sampler.offer(i, i / 30, 0.0)[1])
        assert len(sampler.window_frames) <= sampler.window_capacity
    assert sampler.counters.sampled == 1800 and jobs == 1800 // 4 - 1


def test_a_time_not_after_the_previous_is_stale_and_ignored() -> None:
    """Stream time is stamped strictly increasing; a frame that breaks that is not sampled twice."""
    sampler = Sampler(fps=1.0)
    assert sampler.offer(0, 0.0, 0.0)[0] is not None
    assert sampler.offer(1, 0.0, 0.0) == (None, [])
    assert sampler.offer(2, -5.0, 0.0) == (None, [])
    assert sampler.offer(3, 1.0, 0.0)[0] is not None
    assert sampler.counters.stale == 2


def test_flush_ends_the_last_window_where_the_stream_ends() -> None:
    """A file's last window reaches where its last frame ends, with or without samples after it."""
    tail = Sampler(fps=1.0, window=16.0, stride=8.0, hold_last=True)  # 9.9 s: a sample at 9 s follows
    run = feed(tail, [i / 10 for i in range(99)], flush=False)
    assert [j.t_end for j in run.jobs] == [8.0]
    (last,) = tail.flush(run.timeline.end)
    assert (last.t_start, last.t_end) == (0.0, pytest.approx(9.9))
    assert last.frame_times == [1.0 + k for k in range(9)]
    # 8.3 s at 25 fps: no sample after 8 s (the next would be at 8.5 s), so the job at 8 s is held
    # back and stretched to where the last frame (8.28 s, 40 ms long) ends.
    short = Sampler(fps=1.0, window=16.0, stride=8.0, hold_last=True)
    run = feed(short, [i / 25 for i in range(208)], flush=False)
    assert run.jobs == []
    (last,) = short.flush(run.timeline.end)
    assert (last.index, last.t_start, last.t_end) == (1, 0.0, pytest.approx(8.32))
    assert last.frame_times == [float(k) for k in range(9)]
    assert short.flush(9.0) == []


@PROPERTY
@given(stream=timestamp_streams(), params=sampler_params)
def test_holding_the_last_job_changes_only_when_jobs_come_and_the_last_ones_end(
    stream: tuple[list[float], list[float]], params: dict
) -> None:
    pts, walls = stream
    plain = feed(Sampler(**params), pts, walls, flush=False)
    held = feed(Sampler(**params, hold_last=True), pts, walls, flush=False)
    assert held.jobs == plain.jobs[: len(held.jobs)] and len(plain.jobs) - len(held.jobs) <= 1
    end = plain.timeline.end
    plain_all = plain.jobs + plain.sampler.flush(end)
    held_all = held.jobs + held.sampler.flush(end)
    assert [(j.index, j.t_start, j.frames) for j in held_all] == [
        (j.index, j.t_start, j.frames) for j in plain_all
    ]
    assert [j.t_end for j in held_all[:-1]] == [j.t_end for j in plain_all[:-1]]
    if held_all:  # the last one ends where it did, or (no sample after it) where the stream ends
        last, plain_last = held_all[-1].t_end, plain_all[-1].t_end
        sample_after = any(x.t > plain_last for x in plain.samples)
        assert last == (plain_last if sample_after else pytest.approx(max(end or 0.0, plain_last)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": 0}, "captions.fps: 0 is out of range [0.01, 30]"),
        ({"fps": float("nan")}, "captions.fps: nan is out of range [0.01, 30]"),
        ({"window": -1}, "captions.window: -1 is out of range [0.1, 3600]"),
        ({"stride": 0}, "captions.stride: 0 is out of range [0.1, 3600]"),
        ({"max_frames": 0}, "captions.max_frames: 0 is out of range [1, 64]"),
        ({"decoding": "fast"}, "captions.decoding: 'fast' is not one of greedy, sampling, beam"),
    ],
)
def test_bad_sampling_settings_are_refused_by_the_one_validator_naming_the_setting(
    kwargs: dict, message: str
) -> None:
    """The sampler takes a stream's CaptionSettings, checked when made with the config keys' limits."""
    with pytest.raises(ConfigError) as info:
        CaptionSettings(prompt="Describe.", **kwargs)
    assert str(info.value) == message


def test_non_finite_pts_is_an_error_naming_the_frame() -> None:
    sampler = Sampler()
    with pytest.raises(ValueError, match="frame 7"):
        sampler.offer(7, float("nan"), 0.0)


def test_a_late_reader_keeps_the_callers_timeline() -> None:
    """Capture stamps stream time: an inference process that attaches 16.5 s into the stream must
    caption t = 16.5..., not restart the clock at 0."""
    late = Sampler(fps=1.0, window=16.0, stride=4.0)
    jobs: list[Job] = []
    for i in range(495, 700):  # 30 fps from t = 16.5 s
        jobs += late.offer(i, i / 30, 1000 + i / 30)[1]
    assert jobs[0].frame_times[0] == 16.5
    assert all(16.5 <= t <= 700 / 30 for job in jobs for t in job.frame_times)
