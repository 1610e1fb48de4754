"""stream/decodeplan.py: the per-packet rules on their own, then real clips through a real Capture:
the frames written under decode = "sampled" are the frames the sampler's rule keeps of every frame
(same pts), their pixels are theirs (each clip has its frame index burnt in), and skip_frame really
spares decoding (frames counted as they leave the decoder)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from realparts import load_tool

from stream.capture import Capture
from stream.decodeplan import DecodePlan, Demand, Skip
from stream.sampler import SampleGrid, Sampler
from stream.sources import SourceOptions, SourceSpec, VideoSource, open_source, parse_source

msv = load_tool("make_sample_video")


# -- the rules -------------------------------------------------------------------------------------
def test_a_gop_at_or_below_the_period_decodes_only_the_keyframes_it_can_keep() -> None:
    demand = Demand(1.0)
    plan = DecodePlan(demand, frame_step=0.04)
    assert plan.packet(0.0, True) is Skip.NONE  # nothing known yet: everything is decoded
    assert demand.want(0.0, 0.0)
    assert plan.packet(0.04, False) is Skip.NONREF  # the GOP is not measured yet
    assert plan.packet(0.5, True) is Skip.ALL  # a 0.5-s GOP: keyframes only, and not this one
    assert plan.gop == 0.5 and plan.keyframes_only
    assert plan.packet(0.54, False) is Skip.NONKEY
    assert plan.packet(1.0, True) is Skip.NONE  # the one that stands for t = 1
    assert demand.want(1.0, 1.0)
    assert plan.packet(1.5, True) is Skip.ALL  # not needed: not even a keyframe is decoded
    assert plan.packet(2.0, True) is Skip.NONE


def test_a_long_gop_skips_non_references_then_to_the_keyframe_that_will_be_chosen() -> None:
    demand = Demand(1.0)
    plan = DecodePlan(demand, frame_step=0.04)
    for pts, key in [(0.0, True), (2.0, True)]:  # a 2-s GOP, measured
        plan.packet(pts, key)
    assert demand.want(2.0, 2.0)  # t = 2 is kept; next needed: 3
    assert plan.packet(2.04, False) is Skip.NONREF
    assert plan.packet(2.96, False) is Skip.NONE  # near 3: everything, as decoding all would see it
    assert demand.want(3.0, 3.0)
    assert plan.packet(3.04, False) is Skip.NONKEY  # the keyframe at 4 will be chosen for 4: skip to it
    assert plan.packet(3.5, False) is Skip.NONKEY
    assert plan.packet(4.0, True) is Skip.NONE
    # B-frames decoded after it but shown before it reference skipped frames: never used
    assert plan.packet(3.92, False) is Skip.NONE
    assert not plan.usable(3.92) and plan.usable(4.0)


def test_the_gap_the_rule_sees_is_the_true_one_where_decoding_ran_through() -> None:
    demand = Demand(1.0)
    plan = DecodePlan(demand, frame_step=0.04)
    for pts in (0.0, 0.12, 0.04, 0.08):  # I P B B, decode order
        plan.packet(pts, pts == 0.0)
    assert plan.gap(0.12) == pytest.approx(0.04)  # the B at 0.08 counts, decoded or not


def test_a_presampled_sampler_keeps_every_frame_capture_chose() -> None:
    """On an irregular stream the sampler, seeing only the frames capture wrote, may put one in the
    next bucket: told they are presampled, it keeps them all (the choice is capture's)."""
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.choice([0.3, 1.3, 0.1, 2.5, 0.7], size=400)).tolist()
    grid = SampleGrid(1 / 3)
    chosen = [t for t in times if grid.offer(t) is not None]
    plain, presampled = Sampler(fps=1 / 3, window=1e6, stride=1e6), Sampler(fps=1 / 3, presampled=True)
    assert len([t for i, t in enumerate(chosen) if plain.offer(i, t, 0.0)[0]]) < len(chosen)
    assert all(presampled.offer(i, t, 0.0)[0] is not None for i, t in enumerate(chosen))


