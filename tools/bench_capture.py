#!/usr/bin/env python3
"""Benchmark capture (decode + RGB conversion + ring write) against bare PyAV decoding to RGB arrays.

    python tools/bench_capture.py                    # 720p and 1080p H.264 made from the test photos
    python tools/bench_capture.py --seconds 4 --rounds 2
    python tools/bench_capture.py --input some_real_clip.mp4
    python tools/bench_capture.py --decode  # decode = "all" vs "sampled": CPU per stream-minute
    python tools/bench_capture.py --fidelity-minutes 10  # same frames under "sampled" as under "all"?
    python tools/bench_capture.py --breakdown  # where a "sampled" camera's CPU goes at a 1-s GOP
    python tools/bench_capture.py --cameras 4,8,16,24 --camera-seconds 30  # cameras per box
    python tools/bench_capture.py --cameras 8,40 --rtsp  # the same over RTSP from GStreamer's server

For each clip, in the same run and interleaved round by round (so both see the same machine load):

* **bare**: ``av.open`` + ``thread_type="AUTO"`` + ``frame.to_ndarray(format="rgb24")`` for every
  frame, nothing else: the physical floor of our path on this machine;
* **capture**: :class:`stream.capture.Capture` from the file (``realtime=False``, ``max_side=0`` so the
  frames are not resized and both sides do the same work) into a real shared-memory
  :class:`stream.ring.FrameRing` (live mode), including its reader thread, watchdog, stream clock and
  status: what the capture process does;
* **capture, copying**: the same, but each frame converted by PyAV into a new array and copied into
  the slot (``FrameRing.write``) instead of converted by PyAV's libswscale straight into the slot
  (``write_with`` + ``rgb.DirectRGB``): what the direct conversion saves;
* **capture, max_side 1344** (only where the clip is larger): the default downscale, for reference.

The figure that matters is the overhead of capture over bare decoding (target <= 10%), in frames/s
and in CPU time per frame over all threads (less sensitive to other processes taking the CPUs). Each
round runs bare then capture back to back; the overhead printed is the median over rounds of those
pairs, and the frames/s and CPU ms columns are the best of the rounds. The load average at the start
is printed, since the CPUs may be shared. Prints a table, then one JSON line.

Clips are made with tools/make_sample_video.py (pan/zoom over real photos, libx264 crf 23, key frame
every 2 s) and cached in ``--workdir``. Content upscaled from 600-px photos is smoother than camera
footage, so it decodes somewhat faster; ``--input`` measures real clips the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_sample_video  # noqa: E402
from bench_breakdown import breakdown_main  # noqa: E402
from bench_decode import FIDELITY_CLIPS, cameras_main, decode_main, fidelity_main  # noqa: E402
from machine_info import cpu_model  # noqa: E402

from stream.capture import Capture  # noqa: E402
from stream.ring import FrameRing, ring_name  # noqa: E402
from stream.sources import SourceOptions, SourceSpec  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def probe(path: Path) -> tuple[int, int, int, float]:
    """(width, height, frames, bitrate Mbit/s) of the clip's video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
        seconds = float(container.duration or 0) / av.time_base or 1.0
        return stream.width, stream.height, frames, path.stat().st_size * 8 / seconds / 1e6


def bare(path: Path) -> tuple[int, float, float]:
    """Frames, wall seconds and CPU seconds (all threads) for PyAV alone: decode with thread_type
    AUTO, convert each frame to an RGB array."""
    started, cpu = time.perf_counter(), time.process_time()
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            frames += 1
    return frames, time.perf_counter() - started, time.process_time() - cpu


class _CopyingWriter:
    """The ring without ``write_with``: capture then converts each frame into a new array and
    ``write`` copies it into the slot."""

    def __init__(self, ring: FrameRing) -> None:
        self._ring = ring
        self.lossless = ring.lossless

    def write(self, image: Any, pts: float, wall: float, *, timeout: float | None = None) -> int:
        return self._ring.write(image, pts, wall, timeout=timeout)

    def mark_ended(self, end: float | None = None) -> None:
        self._ring.mark_ended()


