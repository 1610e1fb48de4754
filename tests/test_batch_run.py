"""Batched captioning through the real CLI: ``vidnarrate run`` on four files with the tiny model and
``[model] max_batch = 4`` captions every stream to the end of its file and stops by itself. (That the
due windows of several streams go in one generation, with the texts they get alone, is checked with
counted model calls in tests/test_inference_batch.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from liverun import LiveRun, short_run_root, wait_for
from realparts import make_clip

from stream.bus import RunPaths, Subscriber
from stream.messages import Caption

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

NAMES = ("north", "south", "east", "west")


def test_a_run_of_four_files_with_max_batch_4_captions_every_stream_to_its_end(tmp_path: Path) -> None:
    clips = [make_clip(tmp_path / f"{name}.mp4", size="320x240", fps=25.0, seconds=7.0) for name in NAMES]
    sources = [f"{name}={clip}" for name, clip in zip(NAMES, clips, strict=True)]
    with short_run_root() as root:
        extra = ["--window", "4", "--stride", "4", "--set", "model.max_batch=4"]
        run = LiveRun(sources, root, extra=extra).launch()
        assert run.proc is not None
        bus: Subscriber | None = None
        try:
            wait_for(lambda: bool(run.run_dirs), 30, "the run directory")
            run_dir = run.run_dirs[0]
            bus = Subscriber([RunPaths(run_id=run_dir.name, run_dir=run_dir).publisher_endpoint("inference")])
            assert run.proc.wait(240) == 0, run.log()
            heard = []
            while (message := bus.recv(timeout=1.0)) is not None:
                heard.append(message)
        finally:
            if bus is not None:
                bus.close()
            run.kill()
        assert "Traceback" not in "".join(run.stderr), run.log()
        for name in NAMES:
            captions = [m for m in heard if isinstance(m, Caption) and m.stream == name]
            assert captions, f"no caption of {name}: {run.log()}"
            assert captions[-1].t_end > 4.5, f"{name}: the tail after the last full window: {captions}"
            assert all(c.model == "tiny" and c.text for c in captions)
