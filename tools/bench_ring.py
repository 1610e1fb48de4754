#!/usr/bin/env python3
"""Benchmark the shared-memory frame ring against multiprocessing.Queue and against memcpy.

    python tools/bench_ring.py                 # 1080p RGB, 3 interleaved rounds of 2 s per path
    python tools/bench_ring.py --seconds 1 --rounds 1 --height 720 --width 1280

Three ways 1080p RGB frames (1920x1080x3 uint8, 6.2 MB) get from a writer process to a reader process,
in one run:

* ring, lossless (the headline): every frame is delivered; the reader gets each as a private copy
  (``FrameRing.read``), i.e. one copy into shared memory and one copy out, as a real reader does;
* ring, live: the writer never waits; the reader takes the oldest frame it has not seen that is
  still there (``since``), counting what it missed;
* ``multiprocessing.Queue`` (bounded like the ring) carrying the same frames (pickled, piped, unpickled).

``ring.write`` and ``ring.read`` are also timed alone in one process: each side's cost next to memcpy.
And the physical limit: one ``np.copyto`` of a 1080p frame into a preallocated array, cycling over
more frames than the last-level cache holds (the ring's frames are distinct, so they come from DRAM
too); the cache-hot figure (same source and destination every time) is printed for reference.

Rounds of all paths are interleaved and medians reported, and each path's CPU time per frame is
printed too: on a shared machine other processes take CPUs away, which costs the ring (two busy
processes) more than the one-thread memcpy; CPU per frame is what a path costs whatever the load.

Every frame through the ring carries its seq in its first 8 bytes (its pool index through the Queue)
and the reader checks it, so a wrong or torn frame would be counted. Prints a table, then one JSON
line with the figures; exits 1 if any frame was wrong or a lossless one went missing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_info import cpu_model  # noqa: E402

from stream.ring import FrameRing, ring_name  # noqa: E402

POOL = 8  # distinct source frames (8 x 6.2 MB: more than a 32 MB L3)


def make_pool(height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(POOL)]


def stamp(frame: np.ndarray, seq: int) -> np.ndarray:
    frame.reshape(-1)[:8].view(np.int64)[0] = seq
    return frame


def stamp_of(image: np.ndarray) -> int:
    return int(image.reshape(-1)[:8].view(np.int64)[0])


# -- processes ------------------------------------------------------------------------------------


def ring_writer(name: str, height: int, width: int, seconds: float, go: Any, out: Any) -> None:
    ring = FrameRing.attach(name)
    pool = make_pool(height, width)
    go.wait()
    count = 0
    t0, cpu0 = time.monotonic(), time.process_time()
    end = t0 + seconds
    while time.monotonic() < end:
        seq = ring.head_seq + 1
        if ring.write(stamp(pool[seq % POOL], seq), seq / 30, time.time(), timeout=1.0) >= 0:
            count += 1
    ring.mark_ended()
    out.put(("writer", count, t0, time.monotonic(), time.process_time() - cpu0))
    ring.close()


def ring_reader(name: str, lossless: bool, ready: Any, out: Any) -> None:
    ring = FrameRing.attach(name)
    rid = ring.register_reader() if lossless else None
    ready.set()
    cpu0 = time.process_time()
    got = bad = missed = 0
    last = -1
    t_first = t_last = 0.0
    while ring.wait_for(last, timeout=5.0):
        # Lossless: the next frame, always there. Live: the oldest frame newer than ours still in the
        # ring (anything older was overwritten: counted as missed); one at a time, so no copy is
        # wasted on a frame overwritten before we get to it.
        frame = ring.read(last + 1) if lossless else next(iter(ring.since(last, limit=1)), None)
        if frame is None:
            continue
        if got == 0:
            t_first = time.monotonic()
        got += 1
        bad += stamp_of(frame.image) != frame.seq
        missed += frame.seq - last - 1
        last = frame.seq
        if rid is not None:
            ring.release(rid, last)
        t_last = time.monotonic()
    out.put(("reader", got, bad, missed, t_first, t_last, time.process_time() - cpu0))
    ring.close()


def queue_writer(q: Any, height: int, width: int, seconds: float, go: Any, out: Any) -> None:
    # Queue.put pickles later, in a feeder thread, so a frame must not change after it is put: each
    # pool frame is stamped once with its pool index and the reader checks seq % POOL.
    pool = [stamp(frame, i) for i, frame in enumerate(make_pool(height, width))]
    go.wait()
    count = 0
    t0, cpu0 = time.monotonic(), time.process_time()
    end = t0 + seconds
    while time.monotonic() < end:
        q.put((count, pool[count % POOL]))
        count += 1
    q.put(None)
    out.put(("writer", count, t0, time.monotonic(), time.process_time() - cpu0))


def queue_reader(q: Any, ready: Any, out: Any) -> None:
    ready.set()
    cpu0 = time.process_time()
    got = bad = 0
    t_last = 0.0
    while (item := q.get()) is not None:
        seq, image = item
        got += 1
        bad += stamp_of(image) != seq % POOL
        t_last = time.monotonic()
    out.put(("reader", got, bad, 0, 0.0, t_last, time.process_time() - cpu0))


# -- measurements ---------------------------------------------------------------------------------


def run_pair(ctx: Any, writer: Any, writer_args: tuple, reader: Any, reader_args: tuple) -> dict[str, Any]:
    go, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    r = ctx.Process(target=reader, args=(*reader_args, ready, out))
    w = ctx.Process(target=writer, args=(*writer_args, go, out))
    r.start()
    w.start()
    if not ready.wait(60):
        raise RuntimeError("reader process did not start")
    go.set()
    results = {msg[0]: msg[1:] for msg in (out.get(timeout=120), out.get(timeout=120))}
    w.join(30)
    r.join(30)
    written, t0, t_end_w, writer_cpu = results["writer"]
    got, bad, missed, _t_first, t_last, reader_cpu = results["reader"]
    elapsed = t_last - t0
    return {
        "written": written,
        "delivered": got,
        "bad": bad,
        "missed": missed,
        "writer_fps": written / (t_end_w - t0),
        "fps": got / elapsed,
        "seconds": elapsed,
        # CPU time per frame, whatever else runs on the machine: what the path costs.
        "writer_cpu_ms": 1e3 * writer_cpu / max(written, 1),
        "reader_cpu_ms": 1e3 * reader_cpu / max(got, 1),
    }


def bench_ring(
    ctx: Any, height: int, width: int, slots: int, seconds: float, lossless: bool
) -> dict[str, Any]:
    name = ring_name(uuid.uuid4().hex, "bench")
    with FrameRing.create(name, slots=slots, max_height=height, max_width=width, lossless=lossless):
        return run_pair(ctx, ring_writer, (name, height, width, seconds), ring_reader, (name, lossless))


def bench_queue(ctx: Any, height: int, width: int, slots: int, seconds: float) -> dict[str, Any]:
    q = ctx.Queue(maxsize=slots)
    return run_pair(ctx, queue_writer, (q, height, width, seconds), queue_reader, (q,))


def bench_memcpy(height: int, width: int, seconds: float, hot: bool) -> dict[str, float]:
    src = make_pool(height, width)[: 1 if hot else POOL]
    dst = [np.empty_like(src[0]) for _ in src]
    for s, d in zip(src, dst, strict=True):  # fault the pages in before timing
        np.copyto(d, s)
    count = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    end = t0 + seconds
    while time.perf_counter() < end:
        for s, d in zip(src, dst, strict=True):
            np.copyto(d, s)
        count += len(src)
    return {"fps": count / (time.perf_counter() - t0), "cpu_ms": 1e3 * (time.process_time() - cpu0) / count}


def bench_ring_op(height: int, width: int, seconds: float, op: str) -> dict[str, float]:
    """``write`` or ``read`` alone, in this process: what one side of the ring costs next to memcpy."""
    pool = make_pool(height, width)
    name = ring_name(uuid.uuid4().hex, "bench-op")
    with FrameRing.create(name, slots=POOL, max_height=height, max_width=width) as ring:
        for frame in pool:
            ring.write(frame, 0.0, 0.0)
        count = 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() < t0 + seconds:
            for i, frame in enumerate(pool):
                if op == "write":
                    ring.write(frame, 0.0, 0.0)
                else:
                    assert ring.read(ring.head_seq - i) is not None
            count += len(pool)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {"fps": count / elapsed, "cpu_ms": 1e3 * cpu / count}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median frames/s; frames that were wrong or missing are totalled over all."""
    chosen = dict(sorted(runs, key=lambda r: r["fps"])[len(runs) // 2])
    chosen["bad"] = sum(r.get("bad", 0) for r in runs)
    chosen["missed_total"] = sum(r.get("missed", 0) for r in runs)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of all measurements, interleaved; medians are reported"
    )
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--slots", type=int, default=8, help="ring slots (and Queue maxsize)")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    frame_bytes = args.height * args.width * 3
    load_before = os.getloadavg()[0]

    # Interleaved rounds, so a burst of load from other processes hits every path alike.
    paths = ("memcpy", "memcpy_hot", "write", "read", "lossless", "live", "queue")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in paths}
    for _ in range(args.rounds):
        runs["memcpy"].append(bench_memcpy(args.height, args.width, args.seconds, hot=False))
        runs["write"].append(bench_ring_op(args.height, args.width, args.seconds / 2, "write"))
        runs["read"].append(bench_ring_op(args.height, args.width, args.seconds / 2, "read"))
        runs["lossless"].append(bench_ring(ctx, args.height, args.width, args.slots, args.seconds, True))
        runs["live"].append(bench_ring(ctx, args.height, args.width, args.slots, args.seconds, False))
        runs["queue"].append(bench_queue(ctx, args.height, args.width, args.slots, args.seconds))
        runs["memcpy_hot"].append(bench_memcpy(args.height, args.width, args.seconds, hot=True))
    memcpy, memcpy_hot, write, read, lossless, live, queue = (median_run(runs[k]) for k in paths)
    memcpy_fps = memcpy["fps"]

    def gbps(fps: float) -> float:
        return fps * frame_bytes / 1e9

    def cpu(res: dict[str, Any]) -> str:
        if "cpu_ms" in res:
            return f"{res['cpu_ms']:.2f}"
        return f"{res['writer_cpu_ms']:.2f}+{res['reader_cpu_ms']:.2f}"

    rows = [
        ("memcpy (np.copyto, DRAM)", memcpy),
        ("memcpy (np.copyto, cache-hot)", memcpy_hot),
        ("ring.write alone (one process)", write),
        ("ring.read alone (one process)", read),
        ("ring lossless (process->process)", lossless),
        ("ring live (process->process)", live),
        ("multiprocessing.Queue", queue),
    ]
    print(
        f"{args.width}x{args.height} RGB frames ({frame_bytes / 1e6:.1f} MB), ring of {args.slots} slots, "
        f"median of {args.rounds} interleaved rounds of {args.seconds:g} s; {cpu_model()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average {load_before:.1f} "
        "before (other processes compete for the CPUs: the ring needs two, memcpy one)"
    )
    header = ("path", "frames/s", "GB/s", "vs memcpy", "CPU ms/frame", "delivered", "missed", "bad")
    print("{:34} {:>9} {:>6} {:>9} {:>13} {:>9} {:>7} {:>4}".format(*header))
    for label, res in rows:
        extra = f"{res['delivered']:>9} {res['missed']:>7} {res['bad']:>4}" if "delivered" in res else ""
        fps = res["fps"]
        print(f"{label:34} {fps:9.1f} {gbps(fps):6.2f} {fps / memcpy_fps:9.0%} {cpu(res):>13} {extra}")
    print(
        "every round, frames/s: "
        + "; ".join(f"{k} " + " ".join(f"{r['fps']:.0f}" for r in v) for k, v in runs.items())
    )
    # What the CPU cost per frame implies with a free core each for the writer and the reader
    # (a derived estimate for a loaded machine, not a measurement).
    ideal_fps = 1e3 / max(lossless["writer_cpu_ms"], lossless["reader_cpu_ms"])
    print(
        f"CPU per frame: ring writer {lossless['writer_cpu_ms']:.2f} ms, reader "
        f"{lossless['reader_cpu_ms']:.2f} ms, memcpy {memcpy['cpu_ms']:.2f} ms: with a free core each "
        f"the ring would reach ~{ideal_fps:.0f} frames/s "
        f"({ideal_fps / (1e3 / memcpy['cpu_ms']):.0%} of memcpy; an estimate, not a measurement)"
    )
    # Ratios are taken within each round (paths measured seconds apart share the machine's load at
    # the time), then the median over rounds.
    by_round = list(zip(runs["lossless"], runs["queue"], runs["memcpy"], strict=True))
    ratio_queue = sorted(r["fps"] / q["fps"] for r, q, _ in by_round)[args.rounds // 2]
    ratio_memcpy = sorted(r["fps"] / m["fps"] for r, _, m in by_round)[args.rounds // 2]
    print(
        f"ring lossless = {ratio_queue:.1f}x the Queue (target >= 10x), "
        f"{ratio_memcpy:.0%} of memcpy (target >= 50%), medians of the per-round ratios; "
        f"live writer {live['writer_fps']:.0f} frames/s"
    )
    figures = {
        "frame_shape": [args.height, args.width, 3],
        "slots": args.slots,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "ring_fps": round(lossless["fps"], 1),
        "ring_gbps": round(gbps(lossless["fps"]), 2),
        "ring_bad_frames": lossless["bad"] + live["bad"],
        "ring_lossless_missed": lossless["missed_total"],
        "queue_bad_frames": queue["bad"],
        "ring_live_fps": round(live["fps"], 1),
        "ring_live_gbps": round(gbps(live["fps"]), 2),
        "ring_live_writer_fps": round(live["writer_fps"], 1),
        "ring_live_missed": live["missed"],
        "queue_fps": round(queue["fps"], 1),
        "queue_gbps": round(gbps(queue["fps"]), 2),
        "memcpy_fps": round(memcpy_fps, 1),
        "memcpy_gbps": round(gbps(memcpy_fps), 2),
        "memcpy_hot_fps": round(memcpy_hot["fps"], 1),
        "ring_write_alone_fps": round(write["fps"], 1),
        "ring_read_alone_fps": round(read["fps"], 1),
        "ring_writer_cpu_ms": round(lossless["writer_cpu_ms"], 3),
        "ring_reader_cpu_ms": round(lossless["reader_cpu_ms"], 3),
        "queue_writer_cpu_ms": round(queue["writer_cpu_ms"], 3),
        "queue_reader_cpu_ms": round(queue["reader_cpu_ms"], 3),
        "memcpy_cpu_ms": round(memcpy["cpu_ms"], 3),
        "ring_fps_free_cores_estimate": round(ideal_fps, 1),
        "ring_vs_queue": round(ratio_queue, 2),
        "ring_vs_memcpy": round(ratio_memcpy, 3),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": round(load_before, 2),
    }
    print(json.dumps(figures))
    ok = lossless["bad"] == live["bad"] == queue["bad"] == lossless["missed_total"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
