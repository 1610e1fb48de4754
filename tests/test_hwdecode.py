"""stream/hwdecode.py: hardware decoding's choice, fallback and start-up error, on this machine (which
has no usable hardware decoder: the accelerated path itself is not exercised here, see the README).
A device that does exist skips the tests that need it missing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from realparts import make_clip

from stream.config import Config, apply_overrides
from stream.errors import ConfigError
from stream.hwdecode import check_hwaccel, chosen_device, device_problem
from stream.sources import SourceOptions, open_source

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")


@pytest.fixture(autouse=True)
def _fresh_choice() -> Iterator[None]:
    chosen_device.cache_clear()  # the choice is made once per process: each test makes its own
    yield
    chosen_device.cache_clear()


@pytest.fixture
def no_cuda() -> str:
    problem = device_problem("cuda")
    if problem is None:
        pytest.skip("this machine can decode on CUDA")
    return problem


def test_a_device_this_machine_lacks_is_refused_naming_the_key_and_the_device(no_cuda: str) -> None:
    with pytest.raises(ConfigError, match=r"capture\.hwaccel: 'cuda' cannot be used on this machine") as info:
        check_hwaccel("cuda")
    assert no_cuda in str(info.value)
    check_hwaccel("auto")  # these always pass: auto falls back, none asks for nothing
    check_hwaccel("none")


def test_a_device_type_ffmpeg_does_not_know_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"capture\.hwaccel: 'nvdec' is not one of auto, none, cuda"):
        apply_overrides(Config(), {"capture.hwaccel": "nvdec"})


def test_auto_falls_back_to_software_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_cuda: str
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0)
    with caplog.at_level(logging.INFO, logger="stream.hwdecode"):
        with open_source(str(clip), SourceOptions(realtime=False, hwaccel="auto")) as source:
            frames = sum(1 for _ in source)
        with open_source(str(clip), SourceOptions(realtime=False, hwaccel="auto")) as source:
            assert sum(1 for _ in source) == frames == 30
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said  # once per process, not per source or connection
    assert said[0].startswith("decoding in software: no hardware decoder on this machine")
    assert "tried cuda" in said[0]


def test_none_decodes_in_software_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0)
    with caplog.at_level(logging.DEBUG, logger="stream.hwdecode"):
        with open_source(str(clip), SourceOptions(realtime=False, hwaccel="none")) as source:
            assert sum(1 for _ in source) == 30
    assert [r.getMessage() for r in caplog.records] == ["decoding in software (capture.hwaccel = none)"]


def test_run_asking_for_a_missing_device_exits_2_before_starting_anything(
    tmp_path: Path, no_cuda: str
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0)
    env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(tmp_path / "runs")}
    done = subprocess.run(
        [str(VIDNARRATE), "run", "--source", str(clip), "--model", "tiny", "--no-store"]
        + ["--port", "0", "--set", "capture.hwaccel=cuda"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "capture.hwaccel: 'cuda' cannot be used on this machine" in done.stderr
    assert not (tmp_path / "runs").exists(), "nothing was started"