def capture(path: Path, max_side: int, copying: bool = False) -> tuple[int, float, float]:
    """Frames, wall and CPU seconds for Capture into a real ring, from construction to the end of run()."""
    width, height, _, _ = probe(path)
    side = max(width, height) if not max_side else min(max(width, height), max_side)
    ring = FrameRing.create(ring_name(uuid.uuid4().hex, "bench"), slots=8, max_height=side, max_width=side)
    try:
        statuses: list[dict[str, Any]] = []
        started, cpu = time.perf_counter(), time.process_time()
        writer: Any = _CopyingWriter(ring) if copying else ring
        if copying:
            os.environ["VIDNARRATE_NO_DIRECT_RGB"] = "1"  # and PyAV's own conversion
        try:
            cap = Capture(
                "bench",
                SourceSpec("file", str(path), str(path)),
                writer,
                options=SourceOptions(realtime=False, max_side=max_side),
                on_status=statuses.append,
            )
            cap.run(threading.Event())
        finally:
            os.environ.pop("VIDNARRATE_NO_DIRECT_RGB", None)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        if cap.error is not None:
            raise RuntimeError(f"capture of {path} failed: {cap.error}")
        return cap.stats.frames, took, cpu
    finally:
        ring.close()
        ring.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the generated clips")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of the generated clips")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each path per clip (best is kept)")
    parser.add_argument("--input", type=Path, action="append", default=[], help="also measure this clip")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "vidnarrate-bench",
        help="where generated clips are cached",
    )
    parser.add_argument(
        "--decode", action="store_true", help='decode = "all" vs "sampled": CPU-seconds per stream-minute'
    )
    parser.add_argument(
        "--breakdown", action="store_true", help='where a "sampled" camera\'s CPU goes at a 1-s GOP'
    )
    parser.add_argument(
        "--fidelity-minutes",
        type=float,
        default=0.0,
        help='sampled-frame fidelity: "all" vs "sampled" over this many minutes of stream per clip',
    )
    parser.add_argument(
        "--fidelity-clips",
        default=",".join(FIDELITY_CLIPS),
        help="built-in clips for --fidelity-minutes (comma-separated; empty: only --input)",
    )
    parser.add_argument("--cameras", default="", help="cameras per box: comma-separated counts to try")
    parser.add_argument("--camera-seconds", type=float, default=30.0, help="how long each count runs")
    parser.add_argument(
        "--capture-nice", type=int, default=0, help="[capture] nice of the cameras (0-19; default 0)"
    )
    parser.add_argument("--modes", default="all,sampled", help="decode modes for --cameras")
    parser.add_argument(
        "--rtsp", action="store_true", help="--cameras over RTSP from a real GStreamer server, not files"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.decode:
        return decode_main(args.workdir, rounds=args.rounds)
    if args.fidelity_minutes:
        names = [name for name in args.fidelity_clips.split(",") if name]
        return fidelity_main(args.workdir, args.fidelity_minutes, args.input, names)
    if args.breakdown:
        return breakdown_main(args.workdir, rounds=args.rounds)
    if args.cameras:
        counts = [int(n) for n in args.cameras.split(",")]
        return cameras_main(
            args.workdir, counts, args.camera_seconds, args.modes.split(","), args.rtsp, args.capture_nice
        )

    clips: list[tuple[str, Path]] = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in SIZES.items():
        path = args.workdir / f"sample_{label}_{args.fps:g}fps_{args.seconds:g}s.mp4"
        if not path.exists():
            print(f"making {path} ...", file=sys.stderr, flush=True)
            make_sample_video.make_video(path, width=width, height=height, fps=args.fps, seconds=args.seconds)
        clips.append((label, path))
    clips += [(path.name, path) for path in args.input]

    load_before = os.getloadavg()[0]
    print(
        f"capture vs bare PyAV decoding to RGB; {cpu_model()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, PyAV {av.__version__}; load average {load_before:.1f} "
        f"before; {args.rounds} rounds (overheads: median of per-round pairs)"
    )
    header = (
        "clip",
        "size",
        "frames",
        "Mbit/s",
        "bare fps",
        "capture fps",
        "overhead",
        "bare cpu ms",
        "capture cpu ms",
        "cpu overhead",
        "copying fps",
        "capture@1344 fps",
    )
    print("{:8} {:>9} {:>6} {:>6} {:>8} {:>11} {:>8} {:>11} {:>14} {:>12} {:>11} {:>16}".format(*header))
    figures: dict[str, Any] = {}
    worst = -1.0
    for label, path in clips:
        width, height, _, mbits = probe(path)
        downscale = max(width, height) > 1344
        fps = {"bare": 0.0, "capture": 0.0, "copying": 0.0, "capture_1344": 0.0}
        cpu = {key: float("inf") for key in fps}
        count = 0
        paired: list[float] = []  # per round: capture's fps against the bare run right before it
        paired_cpu: list[float] = []
        for _ in range(args.rounds):
            runs: list[tuple[str, Callable[[], tuple[int, float, float]]]] = [
                ("bare", partial(bare, path)),
                ("capture", partial(capture, path, 0)),
                ("copying", partial(capture, path, 0, True)),
            ]
            if downscale:
                runs.append(("capture_1344", partial(capture, path, 1344)))
            this_round: dict[str, tuple[float, float]] = {}
            for key, run in runs:
                frames, seconds, cpu_seconds = run()
                count = frames if key == "bare" else count
                if frames != count:
                    raise RuntimeError(f"{key} got {frames} frames of {path}, bare decoding got {count}")
                this_round[key] = (frames / seconds, cpu_seconds / frames * 1e3)
                fps[key] = max(fps[key], frames / seconds)
                cpu[key] = min(cpu[key], cpu_seconds / frames * 1e3)
            paired.append(1.0 - this_round["capture"][0] / this_round["bare"][0])
            paired_cpu.append(this_round["capture"][1] / this_round["bare"][1] - 1.0)
        overhead = statistics.median(paired)
        cpu_overhead = statistics.median(paired_cpu)
        worst = max(worst, overhead)
        scaled = f"{fps['capture_1344']:.1f}" if downscale else "-"
        print(
            f"{label:8} {width:>4}x{height:<4} {count:>6} {mbits:>6.1f} {fps['bare']:>8.1f} "
            f"{fps['capture']:>11.1f} {overhead:>8.1%} {cpu['bare']:>11.2f} {cpu['capture']:>14.2f} "
            f"{cpu_overhead:>12.1%} {fps['copying']:>11.1f} {scaled:>16}"
        )
        key = label if label in SIZES else label.replace(".", "_")
        figures[f"bare_{key}_fps"] = round(fps["bare"], 1)
        figures[f"capture_{key}_fps"] = round(fps["capture"], 1)
        figures[f"overhead_{key}"] = round(overhead, 4)
        figures[f"cpu_ms_per_frame_bare_{key}"] = round(cpu["bare"], 3)
        figures[f"cpu_ms_per_frame_capture_{key}"] = round(cpu["capture"], 3)
        figures[f"cpu_overhead_{key}"] = round(cpu_overhead, 4)
        figures[f"capture_copying_{key}_fps"] = round(fps["copying"], 1)
        if downscale:
            figures[f"capture_{key}_max_side_1344_fps"] = round(fps["capture_1344"], 1)
    figures |= {
        "target_overhead": 0.10,
        "worst_overhead": round(worst, 4),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "pyav": av.__version__,
        "load_average_before": round(load_before, 2),
        "rounds": args.rounds,
        "clip_seconds": args.seconds,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
