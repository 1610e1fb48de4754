"""Benchmark the native MiniCPM-V 2.6: frame encoding, prefill, decode and one 16-frame caption.

Default: the tiny random model on the CPU (what CI machines have). ``--full-size`` builds the real 2.6
architecture (SigLIP-400M + resampler + Qwen2-7B, 8.1B parameters) with random bf16 weights drawn
directly on the device: no checkpoint is needed and speed does not depend on the weight values. It
uses the tiny tokenizer, whose ids are valid rows of the big vocabulary, so prompts have the real
layout and length while the text is meaningless. ``--layers N`` keeps only N LLM and N vision layers
(a CPU dry run of the full-size code path: ``--full-size --device cpu --layers 2 --quick``; on a CPU
the weights are float32 unless ``--dtype`` says otherwise, since CPU bf16 matmuls are very slow).

Figures (frames are 640x360, the live default of one piece per frame unless said):
* frames encoded per second with 1 piece (max_slice_nums=1) and 3 pieces (max_slice_nums=2) per frame;
* prefill tokens/s of a 16- and a 64-frame window prompt built from cached frame embeddings;
* decode tokens/s at batch 1 and 8 (greedy, fixed length, after a 16-frame prompt);
* one 16-frame caption with cached embeddings and from pixels (frames encoded inside ``chat``);
* eight windows of 16 cached frames captioned in turn and in one batched generation (captions of
  eight streams at once, ``LocalBackend.describe_batch``; greedy, up to the decode length);
* peak GPU memory, and the weights' memory.

``--int4`` quantizes every Linear the model card's int4 release quantizes (all but ``out_proj``,
``kv_proj`` and ``lm_head``) to bitsandbytes NF4 with double quantization, as
``openbmb/MiniCPM-V-2_6-int4`` holds them, and runs the same figures on that model.

Prints a table, then one JSON line with the figures.

    .venv/bin/python tools/bench_model.py                      # tiny, CPU
    .venv/bin/python tools/bench_model.py --full-size          # GPU (about 3 minutes on one H200)
    .venv/bin/python tools/bench_model.py --full-size --int4   # the int4 model on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_info import cpu_model  # noqa: E402

from model.backends import LocalBackend  # noqa: E402
from model.configuration import MiniCPMVConfig  # noqa: E402
from model.loading import resolve_dtype  # noqa: E402
from model.modeling import MiniCPMV  # noqa: E402
from model.processing import ProcessorConfig  # noqa: E402
from model.tiny import TOKENIZER_DIR, build_tiny_model, randomise_  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402

QUESTION = "Describe what happens in the video in detail."
GREEDY: dict[str, Any] = {"sampling": False, "num_beams": 1, "repetition_penalty": 1.0}


def build_full_size(device: torch.device, dtype: torch.dtype, layers: int | None, seed: int) -> MiniCPMV:
    """The real architecture with random weights, drawn on ``device`` (never materialised elsewhere)."""
    config = MiniCPMVConfig.full_size()
    if layers is not None:
        config = replace(
            config,
            text=replace(config.text, num_hidden_layers=layers, max_window_layers=layers),
            vision=replace(config.vision, num_hidden_layers=layers),
        )
    with torch.device("meta"):
        model = MiniCPMV(config, load_tokenizer(TOKENIZER_DIR), ProcessorConfig())
    model.to(dtype=dtype)
    model.to_empty(device=device)
    randomise_(model, seed)
    model.finish_materialising(device)
    return model.eval()


def quantize_int4(model: MiniCPMV, device: torch.device) -> int:
    """Swap every Linear the int4 release quantizes for an NF4 ``Linear4bit`` (quantized on
    ``device``, where the dense weight already is); returns how many were swapped."""
    import bitsandbytes as bnb

    from model.tiny import INT4_SKIP_MODULES

    names = [
        name
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and name.rpartition(".")[2] not in INT4_SKIP_MODULES
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        dense = getattr(parent, child)
        layer = bnb.nn.Linear4bit(
            dense.in_features,
            dense.out_features,
            bias=dense.bias is not None,
            compute_dtype=dense.weight.dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        weight = bnb.nn.Params4bit(
            dense.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
        )
        layer.weight = weight.to(device)
        layer.bias = dense.bias
        setattr(parent, child, layer)
        del dense, weight
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return len(names)


def weights_gib(model: MiniCPMV) -> float:
    """Bytes held by parameters and buffers (packed 4-bit weights count as stored)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


