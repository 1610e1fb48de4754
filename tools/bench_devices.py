#!/usr/bin/env python3
"""Several inference processes (``[model] devices``): aggregate captions/s and caption lag through a
real ``vidnarrate run`` with the tiny model, one process against N on the same sources.

    python tools/bench_devices.py                          # 4 sources, ["cpu"] vs ["cpu","cpu"]
    python tools/bench_devices.py --sources 8 --seconds 60 --devices cpu --devices cpu,cpu

Each configuration plays the same looped sample as ``--sources`` live sources (window 8 s, stride
2 s: more windows come due than the tiny model captions on a small CPU, so captions/s measures
capacity, the rest skipped newest-first); captions are counted at a websocket client for
``--seconds`` after the first one arrives. Lag: a caption's arrival minus its window's end. On a CPU,
"devices" share the same cores, and several "cpu" entries run one torch thread each (cores /
entries): compare with one process run under ``OMP_NUM_THREADS=1`` before crediting the second
process with a gain; on N GPUs each process has a device of its own. Prints a table, then one JSON
line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchrun import free_port, start_run, stop_run  # noqa: E402
from machine_info import cpu_model  # noqa: E402


def make_clip(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_sample_video", ROOT / "tools" / "make_sample_video.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_video(path, width=320, height=240, fps=10.0, seconds=30.0)
    return path


def measure(devices: list[str], sources: int, seconds: float, clip: Path) -> dict[str, Any]:
    import websockets

    work = Path(tempfile.mkdtemp(prefix="vn-bd-"))
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("vidnarrate")), "run", "--model", "tiny", "--port", str(port)]
    for index in range(sources):
        cmd += ["--source", f"cam{index}={clip}"]
    cmd += ["--loop", "--no-store", "--window", "8", "--stride", "2", "--log-level", "WARNING"]
    cmd += ["--set", "captions.max_new_tokens=16", "--set", "captions.thumbnails=false"]
    cmd += ["--set", "captions.unchanged_threshold=0", "--set", f"model.devices={json.dumps(devices)}"]
    proc, ready = start_run(cmd, work)
    lags: list[float] = []
    try:
        if not ready.wait(300):
            raise RuntimeError("vidnarrate run did not become ready")

        async def client() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
                await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
                end: float | None = None
                while end is None or time.monotonic() < end:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 5)
                    except TimeoutError:
                        continue
                    message = json.loads(raw)
                    if message.get("type") == "caption":
                        end = end or time.monotonic() + seconds
                        lags.append(time.time() - message["wall_end"])

        asyncio.run(client())
    finally:
        stop_run(proc)
    return {
        "devices": devices,
        "sources": sources,
        "captions": len(lags),
        "captions_per_s": round(len(lags) / seconds, 3),
        "lag_p50_s": round(float(np.percentile(lags, 50)), 2) if lags else None,
        "lag_p95_s": round(float(np.percentile(lags, 95)), 2) if lags else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=45.0, help="how long to count captions")
    parser.add_argument(
        "--devices", action="append", help="a comma-separated devices list (repeat to compare)"
    )
    args = parser.parse_args()
    configs = [d.split(",") for d in (args.devices or ["cpu", "cpu,cpu"])]
    clip = make_clip(Path(tempfile.mkdtemp(prefix="vn-bd-clip-")) / "clip.mp4")
    rows = [measure(devices, args.sources, args.seconds, clip) for devices in configs]
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    print(f"{'devices':<24}{'sources':>8}{'captions/s':>12}{'lag p50 s':>11}{'lag p95 s':>11}")
    for row in rows:
        print(
            f"{json.dumps(row['devices']):<24}{row['sources']:>8}{row['captions_per_s']:>12}"
            f"{row['lag_p50_s']!s:>11}{row['lag_p95_s']!s:>11}"
        )
    print(json.dumps({"bench": "devices", "machine": cpu_model(), "rows": rows}))


if __name__ == "__main__":
    main()
