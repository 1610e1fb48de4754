"""Where the CPU of a ``decode = "sampled"`` camera goes (run through bench_capture.py --breakdown).

    python tools/bench_capture.py --breakdown             # 1080p 25-fps H.264, 1-s GOP, 1-fps sampling

Each part of what a sampled camera does in a second of stream is measured alone on the same clip
(the 1080p 25-fps 1-s-GOP clip of ``--decode``, with B-frames), as CPU milliseconds (all threads) per
second of stream, best of the rounds:

* **demux**: reading the packets (``container.demux``), nothing else;
* **skipped packets**: handing the 24 non-keyframes a second to the decoder that skips them
  (``skip_frame = NONKEY``: FFmpeg parses and drops them), on top of demux;
* **keyframe decode**: decoding the one keyframe a second, single-threaded and with PyAV's
  ``thread_type = "AUTO"`` (frame threads, what capture uses);
* **keyframe decode without deblocking** (FFmpeg ``skip_loop_filter``): what the one lossy shortcut
  would save, with its picture difference (PSNR against the true decode, worst keyframe); not used;
* **RGB conversion**: the keyframe to RGB straight into a buffer (``DirectRGB``), then the default
  downscale to ``max_side`` 1344 (OpenCV), as capture does into its ring slot;
* **idle**: a capture whose source delivers nothing: its watchdog and status loop alone;
* **capture, sampled** and **capture, all**: the real :class:`~stream.capture.Capture` (reader
  thread, decode plan, sampling rule, ring writes, status) over the clip looped to a minute, as
  ``--decode`` measures it; the part of "sampled" the pieces above do not explain is the per-frame
  and per-packet Python work of capture, the decode plan and the thread hand-offs.

The floor: a camera at a 1-s GOP must decode and convert one keyframe a second, so "all" divided by
(keyframe decode + conversion) bounds the ratio any skipping can reach with this decoder. Prints a
table, then one JSON line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from bench_decode import capture_cost, gop1_clip
from machine_info import cpu_model

from stream.capture import Capture
from stream.rgb import DirectRGB, padded_rgb, scaled_size
from stream.sources import SourceOptions, SourceSpec, VideoSource


def _cpu(run: Callable[[Any], Any], arg: Any) -> float:
    started = time.process_time()
    run(arg)
    return time.process_time() - started


def _cpu_list(items: Iterator[Any]) -> tuple[float, list[Any]]:
    started = time.process_time()
    kept = list(items)
    return time.process_time() - started, kept


def _demux(path: Path) -> tuple[list[Any], float]:
    """The clip's packets and its length in seconds."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        packets = [p for p in container.demux(video) if p.size]
        seconds = float(container.duration or 0) / av.time_base
    return packets, seconds


def demux_only(path: Path) -> None:
    with av.open(str(path)) as container:
        for _ in container.demux(container.streams.video[0]):
            pass


def skipped_packets(path: Path) -> None:
    """Demux, and hand every non-keyframe to a decoder that skips it (keyframes not decoded)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        for packet in container.demux(video):
            if packet.size and not packet.is_keyframe:
                video.codec_context.skip_frame = "NONKEY"
                packet.decode()


def keyframes(path: Path, threads: str, lossy: bool = False) -> Iterator[Any]:
    """Decode the keyframes only (the other packets never reach the decoder); ``lossy``: without
    the deblocking filter (FFmpeg ``skip_loop_filter``), which changes the pictures."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        if threads == "AUTO":
            video.thread_type = "AUTO"
        else:
            video.thread_count = 1
        if lossy:
            video.codec_context.options = {"skip_loop_filter": "all"}
        for packet in container.demux(video):
            if packet.is_keyframe or not packet.size:
                yield from packet.decode()


def _psnr(a: Any, b: Any) -> float:
    """Worst-case picture difference of two decodes of one frame (Y, U and V planes together), dB."""
    x, y = a.to_ndarray(format="yuv420p").astype(np.float64), b.to_ndarray(format="yuv420p")
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def convert(frames: list[Any]) -> None:
    direct = DirectRGB("bench")
    width, height = scaled_size(frames[0].width, frames[0].height, 1344)
    out = padded_rgb(height, width)
    for frame in frames:
        image = direct.scratch(frame)
        if image is None:
            image = frame.to_ndarray(format="rgb24")
        cv2.resize(image, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)


class _Silent(VideoSource):
    """A source that opens and then delivers nothing until the capture stops (idle cost)."""

    def __init__(self, spec: SourceSpec, options: SourceOptions, stop: threading.Event) -> None:
        super().__init__(spec, options)
        self._stop = stop

    def pending(self) -> Iterator[Any]:
        self._stop.wait()
        return iter(())

    def close(self) -> None:
        pass


