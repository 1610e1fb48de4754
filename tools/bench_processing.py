"""Benchmark MiniCPM-V 2.6 processing on the CPU: slicing per frame, pixel conversion, prompt building.

The streaming hot path slices each sampled frame once and then builds a prompt per window from cached
layouts, so those are timed separately. Prints a table, then one JSON line with the figures (ms).

    .venv/bin/python tools/bench_processing.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.processing import ProcessorConfig, pieces_to_pixel_values, prepare, slice_image  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "tests" / "data" / "oracle" / "tiny_minicpmv26"


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = ProcessorConfig.from_folder(TINY)
    tok = load_tokenizer(TINY)
    rng = np.random.default_rng(0)

    def frame(w: int, h: int) -> PIL.Image.Image:
        return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    figures: dict[str, float] = {}
    for w, h, limit in [(640, 360, 2), (1280, 720, 2), (1920, 1080, 2), (1920, 1080, 9), (448, 448, 9)]:
        image = frame(w, h)
        figures[f"slice_{w}x{h}_max{limit}_ms"] = _median_ms(
            lambda image=image, limit=limit: slice_image(image, cfg, limit), args.repeats
        )
    pieces = slice_image(frame(1920, 1080), cfg, 2).pieces
    figures["pixels_1920x1080_max2_ms"] = _median_ms(lambda: pieces_to_pixel_values(pieces), args.repeats)

    layout = slice_image(frame(1280, 720), cfg, 2).layout
    window = [{"role": "user", "content": [layout] * 64 + ["Describe the video."]}]
    figures["prepare_64_cached_frames_ms"] = _median_ms(
        lambda: prepare(window, tok, cfg, use_image_id=False, max_slice_nums=2, max_inp_length=16384),
        args.repeats,
    )

    print(f"{'step':<36}{'median ms':>12}")
    for name, value in figures.items():
        print(f"{name.removesuffix('_ms'):<36}{value:>12.2f}")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
