"""Benchmark alert rules: ms per rule per window with cached frame embeddings, against a full caption.

For one window of cached frame embeddings (16 frames by default, the live window at 1 fps), it times:
* a full caption of the window (fixed length: ``--caption-tokens`` greedy tokens, the prefill included);
* ``yes_probabilities`` with 1, 4 and 16 rules, each count in one batched prefill (what a window with
  that many question rules costs), and the 16 rules asked one by one (what batching saves);
* a pattern rule (a regex on the caption text; no model call).

Default: the tiny random model on the CPU. ``--full-size`` is the real 2.6 architecture with random bf16
weights on the GPU (tools/bench_model.py's builder, no checkpoint needed); ``--full-size --device cpu
--layers 2 --quick`` is the CPU dry run of that code path. Prints a table, then one JSON line.

    .venv/bin/python tools/bench_events.py                    # tiny, CPU
    .venv/bin/python tools/bench_events.py --full-size        # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_model import Clock, build_full_size, frames  # noqa: E402
from machine_info import cpu_model  # noqa: E402

from model.backends import LocalBackend  # noqa: E402
from model.loading import resolve_dtype  # noqa: E402
from model.tiny import build_tiny_model  # noqa: E402

CAPTION_PROMPT = "Describe what happens in the video in detail."
QUESTIONS = [
    "Is a person standing at the door?",
    "Is a car parked in the driveway?",
    "Is there smoke or fire anywhere in view?",
    "Is a person climbing a fence or a wall?",
    "Is a package lying at the door?",
    "Is an animal in view?",
    "Is a person carrying a ladder?",
    "Is the garage door open?",
    "Is a person lying on the ground?",
    "Is a vehicle driving on the lawn?",
    "Is someone looking into a window?",
    "Is water flooding the floor?",
    "Is a bicycle being taken away?",
    "Is a person wearing a mask or a hood?",
    "Is a light on inside the house?",
    "Is more than one person in view?",
]
PATTERN = re.compile(r"(?i)\b(fire|smoke|flames?)\b")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    started = time.perf_counter()
    if args.full_size:
        model = build_full_size(device, resolve_dtype(device, args.dtype), args.layers, args.seed)
    else:
        model = build_tiny_model(seed=args.seed, device=device)
    backend = LocalBackend(model, name="full-size" if args.full_size else "tiny", max_inp_length=32768)
    clock = Clock(device)
    quick = args.quick
    repeats = 1 if quick else args.repeats
    n_frames = 2 if quick else args.frames
    tokens = 4 if quick else args.caption_tokens
    cached = model.encode_frames(frames(n_frames), max_slice_nums=1)
    figures: dict[str, Any] = {
        "model": backend.name + (f" ({args.layers} layers)" if args.layers else ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "window_frames": n_frames,
        "caption_tokens": tokens,
    }
    prep = model.prepare(
        [{"role": "user", "content": [*cached, CAPTION_PROMPT]}], use_image_id=False, max_inp_length=32768
    )
    figures["window_prompt_tokens"] = int(prep.input_ids.shape[0])

    def caption() -> None:
        model.generate(
            [prep],
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            sampling=False,
            num_beams=1,
            repetition_penalty=1.0,
        )

    figures["caption_ms"] = 1000 * clock.time(caption, repeats)
    for count in (1, 4, 16):
        questions = QUESTIONS[:count]
        seconds = clock.time(lambda q=questions: backend.yes_probabilities(cached, q), repeats)
        figures[f"rules_{count}_batched_ms"] = 1000 * seconds
        figures[f"rules_{count}_ms_per_rule"] = 1000 * seconds / count
    seconds = clock.time(lambda: [backend.yes_probabilities(cached, [q]) for q in QUESTIONS], repeats)
    figures["rules_16_one_by_one_ms"] = 1000 * seconds
    figures["rule_vs_caption_1"] = figures["rules_1_batched_ms"] / figures["caption_ms"]
    figures["rules_16_vs_caption"] = figures["rules_16_batched_ms"] / figures["caption_ms"]
    text = "A man in a grey coat walks to the door and rings the bell; smoke rises behind the house. " * 2
    loops = 10_000
    begin = time.perf_counter()
    for _ in range(loops):
        PATTERN.search(text)
    figures["pattern_rule_ms"] = 1000 * (time.perf_counter() - begin) / loops
    if device.type == "cuda":
        figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    figures["total_s"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):  # other work on the machine skews CPU figures
        figures["load_avg_1m"] = os.getloadavg()[0]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="real 2.6 architecture, random bf16 weights")
    parser.add_argument("--device", default=None, help="default: cuda with --full-size if present, else cpu")
    parser.add_argument("--dtype", default=None, help="full-size weights (default: bf16 on cuda, f32 on cpu)")
    parser.add_argument("--layers", type=int, default=None, help="keep only N LLM and vision layers")
    parser.add_argument("--frames", type=int, default=16, help="frames in the window (live: 16)")
    parser.add_argument("--caption-tokens", type=int, default=None, help="caption length (64 CPU, 160 GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny workloads: proves the code path runs")
    args = parser.parse_args()
    if args.device is None:
        args.device = "cuda" if args.full_size and torch.cuda.is_available() else "cpu"
    if args.caption_tokens is None:
        args.caption_tokens = 160 if args.device.startswith("cuda") else 64
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = run(args)
    print(f"{'figure':<30}{'value':>28}")
    for name, value in figures.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{name:<30}{shown:>28}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
