#!/usr/bin/env python3
"""Pipeline benchmark: what the live pipeline adds on top of the model, and what the frame cache saves.

    python tools/bench_pipeline.py                 # ~2 minutes on 2 cores
    python tools/bench_pipeline.py --seconds 60 --windows 16:4,64:4

1. **Frame-to-client latency** through a real ``vidnarrate run`` (capture, ring, inference, zmq,
   gateway, websocket) with the tiny model on a sample file played as live: for every caption, the
   time from the capture of the newest frame it used (``wall_end``) to the caption's arrival at a
   websocket client, and the same minus the model's compute (``model_ms``: generation; ``encode_ms``:
   the vision encode of that newest frame), i.e. the pipeline's own overhead. p50/p95.
2. **Vision encodes per sampled frame**, with the embedding cache (what the pipeline does) and without
   it (every caption re-encodes its window's frames), for each window:stride, counted on the real
   scheduling core and sampler with the tiny model over a 1-fps stream.

Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchrun import free_port, start_run, stop_run  # noqa: E402
from machine_info import cpu_model  # noqa: E402

from model.backends import load_backend  # noqa: E402
from stream.captioning import CaptionSettings  # noqa: E402
from stream.scheduler import Caption, Encode, Scheduler  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def make_sample(path: Path, seconds: float) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_sample_video", ROOT / "tools" / "make_sample_video.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_video(path, width=640, height=360, fps=25.0, seconds=seconds)
    return path


def latency_run(seconds: float, tokens: int) -> dict[str, Any]:
    """Run ``vidnarrate run`` on a looped sample and time every caption at a websocket client."""
    import websockets

    work = Path(tempfile.mkdtemp(prefix="vn-bench-"))
    clip = make_sample(work / "clip.mp4", 30.0)
    port = free_port()
    exe = Path(sys.executable).with_name("vidnarrate")
    cmd = [
        str(exe),
        "run",
        "--source",
        f"bench={clip}",
        "--model",
        "tiny",
        "--port",
        str(port),
        "--loop",
        "--window",
        "16",
        "--stride",
        "4",
        "--set",
        f"captions.max_new_tokens={tokens}",
        "--set",
        "captions.thumbnails=false",
        "--log-level",
        "WARNING",
    ]
    proc, ready = start_run(cmd, work)
    rows: list[dict[str, float]] = []
    try:
        if not ready.wait(180):
            raise RuntimeError("vidnarrate run did not become ready")

        async def client() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
                await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
                deadline = time.monotonic() + seconds + 60
                start_at: float | None = None
                while time.monotonic() < deadline:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 5)
                    except TimeoutError:
                        continue
                    arrived = time.time()
                    message = json.loads(raw)
                    if message.get("type") != "caption":
                        continue
                    start_at = start_at or time.monotonic()
                    latency = (arrived - message["wall_end"]) * 1000
                    compute = message["model_ms"] + message.get("encode_ms", 0.0)
                    rows.append(
                        {
                            "latency_ms": latency,
                            "model_ms": message["model_ms"],
                            "encode_ms": message.get("encode_ms", 0.0),
                            "overhead_ms": latency - compute,
                            "skipped": message["skipped"],
                        }
                    )
                    if time.monotonic() - start_at >= seconds:
                        return

        asyncio.run(client())
    finally:
        stop_run(proc, 20)
    rows = rows[1:]  # the first caption includes warm-up
    return {
        "captions": len(rows),
        "latency_p50_ms": percentile([r["latency_ms"] for r in rows], 50),
        "latency_p95_ms": percentile([r["latency_ms"] for r in rows], 95),
        "model_p50_ms": percentile([r["model_ms"] for r in rows], 50),
        "encode_p50_ms": percentile([r["encode_ms"] for r in rows], 50),
        "overhead_p50_ms": percentile([r["overhead_ms"] for r in rows], 50),
        "overhead_p95_ms": percentile([r["overhead_ms"] for r in rows], 95),
        "skipped": sum(r["skipped"] for r in rows),
    }


def encode_counts(window: float, stride: float, seconds: float, backend: Any) -> dict[str, Any]:
    """Vision encodes per sampled frame with the cache (counted) and without it (each caption's frames)."""

    class Counting:
        name = "tiny"

        def __init__(self) -> None:
            self.encoded = 0

        def encode_frames(self, frames: Any, max_slice_nums: int) -> Any:
            self.encoded += len(frames)
            return backend.encode_frames(frames, max_slice_nums)

        def describe(self, *args: Any, **kwargs: Any) -> str:
            return backend.describe(*args, **kwargs)

    counting = Counting()
    settings = CaptionSettings(
        prompt="Describe.",
        max_new_tokens=1,
        window=window,
        stride=stride,
        skip_stale=False,
        context_captions=0,
    )
    core = Scheduler(settings, model="tiny")
    core.add_stream("bench")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)
    per_caption: list[int] = []
    fps = 5.0
    for i in range(int(seconds * fps)):
        if core.offer("bench", i, i / fps, 1000 + i / fps):
            core.add_pixels("bench", i, frame)
        while (action := core.next_action()) is not None:
            if isinstance(action, Encode):
                core.encoded(action, counting.encode_frames(action.pixels, action.max_slice_nums), ms=0.0)
            elif isinstance(action, Caption):
                text = counting.describe(list(action.embeddings), action.prompt, max_new_tokens=1)
                message = core.captioned(action, text, model_ms=0.0, wall=time.time())
                per_caption.append(len(message.frame_times))
    sampled = core.status()["bench"]["sampled"]
    return {
        "window": window,
        "stride": stride,
        "sampled": sampled,
        "captions": len(per_caption),
        "with_cache": round(counting.encoded / sampled, 3),
        "without_cache": round(sum(per_caption) / sampled, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to time captions")
    parser.add_argument("--tokens", type=int, default=16, help="max new tokens per caption")
    parser.add_argument("--windows", default="16:4,64:4", help="window:stride pairs for the encode counts")
    parser.add_argument(
        "--stream-seconds", type=float, default=256.0, help="stream length for the encode counts"
    )
    args = parser.parse_args()

    latency = latency_run(args.seconds, args.tokens)
    backend = load_backend("tiny")
    counts = [
        encode_counts(float(w), float(s), args.stream_seconds, backend)
        for w, s in (pair.split(":") for pair in args.windows.split(","))
    ]

    machine = f"{cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"Pipeline benchmark ({machine})")
    print("tiny model, 640x360 @ 25 fps file played as live, window 16 s, stride 4 s")
    print()
    print(f"{'frame -> websocket client':32} {'p50 ms':>10} {'p95 ms':>10}")
    lat = latency
    print(f"{'latency (capture to client)':32} {lat['latency_p50_ms']:10.1f} {lat['latency_p95_ms']:10.1f}")
    print(f"{'  of which model generation':32} {latency['model_p50_ms']:10.1f}")
    print(f"{'  of which vision encode':32} {latency['encode_p50_ms']:10.1f}")
    print(f"{'overhead (no model)':32} {lat['overhead_p50_ms']:10.1f} {lat['overhead_p95_ms']:10.1f}")
    print(f"({latency['captions']} captions timed, {latency['skipped']} windows skipped)")
    print()
    header = ("window/stride", "sampled", "captions", "encodes/frame cached", "uncached", "saved")
    print(f"{header[0]:14} {header[1]:>8} {header[2]:>9} {header[3]:>21} {header[4]:>9} {header[5]:>7}")
    for c in counts:
        saved = c["without_cache"] / c["with_cache"] if c["with_cache"] else float("nan")
        print(
            f"{c['window']:.0f} s / {c['stride']:.0f} s{'':4} {c['sampled']:8d} {c['captions']:9d} "
            f"{c['with_cache']:21.2f} {c['without_cache']:9.2f} {saved:6.1f}x"
        )
    print(json.dumps({"machine": machine, **latency, "encodes": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
