#!/usr/bin/env python3
"""Benchmark the caption store: ingest rate, search latency, size per million captions.

    python tools/bench_store.py                          # 1,000,000 captions (about 3 minutes here)
    python tools/bench_store.py --captions 100000 --queries 100

Builds a store of ``--captions`` generated captions (sentences of a few hundred real words, as a CCTV
or narration prompt makes them: 25-70 words each) over a year of wall time, spread over
``--streams`` streams, through :meth:`Store.add` in batches of ``--batch`` (one fsynced WAL commit
each, ``synchronous=FULL``, as the recorder commits), without thumbnails. Then times
:meth:`Store.search`, ``--queries`` times each:

* a single word (drawn from the vocabulary, so common and rare words alike);
* a two-word phrase (``"red car"``);
* a word within one stream and one day (the stream + span filter);
* the most common word of all, unfiltered (the worst case: bm25 ranks every caption that has it).

Prints a table, then one JSON line with the figures and the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_info import cpu_model  # noqa: E402

from stream import messages  # noqa: E402
from stream.store import Record, Store  # noqa: E402

YEAR = 365 * 86400.0
WALL0 = 1_767_225_600.0  # 2026-01-01 UTC

SUBJECTS = (
    "a man", "a woman", "two people", "a delivery driver", "a child", "a cyclist", "a dog", "a cat",
    "an elderly man", "a young woman", "a group of teenagers", "a postman", "a jogger", "a neighbour",
    "a person in a hooded jacket", "a courier", "a gardener", "a police officer", "a fox", "a white van",
    "a red car", "a black suv", "a blue pickup truck", "a motorbike", "a taxi", "a bus", "a tractor",
)  # fmt: skip
ACTIONS = (
    "walks toward", "walks away from", "stands near", "waits beside", "opens", "closes", "looks at",
    "runs past", "parks in front of", "drives past", "stops at", "carries a parcel to", "knocks on",
    "rings the bell at", "leaves a package by", "inspects", "leans against", "crosses", "sweeps",
    "photographs", "points at", "sits on", "climbs over", "hurries past", "lingers near",
)  # fmt: skip
PLACES = (
    "the front door", "the garden gate", "the driveway", "the garage", "the mailbox", "the porch",
    "the side entrance", "the fence", "the parking lot", "the loading dock", "the back yard",
    "the street corner", "the bicycle rack", "the kitchen window", "the recycling bins", "the hedge",
    "the office lobby", "the reception desk", "the stairwell", "the elevator", "the checkout counter",
)  # fmt: skip
SCENES = (
    "It is raining and the pavement is wet.", "The street is empty apart from a few parked cars.",
    "Headlights sweep across the wall.", "Leaves move in the wind.", "The porch light is on.",
    "It is early morning and the light is grey.", "Snow covers the lawn.", "The sun casts long shadows.",
    "A streetlight flickers.", "Nothing else moves in the scene.",
    "The camera view is partly blurred by fog.",
    "A second person is visible in the background.", "A delivery truck is parked across the road.",
    "The door remains open for a while.", "Birds land on the fence and fly off again.",
    "The screen shows a spreadsheet with quarterly figures.", "A browser window shows a login page.",
    "The terminal prints a long list of test results.", "An email draft is open in the editor.",
)  # fmt: skip
DETAILS = (
    "wearing a yellow raincoat", "holding an umbrella", "with a large backpack", "carrying shopping bags",
    "pushing a stroller", "talking on a phone", "wearing a high visibility vest",
    "with a small dog on a lead",
    "in a dark grey coat", "wearing a baseball cap", "with a cardboard box", "holding a clipboard",
    "on a scooter", "with a flashlight", "in a green uniform", "carrying a ladder", "wearing sunglasses",
)  # fmt: skip


def make_text(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(1, 3)):
        detail = f" {rng.choice(DETAILS)}" if rng.random() < 0.6 else ""
        sentences.append(
            f"{rng.choice(SUBJECTS).capitalize()}{detail} {rng.choice(ACTIONS)} {rng.choice(PLACES)}."
        )
        sentences.extend(rng.sample(SCENES, rng.randint(1, 3)))
    return " ".join(sentences)


def make_batch(rng: random.Random, start: int, count: int, total: int, streams: int) -> list[Record]:
    records = []
    step = YEAR / total
    for i in range(start, start + count):
        stream = f"cam{i % streams}"
        seq = i // streams
        wall_end = WALL0 + i * step
        m = messages.Caption(
            stream=stream, seq=seq, t_start=seq * step * streams, t_end=seq * step * streams + 16,
            frame_times=[float(seq * step * streams + k) for k in range(1, 17)], wall_start=wall_end - 16,
            wall_end=wall_end, text=make_text(rng), model="openbmb/MiniCPM-V-2_6", latency_ms=812.0,
            frames=16, model_ms=790.0, encode_ms=95.0,
        )  # fmt: skip
        records.append(Record(run_id="bench", message=m, body=m.to_json()))
    return records


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_queries(store: Store, queries: list[tuple[str, dict[str, Any]]]) -> dict[str, float]:
    times, hits = [], 0
    for query, filters in queries:
        t0 = time.perf_counter()
        hits += len(store.search(query, **filters))
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "p50_ms": percentile(times, 0.5),
        "p99_ms": percentile(times, 0.99),
        "max_ms": max(times),
        "mean_hits": hits / len(queries),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--captions", type=int, default=1_000_000, help="captions to store (default 1,000,000)"
    )
    parser.add_argument("--streams", type=int, default=4, help="streams they are spread over (default 4)")
    parser.add_argument("--batch", type=int, default=500, help="captions per commit (default 500)")
    parser.add_argument("--queries", type=int, default=200, help="searches of each kind (default 200)")
    parser.add_argument("--db", type=Path, help="keep the store here (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(0)
    folder = None if args.db else tempfile.TemporaryDirectory(prefix="bench-store-")
    path = args.db if args.db else Path(folder.name if folder else ".") / "bench.db"

    add_s = add_cpu = 0.0
    t_build = time.perf_counter()
    with Store.open(path) as store:
        done = 0
        while done < args.captions:
            count = min(args.batch, args.captions - done)
            records = make_batch(rng, done, count, args.captions, args.streams)
            t0, cpu0 = time.perf_counter(), time.process_time()
            store.add(records)
            add_s += time.perf_counter() - t0
            add_cpu += time.process_time() - cpu0
            done += count
        build_s = time.perf_counter() - t_build
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size_mb = store.size_mb()

    words = sorted({w.strip(".,").lower() for text in SUBJECTS + ACTIONS + PLACES + SCENES + DETAILS
                    for w in text.split() if len(w) > 3})  # fmt: skip
    phrases = [" ".join(p.split()[-2:]) for p in PLACES + DETAILS + SUBJECTS if len(p.split()) >= 2]
    day = 86400.0
    with Store.open(path, readonly=True) as store:
        store.search("door", limit=1)  # the first query reads the index's pages in
        kinds = {
            "word": [(rng.choice(words), {}) for _ in range(args.queries)],
            "phrase": [(f'"{rng.choice(phrases)}"', {}) for _ in range(args.queries)],
            "stream+day": [
                (
                    rng.choice(words),
                    {
                        "streams": [f"cam{rng.randrange(args.streams)}"],
                        "wall_from": (start := WALL0 + rng.random() * (YEAR - day)),
                        "wall_to": start + day,
                    },
                )
                for _ in range(args.queries)
            ],
            "commonest word": [("the", {})] * max(5, args.queries // 10),
        }
        results = {kind: time_queries(store, queries) for kind, queries in kinds.items()}

    ingest = args.captions / add_s
    print(f"store: {args.captions:,} captions, {args.streams} streams over a year, batches of {args.batch}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs")
    cpu_us = 1e6 * add_cpu / args.captions
    print(f"ingest: {ingest:,.0f} captions/s (add() alone), {cpu_us:.0f} µs CPU per caption;")
    print(f"        the build with text generation took {build_s:.0f} s")
    print(f"size:   {size_mb:.0f} MiB, {size_mb * 1e6 / args.captions:.0f} MiB per million captions")
    print(f"{'search':16} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'hits':>6}")
    for kind, r in results.items():
        print(f"{kind:16} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['max_ms']:8.1f} {r['mean_hits']:6.1f}")
    figures = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "captions": args.captions,
        "streams": args.streams,
        "batch": args.batch,
        "ingest_per_s": round(ingest),
        "cpu_us_per_caption": round(cpu_us, 1),
        "mib_per_million": round(size_mb * 1e6 / args.captions, 1),
        "search": {k: {m: round(v, 2) for m, v in r.items()} for k, r in results.items()},
    }
    print(json.dumps(figures))
    if folder is not None:
        folder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