# -- real clips through a real Capture -------------------------------------------------------------
def make(path: Path, *, gop: int, fps: float = 25.0, seconds: float = 20.0, **kwargs: Any) -> Path:
    """A 320x180 clip of the photos with the frame index burnt in, a keyframe every ``gop`` frames."""
    if not path.exists():
        msv.make_video(path, width=320, height=180, fps=fps, seconds=seconds, gop=gop, **kwargs)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decodeplan-clips")


class Collect:
    """A ring stand-in that keeps what capture writes: (pts, the frame index burnt into it); with
    ``stop``, sets it once ``limit`` frames came."""

    lossless = False

    def __init__(self, stop: threading.Event | None = None, limit: int = 0) -> None:
        self.frames: list[tuple[float, int]] = []
        self.stop, self.limit = stop, limit

    def write(self, image: np.ndarray, pts: float, wall: float, *, timeout: float | None = None) -> int:
        self.frames.append((pts, msv.read_stamp(image)))
        if self.stop is not None and len(self.frames) >= self.limit:
            self.stop.set()
        return len(self.frames) - 1

    def mark_ended(self, end: float | None = None) -> None:
        pass


def run(path: Path, decode: str, fps: float = 1.0) -> tuple[list[tuple[float, int]], int]:
    """What capture writes of the clip, and how many frames left the decoder."""
    sources: list[VideoSource] = []

    def opener(spec: SourceSpec, options: SourceOptions) -> VideoSource:
        sources.append(open_source(spec, options))
        return sources[-1]

    ring = Collect()
    options = SourceOptions(realtime=False, max_side=0, decode=decode, sample_fps=fps)
    cap = Capture("cam", parse_source(str(path)), ring, options=options, opener=opener)
    cap.run(threading.Event())
    assert cap.error is None
    return ring.frames, sum(getattr(s, "frames_decoded", 0) for s in sources)


def kept(frames: list[tuple[float, int]], fps: float = 1.0) -> list[tuple[float, int]]:
    grid = SampleGrid(fps)
    return [f for f in frames if grid.offer(f[0]) is not None]


@pytest.mark.parametrize("bframes", [0, 3])
def test_one_second_gop_same_frames_keyframes_only(clips: Path, bframes: int) -> None:
    clip = make(clips / f"gop1_b{bframes}.mp4", gop=25, x264_params=f"bframes={bframes}:scenecut=0")
    every, decoded_all = run(clip, "all")
    sampled, decoded = run(clip, "sampled")
    assert len(every) == decoded_all == 500
    assert sampled == kept(every)  # same pts, and the pixels of that very frame
    assert [stamp for _, stamp in sampled] == [25 * i for i in range(20)]
    assert decoded <= len(sampled) + 25  # keyframes, and the first GOP (before the GOP is known)


def test_ten_second_gop_same_frames_far_fewer_decoded(clips: Path) -> None:
    clip = make(clips / "gop10.mp4", gop=250, x264_params="bframes=3:scenecut=0")
    every, _ = run(clip, "all")
    sampled, decoded = run(clip, "sampled")
    assert sampled == kept(every)
    assert all(stamp == round(t * 25) for t, stamp in sampled)  # frame_times are the frames' own
    assert decoded < 0.8 * len(every)  # B-frames away from a needed frame, and each GOP's tail


def test_an_intra_only_stream_decodes_only_the_frames_it_keeps(clips: Path) -> None:
    clip = make(clips / "mjpeg.avi", gop=1, seconds=10.0, codec="mjpeg")
    every, _ = run(clip, "all")
    sampled, decoded = run(clip, "sampled", fps=2.0)
    assert sampled == kept(every, fps=2.0)
    assert decoded <= len(sampled) + 3


def test_gop_shorter_than_the_period_moves_samples_to_keyframes_by_at_most_half_a_gop(clips: Path) -> None:
    clip = make(clips / "gop04.mp4", gop=10, x264_params="bframes=2:scenecut=0")  # 0.4-s GOP
    every, _ = run(clip, "all")
    sampled, decoded = run(clip, "sampled")
    reference = kept(every)
    assert len(sampled) == len(reference)
    assert all(stamp % 10 == 0 for _, stamp in sampled)  # keyframes, each with its own pixels and pts
    assert all(t == pytest.approx(stamp / 25) for t, stamp in sampled)
    assert max(abs(a[0] - b[0]) for a, b in zip(sampled, reference, strict=True)) <= 0.2 + 1e-6
    assert decoded <= len(sampled) + 8