class Clock:
    """Wall time of a call, synchronising the device so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], repeats: int) -> float:
        """Median seconds over ``repeats`` calls, after one untimed warm-up call."""
        fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def frames(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    return [Image.fromarray(np.roll(base, 7 * i, axis=1)) for i in range(count)]


def window(items: list) -> list[dict]:
    return [{"role": "user", "content": [*items, QUESTION]}]


def progress(started: float, what: str) -> None:
    """Stage marks on stderr, so a run cut short by a time limit still shows how far it got."""
    print(f"[{time.perf_counter() - started:7.1f}s] {what}", file=sys.stderr, flush=True)


def prefill(model: MiniCPMV, prep: Any) -> None:
    with torch.inference_mode():
        embeds, mask = model.embed([prep])
        model.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    started = time.perf_counter()
    if args.full_size:
        model = build_full_size(device, resolve_dtype(device, args.dtype), args.layers, args.seed)
    else:
        model = build_tiny_model(seed=args.seed, device=device)
    params = sum(p.numel() for p in model.parameters())
    progress(started, f"model built ({params:,} parameters)")
    dense_gib = weights_gib(model)
    if args.int4:
        swapped = quantize_int4(model, device)
        progress(started, f"{swapped} Linear layers quantized to NF4")
    clock = Clock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    quick = args.quick
    n_encode = 2 if quick else (64 if device.type == "cuda" else 16)
    new_tokens = 4 if quick else args.new_tokens
    repeats = 1 if quick else args.repeats
    window_sizes = (2, 3) if quick else (16, 64)
    figures: dict[str, Any] = {
        "model": model_name(args),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "params": params,
        "weights_gib": weights_gib(model),
        "dense_weights_gib": dense_gib,
        "build_s": round(time.perf_counter() - started, 2),
    }

    video = frames(max(n_encode, window_sizes[1]))
    progress(started, "encoding frames")
    for pieces, limit in ((1, 1), (3, 2)):
        some = video[:n_encode]
        seconds = clock.time(partial(model.encode_frames, some, limit), repeats)
        figures[f"encode_{pieces}piece_frames_per_s"] = n_encode / seconds

    cached = model.encode_frames(video[: window_sizes[1]], max_slice_nums=args.max_slice_nums)
    progress(started, "prefill")
    for label, size in zip(("16f", "64f"), window_sizes, strict=True):
        prep = model.prepare(window(cached[:size]), use_image_id=False, max_inp_length=32768)
        seconds = clock.time(partial(prefill, model, prep), repeats)
        figures[f"prefill_{label}_tokens"] = int(prep.input_ids.shape[0])
        figures[f"prefill_{label}_tokens_per_s"] = prep.input_ids.shape[0] / seconds

    prep16 = model.prepare(window(cached[: window_sizes[0]]), use_image_id=False)
    progress(started, "decode")
    for batch in (1, 8):
        preps = [prep16] * batch
        one = clock.time(partial(model.generate, preps, max_new_tokens=1, **GREEDY), repeats)
        fixed = partial(model.generate, preps, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **GREEDY)
        full = clock.time(fixed, repeats)
        figures[f"decode_batch{batch}_tokens_per_s"] = batch * (new_tokens - 1) / max(full - one, 1e-9)

    def caption(items: list) -> None:
        model.chat(
            window(items),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_image_id=False,
            max_slice_nums=args.max_slice_nums,
            **GREEDY,
        )

    progress(started, "captions")
    figures["caption_16f_cached_s"] = clock.time(lambda: caption(cached[: window_sizes[0]]), repeats)
    figures["caption_16f_pixels_s"] = clock.time(lambda: caption(video[: window_sizes[0]]), repeats)
    figures["caption_new_tokens"] = new_tokens
    # Eight streams' windows at once (issue 14): one batched generation against eight in turn.
    backend = LocalBackend(model, name=model_name(args), max_inp_length=32768)
    size = window_sizes[0]
    windows = [(cached[i % (len(cached) - size + 1) :][:size], QUESTION, None) for i in range(8)]
    progress(started, "batched captions")
    figures["captions_8_in_turn_s"] = clock.time(
        lambda: [backend.describe(f, p, max_new_tokens=new_tokens) for f, p, _ in windows], repeats
    )
    figures["captions_8_batched_s"] = clock.time(
        lambda: backend.describe_batch(windows, max_new_tokens=new_tokens), repeats
    )
    figures["caption_batch8_speedup"] = figures["captions_8_in_turn_s"] / figures["captions_8_batched_s"]
    if device.type == "cuda":
        figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    figures["total_s"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):  # other work on the machine skews CPU figures
        figures["load_avg_1m"] = os.getloadavg()[0]
    return figures


def model_name(args: argparse.Namespace) -> str:
    if not args.full_size:
        return "tiny" + (" int4" if args.int4 else "")
    layers = f" ({args.layers} layers)" if args.layers else ""
    return "full-size" + (" int4" if args.int4 else "") + layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="real 2.6 architecture, random bf16 weights")
    parser.add_argument("--device", default=None, help="default: cuda with --full-size if present, else cpu")
    parser.add_argument("--dtype", default=None, help="full-size weights (default: bf16 on cuda, f32 on cpu)")
    parser.add_argument("--layers", type=int, default=None, help="keep only N LLM and vision layers")
    parser.add_argument("--new-tokens", type=int, default=None, help="decode length (64 on CPU, 160 on GPU)")
    parser.add_argument("--max-slice-nums", type=int, default=1, help="pieces per frame in windows (live: 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int4", action="store_true", help="NF4 4-bit Linear layers, as the int4 release")
    parser.add_argument("--quick", action="store_true", help="tiny workloads: proves the code path runs")
    args = parser.parse_args()
    if args.device is None:
        args.device = "cuda" if args.full_size and torch.cuda.is_available() else "cpu"
    if args.new_tokens is None:
        args.new_tokens = 160 if args.device.startswith("cuda") else 64
    if args.threads:
        torch.set_num_threads(args.threads)

    figures = run(args)
    print(f"{'figure':<34}{'value':>24}")
    for name, value in figures.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        print(f"{name:<34}{shown:>24}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
