#!/usr/bin/env python3
"""Batched captioning across streams: aggregate captions/s and caption lag at 1, 4, 8 and 16 live
streams, batched (``[model] max_batch`` 16) against one window at a time (``max_batch`` 1).

The inference process's own threads run in this process (:class:`~stream.inference.ModelLoop`: the
frame tap reading real shared-memory rings, the model loop on the tiny model, captions published on
a real zmq bus); a writer thread plays every stream as a live camera writing what ``[capture] decode =
"sampled"`` writes (one frame per sampled second, ``--size`` pixels, at its wall-clock time; noise
pictures with a patch of a new colour each, so no window is taken for unchanged). Capture and decode
are left out (a 16-camera box decodes on its own cores): this is the model's side of the pipeline.

Every caption setting is the shipped default (``stream/defaults/default.toml``: the narration prompt,
window 16 s, stride 4 s, 160 tokens, greedy, one previous caption as context, max_slice_nums 1,
unchanged_threshold 0.004, thumbnails on), so two loads are measured:

* **live**: the default stride, a window due every 4 s per stream (``streams / 4`` windows/s): what a
  box with that many cameras asks for; at few streams both modes keep up and captions/s is the demand.
* **capacity**: ``--capacity-stride`` (1 s: a caption every second per stream, ``streams`` windows/s),
  more than either mode serves at 4 streams and more, so captions/s is what the model keeps up with.

Each row reports its demand (windows/s) beside captions/s, so a reader sees which rows are bound by
demand and which by capacity. Lag is a caption's ``latency_ms`` (publish time minus the wall time of the
newest frame it saw), p50/p95 over the run after a warm-up of one window plus two seconds (the first
windows are shorter); "call ms" is one caption call (with batching: the whole batch); "frames/encode"
is the frames each vision call carried (several streams' new frames share one). Torch runs as
``vidnarrate run`` leaves it, every core (``--threads 1``: one thread, steadier where other work shares
the machine; the tiny model's single-row steps gain nothing from a second thread). The 1-minute
load average is recorded with each row (the machine is shared): where other work takes a varying share
of the cores, "per CPU-s" (captions per second of this process's CPU time, every thread) compares the
two modes' work per caption, which that share does not change.

    python tools/bench_batch.py                 # about 9 minutes on 2 cores
    python tools/bench_batch.py --loads capacity --capacity-streams 8 --seconds 20
    python tools/bench_batch.py --loads "" --components   # one caption's parts only
    python tools/bench_batch.py --loads capacity --capacity-streams 8 --rules 2   # with alert rules

Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from stream.alertrules import AlertRule  # noqa: E402
from stream.bus import AskReceiver, LockedPublisher, Publisher, RunPaths, Subscriber  # noqa: E402
from stream.captioning import CaptionSettings  # noqa: E402
from stream.config import load_config  # noqa: E402
from stream.inference import InferenceOptions, ModelLoop  # noqa: E402
from stream.messages import Caption  # noqa: E402
from stream.pipeline import caption_settings  # noqa: E402
from stream.ring import FrameRing, ring_name  # noqa: E402

PICTURES = 7  # distinct noise pictures each stream cycles through
RULE_QUESTIONS = ("Is a person at the door?", "Is there smoke or fire?", "Is a vehicle in the driveway?")


class CountingEncodes:
    """Counts the backend's vision calls and the frames they carried (the rest passes through)."""

    def __init__(self, backend: Any) -> None:
        self.encode = backend.encode_frames
        self.calls = 0
        self.frames = 0

    def __call__(self, frames: Any, max_slice_nums: int) -> Any:
        self.calls += 1
        self.frames += len(frames)
        return self.encode(frames, max_slice_nums)


def play(rings: list[FrameRing], fps: float, pictures: list[np.ndarray], stop: threading.Event) -> None:
    """Every ring as a live camera whose capture writes the sampled frames: frame n at ``n / fps``.
    A noise picture (noise averages out in the change signature's cells) with a patch of a new flat
    colour each frame (7% of a 720p picture): every window changed since the last caption, so none is
    taken for unchanged."""
    rng = np.random.default_rng(1)
    started = time.time()
    frame = np.empty_like(pictures[0])
    side = min(256, *frame.shape[:2])
    seq = 0
    while not stop.is_set():
        if stop.wait(max(0.0, started + seq / fps - time.time())):
            return
        for index, ring in enumerate(rings):
            np.copyto(frame, pictures[(seq + index) % len(pictures)])
            frame[:side, :side] = rng.integers(0, 255, 3, dtype=np.uint8)
            ring.write(frame, seq / fps, time.time())
        seq += 1