def test_a_looped_file_keeps_skipping_across_the_seam(clips: Path) -> None:
    """A looped file's pts are shifted each time round: packets and frames by the same shift."""
    clip = make(clips / "loop.mp4", gop=25, seconds=3.0, x264_params="bframes=0:scenecut=0")
    stop = threading.Event()
    ring = Collect(stop, limit=9)
    options = SourceOptions(realtime=False, max_side=0, loop=True, sample_fps=1.0)
    Capture("cam", parse_source(str(clip)), ring, options=options).run(stop)
    assert [round(t, 3) for t, _ in ring.frames[:9]] == [float(i) for i in range(9)]
    assert [stamp for _, stamp in ring.frames[:9]] == [0, 25, 50] * 3


def test_plain_iteration_of_a_source_decodes_every_frame(clips: Path) -> None:
    """The offline command iterates sources itself: no demand, nothing skipped."""
    clip = make(clips / "gop1_b3.mp4", gop=25, x264_params="bframes=3:scenecut=0")
    with open_source(str(clip), SourceOptions(realtime=False, max_side=0)) as source:
        assert sum(1 for _ in source.pending()) == 500
    with av.open(str(clip)) as container:
        assert container.streams.video[0].frames == 500


@pytest.mark.parametrize(("gop", "bframes"), [(25, 3), (250, 0)])
def test_a_long_looped_stream_keeps_the_same_frames_at_every_seam(
    clips: Path, gop: int, bframes: int
) -> None:
    """The short form of ``tools/bench_capture.py --fidelity-minutes``: a clip looped to two minutes
    of stream (a seam every 12 s), captured under both modes; every second's frame is the same frame
    (pts and burnt-in index) under "sampled" as the rule keeps of every frame under "all"."""

    def looped(decode: str, seconds: float) -> list[tuple[float, int]]:
        """What capture writes until a frame at ``seconds`` of stream, less the last second (the
        two modes stop at different frames)."""
        stop = threading.Event()
        ring = Collect()
        write = ring.write

        def until(image: np.ndarray, pts: float, wall: float, *, timeout: float | None = None) -> int:
            if pts >= seconds:
                stop.set()
            return write(image, pts, wall, timeout=timeout)

        ring.write = until  # type: ignore[method-assign]
        options = SourceOptions(realtime=False, max_side=0, loop=True, decode=decode, sample_fps=1.0)
        Capture("cam", parse_source(str(clip)), ring, options=options).run(stop)
        return [f for f in ring.frames if f[0] < seconds - 1.0]

    clip = make(
        clips / f"loop_g{gop}_b{bframes}.mp4",
        gop=gop,
        seconds=12.0,
        x264_params=f"bframes={bframes}:scenecut=0",
    )
    reference = kept(looped("all", 120.0))
    sampled = looped("sampled", 120.0)
    assert len(reference) == 119
    assert sampled == reference


def test_a_looped_file_continues_from_its_own_end_when_its_first_frames_are_not_kept(clips: Path) -> None:
    """A 3.6-s clip looped under "sampled": later passes start between grid times, so their first
    written frame is not the file's first; the stream still goes on from the file's true end (each
    sample carries the pixels of the frame its time names), never overlapping or stopping."""
    clip = make(clips / "loop36.mp4", gop=10, seconds=3.6, x264_params="bframes=0:scenecut=0")
    stop = threading.Event()
    ring = Collect(stop, limit=30)
    options = SourceOptions(realtime=False, max_side=0, loop=True, sample_fps=1.0)
    Capture("cam", parse_source(str(clip)), ring, options=options).run(stop)
    times = [t for t, _ in ring.frames[:30]]
    assert times == sorted(times) and times[-1] > 28.0
    assert all(stamp == round(t * 25) % 90 for t, stamp in ring.frames[:30])
    assert all(abs(t - round(t)) <= 0.2 + 1e-6 for t in times)  # keyframes, half a GOP at most away
