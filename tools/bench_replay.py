#!/usr/bin/env python3
"""Benchmark the replay from the store: what a viewer that subscribes costs the gateway's store thread.

    python tools/bench_store.py --db /tmp/store.db        # build a store first (1,000,000 captions)
    python tools/bench_replay.py /tmp/store.db             # then time replays from it

Times, ``--rounds`` times each, on the store the recorder would have written:

* ``StoreReader.recent`` for every stream (``"streams": "*"``: the skip scan of the stream names, then
  the last ``--replay`` captions of each);
* the same for one named stream;
* :func:`stream.storereplay.merge_replay` of those rows with a full gateway buffer (``--replay``
  captions per stream of the current run, half of them also in the store), the event loop's share.

Prints a table, then one JSON line with the figures and the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_info import cpu_model  # noqa: E402

from stream import messages  # noqa: E402
from stream.fanout import ReplayStore  # noqa: E402
from stream.requests import Subscribe  # noqa: E402
from stream.store import Store  # noqa: E402
from stream.storereader import StoreReader  # noqa: E402
from stream.storereplay import ReplayEntry, merge_replay  # noqa: E402


def timed(rounds: int, func: object) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()  # type: ignore[operator]
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("db", type=Path, help="a store (tools/bench_store.py --db PATH makes one)")
    parser.add_argument(
        "--replay", type=int, default=100, help="captions per stream (gateway.replay, default 100)"
    )
    parser.add_argument("--rounds", type=int, default=50, help="timed rounds of each (default 50)")
    args = parser.parse_args()

    with Store.open(args.db, readonly=True) as store:
        captions = store.count()
        streams = store.streams()
    reader = StoreReader(args.db)
    stored = reader.recent(None, args.replay, 256)
    # The gateway's buffer: the current run's last captions, the older half also committed.
    run_id = "bench-current"
    buffer = ReplayStore(args.replay)
    for stream in streams:
        for seq in range(args.replay):
            wall = time.time() + seq
            body = messages.Caption(
                stream=stream, seq=seq, t_start=float(seq), t_end=seq + 8.0, frame_times=[float(seq)],
                wall_start=wall - 8.0, wall_end=wall, text=f"the current run's caption {seq}", model="tiny",
                latency_ms=900.0,
            ).to_json()  # fmt: skip
            buffer.add(stream, body, seq=seq, wall_end=wall)
    committed = [
        ReplayEntry(e.stream, e.seq, e.wall_end, e.body, run_id=run_id)
        for entries in buffer.entries(Subscribe()).values()
        for e in entries[: args.replay // 2]
    ]
    merged_rows = stored + committed

    rows = [
        ("recent, every stream", timed(args.rounds, lambda: reader.recent(None, args.replay, 256))),
        (
            "recent, one stream",
            timed(args.rounds, lambda: reader.recent(frozenset(streams[:1]), args.replay, 256)),
        ),
        (
            "merge with the buffer",
            timed(
                args.rounds,
                lambda: merge_replay(
                    merged_rows, buffer.entries(Subscribe()), run_id=run_id, count=args.replay
                ),
            ),
        ),
    ]
    reader.close()
    sent = len(merge_replay(merged_rows, buffer.entries(Subscribe()), run_id=run_id, count=args.replay))
    print(
        f"store: {captions:,} messages, {len(streams)} streams; replay {args.replay} per stream ({sent} sent)"
    )
    print(f"{'what':<24} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    figures: dict[str, object] = {}
    for name, values in rows:
        p50, p99, mean = percentile(values, 0.5), percentile(values, 0.99), statistics.fmean(values)
        print(f"{name:<24} {p50:8.2f} {p99:8.2f} {mean:8.2f}")
        figures[name.replace(", ", "_").replace(" ", "_")] = {
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
        }
    print(
        json.dumps(
            {
                "bench": "replay",
                "machine": cpu_model(),
                "messages": captions,
                "streams": len(streams),
                "replay": args.replay,
                "sent": sent,
                **figures,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