class _NullRing:
    lossless = False

    def write(self, image: np.ndarray, pts: float, wall: float, *, timeout: float | None = None) -> int:
        return 0

    def mark_ended(self, end: float | None = None) -> None:
        pass


def idle(seconds: float) -> float:
    """CPU seconds per second of a capture waiting on a source that delivers nothing."""
    stop = threading.Event()
    spec = SourceSpec("file", "idle", "idle")
    cap = Capture("idle", spec, _NullRing(), opener=lambda s, o: _Silent(s, o, stop))
    runner = threading.Thread(target=cap.run, args=(stop,))
    started = time.process_time()
    runner.start()
    time.sleep(seconds)  # the measured span itself: a capture left alone for this long
    stop.set()
    runner.join()
    return (time.process_time() - started) / seconds


def breakdown_main(workdir: Path, rounds: int = 3, stream_s: float = 60.0) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    path = gop1_clip(workdir)
    packets, seconds = _demux(path)
    load = os.getloadavg()[0]
    best: dict[str, float] = {}

    def keep(key: str, cpu_s: float, per: float) -> None:
        best[key] = min(best.get(key, float("inf")), cpu_s / per * 1e3)

    frames: list[Any] = []
    unfiltered: list[Any] = []
    for _ in range(rounds):
        keep("demux", _cpu(demux_only, path), seconds)
        keep("skipped_packets", _cpu(skipped_packets, path), seconds)
        for threads in ("1", "AUTO"):
            cpu, frames = _cpu_list(keyframes(path, threads))
            keep(f"keyframe_decode_threads_{threads}", cpu, seconds)
        keep("rgb_conversion", _cpu(convert, frames), seconds)
        cpu, unfiltered = _cpu_list(keyframes(path, "1", lossy=True))
        keep("keyframe_decode_no_deblocking", cpu, seconds)
        keep("idle", idle(5.0), 1.0)
        for decode in ("all", "sampled"):
            _, cpu = capture_cost(path, decode, stream_s)
            keep(f"capture_{decode}", cpu, stream_s)
    keyframe_s = len(frames) / seconds
    psnr = min(_psnr(a, b) for a, b in zip(frames, unfiltered, strict=True))
    floor = best["capture_all"] / (best["keyframe_decode_threads_1"] + best["rgb_conversion"])
    explained = best["skipped_packets"] + best["keyframe_decode_threads_AUTO"] + best["rgb_conversion"]
    print(
        f'where a "sampled" camera\'s CPU goes: 1080p 25-fps H.264, 1-s GOP, B-frames, 1-fps sampling; '
        f"{cpu_model()}, {os.cpu_count()} CPUs, PyAV {av.__version__}; load average {load:.1f} before; "
        f"best of {rounds} rounds; CPU ms (all threads) per second of stream"
    )
    rows = [
        ("demux (packet reading)", best["demux"]),
        ("skipped packets (demux + decoder skipping 24/s)", best["skipped_packets"]),
        ("keyframe decode, 1 thread", best["keyframe_decode_threads_1"]),
        ('keyframe decode, thread_type "AUTO"', best["keyframe_decode_threads_AUTO"]),
        ("RGB conversion + downscale to 1344", best["rgb_conversion"]),
        (
            f"keyframe decode without deblocking (lossy: PSNR {psnr:.1f} dB; not used)",
            best["keyframe_decode_no_deblocking"],
        ),
        ("idle capture (watchdog, status)", best["idle"]),
        ("capture, sampled", best["capture_sampled"]),
        ("  of which not explained above (Python, plan, threads, ring)", best["capture_sampled"] - explained),
        ("capture, all", best["capture_all"]),
    ]
    for label, value in rows:
        print(f"{label:62} {value:8.2f}")
    ratio = best["capture_all"] / best["capture_sampled"]
    print(f"ratio all/sampled {ratio:.1f}x; floor (all / one keyframe decoded and converted) {floor:.1f}x")
    print(
        json.dumps(
            {
                "cpu_ms_per_stream_s": {key: round(value, 3) for key, value in best.items()},
                "keyframes_per_s": round(keyframe_s, 3),
                "ratio": round(ratio, 2),
                "floor_ratio": round(floor, 2),
                "no_deblocking_psnr_db": round(psnr, 1),
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "pyav": av.__version__,
                "load_average_before": round(load, 2),
                "rounds": rounds,
            }
        )
    )
    return 0
