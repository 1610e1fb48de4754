#!/usr/bin/env python3
"""Benchmark the remote backend against the stand-in OpenAI-compatible server (tests/openai_standin.py).

    python tools/bench_remote.py                    # 1, 8 and 32 streams, 20 s each (about 2 minutes)
    python tools/bench_remote.py --seconds 10 --streams 1 8
    python tools/bench_remote.py --url http://127.0.0.1:8000/v1 --streams 1 --seconds 60   # a real server

The stand-in runs in a process of its own and answers every window with a fixed short text after a
fixed ``--delay`` (a server's time per window), streamed as SSE. This process is the client: the
scheduling core (``max_in_flight`` = ``max_concurrency``) and the ``RemoteBackend`` on a thread pool,
as the inference process drives them, fed synthetic 640x360 frames at 1 fps per stream in real time
(window 8 s, stride 2 s: each frame is in 4 windows). Measured:

* bytes sent per sampled frame (request bodies over frames sampled), with and without vLLM's media
  ``uuid`` caching (the stand-in plays vLLM or not);
* requests in flight (mean and max, sampled every 50 ms) and caption latency (newest frame to caption,
  p50/p95), at each stream count; windows skipped to stay real-time;
* the client's CPU per caption (this process's CPU time over captions: JPEG encoding, requests,
  SSE parsing, scheduling).

With ``--url`` the same client measures a running server instead (no stand-in; media ids only if it
says it is vLLM): tools/check_llamacpp.sh does that with llama.cpp's server and the tiny model.

Prints a table, then one JSON line with the figures and the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_info import cpu_model  # noqa: E402

from model.remote import RemoteBackend  # noqa: E402
from stream.captioning import CaptionSettings  # noqa: E402
from stream.scheduler import Answer, Caption, Encode, Scheduler  # noqa: E402


def synthetic_frames(count: int, seed: int) -> list[np.ndarray]:
    """Smooth frames with a moving block: JPEG sizes like a camera's, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:360, 0:640]
    base = np.stack([(x * 255 // 640), (y * 255 // 360), ((x + y) * 255 // 1000)], axis=-1).astype(np.uint8)
    out = []
    for i in range(count):
        frame = base.copy()
        cx, cy = (40 * i) % 560, (25 * i) % 300
        frame[cy : cy + 60, cx : cx + 80] = rng.integers(0, 255, 3, dtype=np.uint8)
        out.append(frame)
    return out


def stamped(picture: np.ndarray, stream: int, tick: int) -> np.ndarray:
    """A frame no other stream or second shares: equal frames would share one media uuid and flatter
    the bytes sent (a real camera's frames differ)."""
    frame = picture.copy()
    frame[:16, :96] = (stream * 7 % 256, tick % 256, tick // 256 % 256)
    return frame


def start_standin(delay: float, owned_by: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "openai_standin.py"),
            "--delay",
            str(delay),
            "--owned-by",
            owned_by,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def run(
    streams: int, seconds: float, delay: float, media_cache: bool, concurrency: int, url: str | None = None
) -> dict[str, Any]:
    proc, url = (None, url) if url else start_standin(delay, "vllm" if media_cache else "standin")
    try:
        backend = RemoteBackend.connect(url, max_concurrency=concurrency)
        media_cache = backend.media_cache
        settings = CaptionSettings(
            prompt="Describe.", window=8.0, stride=2.0, max_new_tokens=32, context_captions=1
        )
        core = Scheduler(settings, max_in_flight=concurrency, model=backend.name)
        names = [f"cam{i}" for i in range(streams)]
        for name in names:
            core.add_stream(name)
        pictures = synthetic_frames(16, 0)
        lock, wake = threading.Lock(), threading.Event()
        latencies: list[float] = []
        in_flight: list[int] = []

        def caption(action: Caption) -> None:
            started = time.monotonic()
            text = action.run_on(backend.for_user(action.stream))
            with lock:
                message = core.captioned(
                    action, text, model_ms=(time.monotonic() - started) * 1000, wall=time.time()
                )
            latencies.append(message.latency_ms)
            wake.set()

        pool = ThreadPoolExecutor(concurrency)
        cpu0, t0 = time.process_time(), time.monotonic()
        wall0 = time.time()
        tick = 0
        next_sample = t0
        while (now := time.monotonic()) - t0 < seconds:
            while tick <= now - t0:  # one frame per second per stream, in real time
                with lock:
                    for s, name in enumerate(names):
                        if core.offer(name, tick, float(tick), wall0 + tick):
                            core.add_pixels(name, tick, stamped(pictures[tick % len(pictures)], s, tick))
                tick += 1
            with lock:
                action = core.next_action()
            if isinstance(action, Encode):
                embeddings = action.run_on(backend)
                with lock:
                    core.encoded(action, embeddings, ms=0.0)
            elif isinstance(action, Caption):
                pool.submit(caption, action)
            elif isinstance(action, Answer):
                raise AssertionError("no asks in this benchmark")
            if now >= next_sample:
                in_flight.append(backend.status()["in_flight"])
                next_sample += 0.05
            if action is None:
                wake.wait(0.01)
                wake.clear()
        backend.set_interrupt(lambda: True)
        pool.shutdown(wait=True)
        cpu = time.process_time() - cpu0
        status = backend.status()
        with lock:
            per_stream = core.status()
        sampled = sum(s["sampled"] for s in per_stream.values())
        captions = sum(s["captions"] for s in per_stream.values())
        backend.close()
        latencies.sort()
        return {
            "streams": streams,
            "media_cache": media_cache,
            "captions": captions,
            "skipped": sum(s["skipped"] for s in per_stream.values()),
            "bytes_per_frame": round(status["bytes_sent"] / max(1, sampled)),
            "in_flight_mean": round(statistics.fmean(in_flight), 2) if in_flight else 0.0,
            "in_flight_max": max(in_flight, default=0),
            "latency_p50_ms": round(latencies[len(latencies) // 2]) if latencies else None,
            "latency_p95_ms": round(latencies[int(len(latencies) * 0.95)]) if latencies else None,
            "cpu_ms_per_caption": round(cpu * 1000 / max(1, captions), 1),
        }
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--delay", type=float, default=1.0, help="the stand-in's seconds per window")
    parser.add_argument("--concurrency", type=int, default=8, help="model.remote.max_concurrency")
    parser.add_argument("--url", help="a running OpenAI-compatible server's /v1 address (no stand-in)")
    args = parser.parse_args()
    results = [run(n, args.seconds, args.delay, True, args.concurrency, args.url) for n in args.streams]
    if args.url:
        uncached = []
        print(f"remote backend vs {args.url}: max_concurrency {args.concurrency}")
    else:
        streams = args.streams[min(1, len(args.streams) - 1)]
        uncached = [run(streams, args.seconds, args.delay, False, args.concurrency)]
        print(
            f"remote backend vs the stand-in: {args.delay:g} s per window, max_concurrency {args.concurrency}"
        )
    print(f"window 8 s, stride 2 s, 1 fps, 640x360 frames as 448x252 JPEG q85; {args.seconds:g} s per row")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs")
    header = f"{'streams':>7} {'uuid':>5} {'captions':>8} {'skipped':>7} {'B/frame':>8} {'inflight':>8} "
    print(header + f"{'max':>4} {'p50 ms':>7} {'p95 ms':>7} {'CPU ms/cap':>10}")
    for r in [*results, *uncached]:
        print(
            f"{r['streams']:7d} {('yes' if r['media_cache'] else 'no'):>5} "
            f"{r['captions']:8d} {r['skipped']:7d} "
            f"{r['bytes_per_frame']:8d} {r['in_flight_mean']:8.2f} {r['in_flight_max']:4d} "
            f"{r['latency_p50_ms'] or 0:7d} {r['latency_p95_ms'] or 0:7d} {r['cpu_ms_per_caption']:10.1f}"
        )
    figures = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "server": args.url or "stand-in",
        "delay_s": None if args.url else args.delay,
        "max_concurrency": args.concurrency,
        "runs": [*results, *uncached],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
