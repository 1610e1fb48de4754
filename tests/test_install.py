"""vidnarrate installed from a wheel (not editable) works from any folder: the defaults, the prompt
presets, the demo clip's photos and the tiny model's tokenizer are package data, and the demo clip is
built in the user's cache, not beside the code.

The wheel goes into a fresh venv with ``--no-deps``; that venv sees this project's dependencies
(torch, av, ...) through a ``.pth`` line naming their site-packages. A plain path line does not run
that folder's own ``.pth`` files, so the project's editable install stays invisible and ``stream``
can only come from the wheel (asserted).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from liverun import short_run_root

from stream import democlip

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent


def _site_packages_with(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent.parent


def _check(
    args: list[str], *, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert done.returncode == 0, f"{args} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh venv with the wheel installed, and an environment without this checkout in it."""
    base = tmp_path_factory.mktemp("install")
    source = _mkdir(base / "src")  # a copy: building in place leaves build/ and *.egg-info in the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("stream", "model"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "HOME": str(_mkdir(base / "home")),
        "XDG_CACHE_HOME": str(_mkdir(base / "cache")),
    }
    dist = base / "dist"
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(source),
        ],
        env=env,
    )
    wheels = list(dist.glob("vidnarrate-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env)
    python = venv / "bin" / "python"
    _check(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheels[0])],
        env=env,
    )
    site = Path(
        _check(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env
        ).stdout.strip()
    )
    (site / "vidnarrate_test_deps.pth").write_text(f"{_site_packages_with('torch')}\n")
    yield venv, env


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_packages_come_from_the_wheel(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    code = "import stream, model, torch; print(stream.__file__); print(model.__file__)"
    out = _check([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=env).stdout.split()
    assert all(Path(path).is_relative_to(venv) for path in out), out


def test_caption_a_file_from_an_empty_folder(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    work = _mkdir(tmp_path / "work")
    democlip.make_video(work / "clip.mp4", width=160, height=96, fps=10.0, seconds=3.0)
    args = ["caption", "clip.mp4", "--model", "tiny", "--no-progress", "--set", "captions.max_new_tokens=4"]
    done = _check([str(venv / "bin" / "vidnarrate"), *args], cwd=work, env=env)
    lines = (work / "clip.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["type"] == "caption" for line in lines), done.stdout + done.stderr
    assert (work / "clip.vtt").read_text().startswith("WEBVTT")
    assert sorted(p.name for p in work.iterdir()) == ["clip.jsonl", "clip.mp4", "clip.vtt"]


def test_run_the_demo_from_an_empty_folder_then_ctrl_c(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    cache = Path(env["XDG_CACHE_HOME"]) / "vidnarrate"
    work = _mkdir(tmp_path / "work")
    with short_run_root() as run_root:
        proc = subprocess.Popen(
            [str(venv / "bin" / "vidnarrate"), "run", "--source", "demo", "--model", "tiny", "--port", "0"]
            + ["--set", "captions.max_new_tokens=4"],
            cwd=work,
            env=env | {"VIDNARRATE_RUN_ROOT": str(run_root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        seen: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 240
            while not any("viewer at http://" in line for line in seen):
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                assert line is not None, "vidnarrate run ended before it served:\n" + "".join(seen)
                seen.append(line)
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
            assert proc.wait(30) == 0, "".join(seen)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
        while (line := lines.get_nowait()) is not None:
            seen.append(line)
    output = "".join(seen)
    assert re.search(rf"sources: demo={re.escape(str(cache))}/demo-v\d+\.mp4", output), output
    assert "vidnarrate: stopped" in output and "Traceback" not in output, output
    assert list(work.iterdir()) == [], "nothing is written to the current folder"
