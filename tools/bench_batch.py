#!/usr/bin/env python3
"""Batched captioning across streams: aggregate captions/s and caption lag at 1, 4, 8 and 16 live
streams, batched (``[model] max_batch`` 16) against one window at a time (``max_batch`` 1).

The inference process's own threads run in this process (:class:`~stream.inference.ModelLoop`: the
frame tap reading real shared-memory rings, the model loop on the tiny model, captions published on
a real zmq bus); a writer thread plays every stream as a live camera (its frames written at their
wall-clock time, each frame different so no window is taken for unchanged). Capture and decode are
left out (a 16-camera box decodes on its own cores): this is the model's side of the pipeline.
Windows are due every ``--stride`` seconds per stream, more than the model serves at the higher stream
counts, so captions/s is what the model keeps up with; lag is a caption's ``latency_ms`` (publish
time minus the wall time of the newest frame it saw), p95 over the run after a warm-up; "call ms" is
one caption call (with batching: the whole batch). Torch runs one thread (``--threads``): on a shared
2-core machine two threads make single rows swing tenfold.

    python tools/bench_batch.py                 # about 2 minutes on 2 cores
    python tools/bench_batch.py --streams 8 --seconds 20

Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_info import cpu_model  # noqa: E402

from model.backends import load_backend  # noqa: E402
from stream.bus import AskReceiver, LockedPublisher, Publisher, RunPaths, Subscriber  # noqa: E402
from stream.captioning import CaptionSettings  # noqa: E402
from stream.inference import InferenceOptions, ModelLoop  # noqa: E402
from stream.messages import Caption  # noqa: E402
from stream.ring import FrameRing, ring_name  # noqa: E402

FPS = 4.0  # frames written per stream per second (the sampler keeps 1 per second)


def play(rings: list[FrameRing], stop: threading.Event, started: float) -> None:
    """Every ring as a live camera: frame n at ``started + n / FPS``, each one different."""
    rng = np.random.default_rng(0)
    seq = 0
    while not stop.is_set():
        due = started + seq / FPS
        if stop.wait(max(0.0, due - time.time())):
            return
        for ring in rings:
            ring.write(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), seq / FPS, time.time())
        seq += 1


def measure(streams: int, max_batch: int, args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    token = uuid.uuid4().hex[:8]
    rings = [
        FrameRing.create(ring_name(token, f"s{i}"), slots=16, max_height=96, max_width=128)
        for i in range(streams)
    ]
    run = RunPaths.create(root=Path(tempfile.mkdtemp(prefix="vn-")))
    subscriber = Subscriber([run.publisher_endpoint("inference")])
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    publisher.wait_for_subscriber(10.0)
    asks = AskReceiver(run.asks_endpoint)
    settings = CaptionSettings(
        prompt="Describe the video.",
        window=args.window,
        stride=args.stride,
        max_new_tokens=args.tokens,
        unchanged_threshold=0.0,
    )
    options = InferenceOptions(
        run_id=run.run_id,
        run_dir=str(run.run_dir),
        streams={f"s{i}": ring.name for i, ring in enumerate(rings)},
        captions=settings,
        thumbnails=False,
        max_batch=max_batch,
    )
    stop, writer_stop = threading.Event(), threading.Event()
    loop = ModelLoop(
        options, backend, LockedPublisher(publisher), asks, stop, {"model": "tiny", "device": "cpu"}
    )
    started = time.time()
    writer = threading.Thread(target=play, args=(rings, writer_stop, started), daemon=True)
    thread = threading.Thread(target=loop.run, daemon=True)
    writer.start()
    thread.start()
    captions: list[Caption] = []
    warm = started + args.warmup
    end = warm + args.seconds
    while time.time() < end:
        message = subscriber.recv(0.2)
        if isinstance(message, Caption) and time.time() >= warm:
            captions.append(message)
    stop.set()
    writer_stop.set()
    thread.join(30)
    writer.join(5)
    for closer in (asks, subscriber, publisher):
        closer.close()
    run.remove()
    for ring in rings:
        ring.close()
        ring.unlink()
    lags = [c.latency_ms for c in captions]
    covered = {c.stream for c in captions}
    return {
        "streams": streams,
        "max_batch": max_batch,
        "captions": len(captions),
        "captions_per_s": round(len(captions) / args.seconds, 2),
        "lag_p50_ms": round(float(np.percentile(lags, 50)), 0) if lags else None,
        "lag_p95_ms": round(float(np.percentile(lags, 95)), 0) if lags else None,
        "streams_captioned": len(covered),
        "model_ms_p50": round(float(np.percentile([c.model_ms or 0.0 for c in captions], 50)), 0)
        if captions
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,4,8,16", help="stream counts, comma-separated")
    parser.add_argument("--batches", default="1,16", help="max_batch values to compare")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--stride", type=float, default=1.0)
    parser.add_argument("--tokens", type=int, default=160, help="max_new_tokens per caption (the default)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady figures on a shared 2-core machine)"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    backend = load_backend("tiny")
    warm = backend.encode_frames([np.zeros((96, 128, 3), np.uint8)] * 2, max_slice_nums=1)
    backend.describe_batch([(warm, "Describe.", None)] * 2, max_new_tokens=4)  # first-call costs out of row 1
    rows = [
        measure(int(n), int(b), args, backend)
        for n in args.streams.split(",")
        for b in args.batches.split(",")
    ]
    print(
        f"tiny model, {cpu_model()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load avg {os.getloadavg()[0]:.1f}; window {args.window} s, stride {args.stride} s, "
        f"{args.tokens} tokens per caption, {args.seconds} s per row"
    )
    header = ("streams", "max_batch", "captions/s", "lag p50 ms", "lag p95 ms", "streams seen", "call ms p50")
    print(" ".join(f"{h:>{max(7, len(h))}}" for h in header))
    for r in rows:
        print(
            f"{r['streams']:>7} {r['max_batch']:>9} {r['captions_per_s']:>10} {r['lag_p50_ms']!s:>10} "
            f"{r['lag_p95_ms']!s:>10} {r['streams_captioned']:>12} {r['model_ms_p50']!s:>11}"
        )
    speedup = {}
    for n in args.streams.split(","):
        by = {r["max_batch"]: r["captions_per_s"] for r in rows if r["streams"] == int(n)}
        if len(by) == 2 and min(by.values()) > 0:
            low, high = sorted(by)
            speedup[n] = round(by[high] / by[low], 2)
    print("captions/s batched / one at a time:", speedup)
    print(
        json.dumps(
            {
                "bench": "batch",
                "cpu": cpu_model(),
                "load_avg": os.getloadavg()[0],
                "rows": rows,
                "speedup": speedup,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
