"""The set-up and check scripts of tools/: the venv stamp of bootstrap.sh and the house tools of lint.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

VENV_BIN = Path(sys.executable).parent  # ruff and mypy come with the test extras


def test_a_venv_with_the_test_extras_serves_the_launcher_without_reinstalling(tmp_path: Path) -> None:
    """``./vidnarrate`` (no extras) after ``tools/test.sh`` (extras "test") and back: installed once.
    pip is stood in for by a python that logs what it is asked to install."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "pip-calls"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    python.chmod(0o755)

    def bootstrap(extras: str) -> list[str]:
        env = {**os.environ, "VIDNARRATE_VENV": str(venv), "TORCH_SPEC": "torch==2.13.0", "EXTRAS": extras}
        subprocess.run(["bash", str(REPO_ROOT / "tools" / "bootstrap.sh")], env=env, check=True, timeout=60)
        return calls.read_text().splitlines() if calls.exists() else []

    installed = bootstrap("test")
    assert installed[-1].endswith(f"install -e {REPO_ROOT}[test]")
    for extras in ["", "test", "", "test"]:
        assert bootstrap(extras) == installed, f"set up again for extras {extras!r}"
    more = bootstrap("other")
    assert more[len(installed) :][-1].endswith(f"install -e {REPO_ROOT}[other,test]"), "the test extras stay"
    assert bootstrap("test") == bootstrap("") == more


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A small checkout: the repository's pyproject.toml (ruff and mypy settings) and tools/lint.sh."""
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "pyproject.toml", root)
    shutil.copy(REPO_ROOT / "tools" / "lint.sh", root / "tools")
    for name, text in {"stream/__init__.py": "", "model/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIDNARRATE_VENV": str(VENV_BIN.parent)}
    return subprocess.run(
        ["bash", str(root / "tools" / "lint.sh")], env=env, capture_output=True, text=True, timeout=300
    )


def test_lint_passes_a_clean_tree_and_names_every_tool_that_fails(tmp_path: Path) -> None:
    clean = _lint(
        _tree(tmp_path / "clean", {"stream/ok.py": "def double(x: int) -> int:\n    return 2 * x\n"})
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    dirty = _lint(
        _tree(
            tmp_path / "dirty",
            {
                "stream/spacing.py": "x=1\n",  # not format-clean
                "stream/unused.py": "import os\n",  # F401
                "model/types.py": 'count: int = "three"\n',  # a type error
            },
        )
    )
    assert dirty.returncode == 1
    for tool in ("ruff format --check .", "ruff check .", "mypy stream model"):
        assert f"vidnarrate: failed: {tool}" in dirty.stderr, dirty.stdout + dirty.stderr
