#!/usr/bin/env python3
"""Benchmark span summaries: how long ``vidnarrate summarize`` takes over a screen recording's captions.

    python tools/bench_summaries.py                        # 2,400 captions: 40 minutes at 1 per second
    python tools/bench_summaries.py --captions 300 --model tiny

Stores ``--captions`` generated screen-recording captions (one per second of a recording, 16-s windows,
25-45 words each, as the ``screen`` prompt makes them) in a fresh store through :meth:`Store.add`, then
summarises the span as ``vidnarrate summarize --prompt screen`` does: read from the store, packed into
chunks of ``model.max_inp_length`` tokens (counted with the model's tokenizer), a summary per chunk,
then summaries of summaries. The tiny model's tokenizer has 536 tokens, so its chunks hold about a
third of what the real model's do, and its random weights write until ``max_new_tokens``: an upper
bound on the number of model calls and on the tokens generated.

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_info import cpu_model  # noqa: E402

from model.backends import load_backend  # noqa: E402
from stream import messages  # noqa: E402
from stream.config import apply_overrides, load_config  # noqa: E402
from stream.store import Record, Store  # noqa: E402
from stream.summaries import TimeLabels  # noqa: E402
from stream.summarydoc import SummaryMaker, captions_of  # noqa: E402

APPS = ("Visual Studio Code", "a terminal", "Firefox", "the file manager", "Slack", "a spreadsheet")
ACTIONS = (
    "types a function named parse_args", "scrolls down through the test results", "opens the settings menu",
    "clicks the Run button", "switches to another tab", "selects three lines and deletes them",
    "searches for the word timeout", "drags a file into the upload area", "reads a long error message",
    "renames a column to total_cost", "copies a command from the documentation", "closes a dialog box",
)  # fmt: skip
DETAILS = (
    "The window title shows main.py.", "A green notification says the build passed.",
    "The status bar shows line 142.", "A red error underline marks a missing import.",
    "The sidebar lists the folders src, tests and docs.", "The cursor blinks at the end of the line.",
    "A progress bar is half full.", "Several browser tabs are open at the top.",
)  # fmt: skip


def screen_caption(rng: random.Random) -> str:
    app = rng.choice(APPS)
    first, second = rng.sample(ACTIONS, 2)
    details = " ".join(rng.sample(DETAILS, 2))
    return f"The screen shows {app}. The user {first}, then {second}. {details}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=2400)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--max-inp-length", type=int, default=None, help="default: the config's (8192)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: summaries.max_new_tokens")
    args = parser.parse_args()
    rng = random.Random(7)
    overrides = {"model.name": args.model, "summaries.prompt": "screen"}
    if args.max_inp_length:
        overrides["model.max_inp_length"] = args.max_inp_length
    if args.max_new_tokens:
        overrides["summaries.max_new_tokens"] = args.max_new_tokens
    config = apply_overrides(load_config(None), overrides, "bench")
    start = time.time() - args.captions - 16
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        with Store.open(path) as store:
            records = []
            for i in range(args.captions):
                t_end = 16.0 + i
                message = messages.Caption(
                    stream="screen", seq=i, t_start=t_end - 16, t_end=t_end, frame_times=[t_end],
                    wall_start=start + t_end - 16, wall_end=start + t_end, text=screen_caption(rng),
                    model=args.model, latency_ms=0.0,
                )  # fmt: skip
                records.append(Record("bench", message, message.to_json()))
            store.add(records)
        backend = load_backend(config.model.name, max_inp_length=config.model.max_inp_length)
        tokens = sum(backend.count_tokens(r.message.text) for r in records)
        words = sum(len(r.message.text.split()) for r in records)
        with Store.open(path, readonly=True) as store:
            maker = SummaryMaker(backend, config, progress=False)
            t0 = time.perf_counter()
            stored = (json.loads(m.json) for m in store.iter_history("screen"))
            section = maker.run("screen", captions_of(stored), total=args.captions, labels=TimeLabels.WALL)
            elapsed = time.perf_counter() - t0
    run = section.run
    figures = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "model": args.model,
        "captions": args.captions,
        "caption_words": round(words / args.captions, 1),
        "caption_tokens": tokens,
        "max_inp_length": config.model.max_inp_length,
        "max_new_tokens": config.summaries.max_new_tokens,
        "chunks": len(run.parts),
        "model_calls": run.requests,
        "seconds": round(elapsed, 1),
        "seconds_per_call": round(elapsed / max(1, run.requests), 2),
    }
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; model {args.model}")
    print(f"captions: {args.captions:,} ({figures['caption_words']} words, {tokens:,} tokens in all)")
    print(f"budget:   max_inp_length {figures['max_inp_length']}, max_new_tokens {figures['max_new_tokens']}")
    print(f"{'chunks':>8} {'calls':>6} {'seconds':>8} {'s/call':>7}")
    print(f"{len(run.parts):8d} {run.requests:6d} {elapsed:8.1f} {figures['seconds_per_call']:7.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