def measure(
    streams: int, max_batch: int, load: str, settings: CaptionSettings, args: argparse.Namespace, backend: Any
) -> dict[str, Any]:
    config = args.config
    height, width = args.height, args.width
    token = uuid.uuid4().hex[:8]
    rings = [
        FrameRing.create(
            ring_name(token, f"s{i}"), slots=config.capture.ring_slots, max_height=height, max_width=width
        )
        for i in range(streams)
    ]
    run = RunPaths.create(root=Path(tempfile.mkdtemp(prefix="vn-")))
    subscriber = Subscriber([run.publisher_endpoint("inference")])
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    publisher.wait_for_subscriber(10.0)
    asks = AskReceiver(run.asks_endpoint)
    options = InferenceOptions(
        run_id=run.run_id,
        run_dir=str(run.run_dir),
        streams={f"s{i}": ring.name for i, ring in enumerate(rings)},
        captions=settings,
        thumbnails=config.captions.thumbnails,
        thumbnail_side=config.captions.thumbnail_side,
        max_inp_length=config.model.max_inp_length,
        max_batch=max_batch,
        alerts=tuple(
            AlertRule(name=f"rule{i}", question=RULE_QUESTIONS[i % len(RULE_QUESTIONS)])
            for i in range(args.rules)
        ),
    )
    stop, writer_stop = threading.Event(), threading.Event()
    counting = CountingEncodes(backend)
    backend.encode_frames = counting
    loop = ModelLoop(
        options, backend, LockedPublisher(publisher), asks, stop, {"model": "tiny", "device": "cpu"}
    )
    started = time.time()
    writer = threading.Thread(
        target=play, args=(rings, settings.fps, args.pictures, writer_stop), daemon=True
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    writer.start()
    thread.start()
    captions: list[Caption] = []
    warm = started + args.warmup
    end = warm + args.seconds
    encodes_at_warm: tuple[int, int] | None = None
    cpu_at_warm = time.process_time()
    while time.time() < end:
        message = subscriber.recv(0.2)
        if time.time() >= warm and encodes_at_warm is None:
            encodes_at_warm = (counting.calls, counting.frames)
            cpu_at_warm = time.process_time()
        if isinstance(message, Caption) and time.time() >= warm and not message.unchanged:
            captions.append(message)
    cpu_s = time.process_time() - cpu_at_warm
    encode_calls = counting.calls - (encodes_at_warm or (0, 0))[0]
    encode_frames = counting.frames - (encodes_at_warm or (0, 0))[1]
    stop.set()
    writer_stop.set()
    thread.join(60)
    writer.join(5)
    del backend.encode_frames
    for closer in (asks, subscriber, publisher):
        closer.close()
    run.remove()
    for ring in rings:
        ring.close()
        ring.unlink()
    lags = [c.latency_ms for c in captions]

    def p(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 0) if values else None

    return {
        "streams": streams,
        "load": load,
        "stride_s": settings.stride,
        "demand_windows_per_s": round(streams / settings.stride, 2),
        "max_batch": max_batch,
        "captions": len(captions),
        "captions_per_s": round(len(captions) / args.seconds, 2),
        "captions_per_cpu_s": round(len(captions) / cpu_s, 2) if cpu_s > 0 else None,
        "lag_p50_ms": p(lags, 50),
        "lag_p95_ms": p(lags, 95),
        "streams_captioned": len({c.stream for c in captions}),
        "call_ms_p50": p([c.model_ms or 0.0 for c in captions], 50),
        "frames_per_encode": round(encode_frames / encode_calls, 1) if encode_calls else None,
        "load_avg_1min": round(os.getloadavg()[0], 1),
    }


def components(backend: Any, settings: CaptionSettings, args: argparse.Namespace) -> dict[str, float]:
    """The model's share of one caption at these settings, outside the pipeline (best of 3): what
    batching can and cannot divide. Under a capacity-bound load every sampled frame is encoded once
    whichever mode runs (``streams`` frames a second, each in several windows), so the encodes take a
    fixed share of the core and the captions share the rest: the ratio of captions/s is then the
    ratio of one caption's cost alone to its share of a batch. Only the decode is shared by a batch;
    each window's prefill (its 16 frames' embeddings and the text) is its own."""

    def best(work: Any) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return min(times) * 1000

    size = int(settings.window * settings.fps)
    pixels = args.pictures[:8]
    frames = backend.encode_frames(args.pictures[:PICTURES] * 3, settings.max_slice_nums)[:size]
    context = settings.context_template.format(previous="A grey picture with a coloured square. " * 3)
    items = [(frames[i % 3 :][: size - 2] if i % 2 else frames, settings.prompt, context) for i in range(8)]
    tokens = settings.max_new_tokens
    alone = best(lambda: [backend.describe(f, p, context=c, max_new_tokens=tokens) for f, p, c in items])
    figures = {
        "encode_ms_per_frame_alone": best(
            lambda: [backend.encode_frames([f], settings.max_slice_nums) for f in pixels]
        )
        / len(pixels),
        "encode_ms_per_frame_in_8": best(lambda: backend.encode_frames(pixels, settings.max_slice_nums))
        / len(pixels),
        "caption_ms_alone": alone / len(items),
        "caption_ms_in_batch_of_8": best(lambda: backend.describe_batch(items, max_new_tokens=tokens))
        / len(items),
        "prefill_ms_alone": best(
            lambda: backend.describe(frames, settings.prompt, context=context, max_new_tokens=1)
        ),
    }
    figures["encode_core_share_8_streams"] = 8 * figures["encode_ms_per_frame_in_8"] / 1000
    figures["ceiling_8_capacity"] = figures["caption_ms_alone"] / figures["caption_ms_in_batch_of_8"]
    return {k: round(v, 2) for k, v in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--streams", default="1,4,8,16", help="stream counts of the live rows, comma-separated"
    )
    parser.add_argument(
        "--capacity-streams", default="4,8,16", help="stream counts of the capacity rows, comma-separated"
    )
    parser.add_argument("--loads", default="live,capacity", help="which loads to run (live, capacity)")
    parser.add_argument("--batches", default="1,16", help="max_batch values to compare")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default: window + 2)")
    parser.add_argument(
        "--capacity-stride", type=float, default=1.0, help="stride of the capacity rows, seconds"
    )
    parser.add_argument("--size", default="1280x720", help="frame size written to the rings (a 720p camera)")
    parser.add_argument(
        "--rules", type=int, default=0, help="question alert rules scored on every captioned window (0)"
    )
    parser.add_argument(
        "--components", action="store_true", help="also time one caption's parts outside the pipeline"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default, every core, as `vidnarrate run` leaves it; 1: steadier "
        "figures on a shared machine)",
    )
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.config = load_config(None)
    live = caption_settings(args.config)
    loads = {"live": live, "capacity": dataclasses.replace(live, stride=args.capacity_stride)}
    args.width, args.height = (int(v) for v in args.size.split("x"))
    args.warmup = live.window + 2.0 if args.warmup is None else args.warmup
    rng = np.random.default_rng(0)
    args.pictures = [
        rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8) for _ in range(PICTURES)
    ]

    backend = load_backend("tiny", max_inp_length=args.config.model.max_inp_length)
    warm = backend.encode_frames(args.pictures[:2], max_slice_nums=live.max_slice_nums)
    backend.describe_batch([(warm, "Describe.", None)] * 2, max_new_tokens=4)  # first-call costs out of row 1
    counts = {"live": args.streams, "capacity": args.capacity_streams}
    parts = components(backend, live, args) if args.components else {}
    rows = [
        measure(int(n), int(b), load, loads[load], args, backend)
        for load in filter(None, args.loads.split(","))
        for n in counts[load].split(",")
        for b in args.batches.split(",")
    ]
    print(
        f"tiny model, {cpu_model()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
        f"defaults: window {live.window:g} s, stride {live.stride:g} s (capacity rows: "
        f"{args.capacity_stride:g} s), {live.max_new_tokens} tokens, {live.decoding}, "
        f"max_slice_nums {live.max_slice_nums}; {args.width}x{args.height} frames at {live.fps:g} fps; "
        f"{args.seconds:g} s per row after {args.warmup:g} s; {args.rules} question alert rules"
    )
    header = (
        "load",
        "streams",
        "demand/s",
        "max_batch",
        "captions/s",
        "per CPU-s",
        "lag p50 ms",
        "lag p95 ms",
        "call ms p50",
        "frames/encode",
        "load avg",
    )
    print(" ".join(f"{h:>{max(8, len(h))}}" for h in header))
    keys = (
        "load",
        "streams",
        "demand_windows_per_s",
        "max_batch",
        "captions_per_s",
        "captions_per_cpu_s",
        "lag_p50_ms",
        "lag_p95_ms",
        "call_ms_p50",
        "frames_per_encode",
        "load_avg_1min",
    )
    for r in rows:
        print(" ".join(f"{r[k]!s:>{max(8, len(h))}}" for k, h in zip(keys, header, strict=True)))
    speedup: dict[str, dict[str, float]] = {"captions_per_s": {}, "captions_per_cpu_s": {}}
    for key, ratios in speedup.items():
        for load in filter(None, args.loads.split(",")):
            for n in counts[load].split(","):
                by = {r["max_batch"]: r[key] for r in rows if r["streams"] == int(n) and r["load"] == load}
                if len(by) == 2 and min(by.values()) > 0:
                    low, high = sorted(by)
                    ratios[f"{load} {n}"] = round(by[high] / by[low], 2)
    print("batched / one at a time:", speedup)
    if parts:
        print("one caption's parts (ms, tiny model, best of 3):", parts)
    print(
        json.dumps(
            {
                "bench": "batch",
                "cpu": cpu_model(),
                "size": args.size,
                "window_s": live.window,
                "torch_threads": torch.get_num_threads(),
                "rules": args.rules,
                "rows": rows,
                "speedup": speedup,
                "components": parts,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
