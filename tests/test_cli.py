"""The command line before a run starts: help, version, checks and what the user is told."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from realparts import make_clip

from stream.cli import build_parser, choose_token, is_loopback, warn_if_prompt_looks_like_a_preset_typo
from stream.config import load_config
from stream.errors import ConfigError
from stream.process import ExitCode


@pytest.mark.parametrize(
    ("typed", "suggestion"), [("ctv", "cctv"), ("Narration", "narration"), ("scren", "screen")]
)
def test_a_one_word_prompt_that_is_no_preset_is_flagged_as_a_likely_typo(
    typed: str, suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    warn_if_prompt_looks_like_a_preset_typo(typed)
    err = capsys.readouterr().err
    assert f"--prompt {typed!r} is not a preset" in err and f"Did you mean {suggestion!r}?" in err


@pytest.mark.parametrize("prompt", ["cctv", "narration", "Describe who enters the shop and when."])
def test_presets_and_real_prompt_text_pass_silently(prompt: str, capsys: pytest.CaptureFixture[str]) -> None:
    warn_if_prompt_looks_like_a_preset_typo(prompt)
    assert capsys.readouterr().err == ""


def test_source_names_and_urls_with_equals_signs(tmp_path: Path) -> None:
    from stream.pipeline import parse_named_sources

    named = parse_named_sources(["door=rtsp://cam/stream?channel=1", "rtsp://cam/a?x=1", "yard-2=clip.mp4"])
    assert [(s.name, s.source) for s in named] == [
        ("door", "rtsp://cam/stream?channel=1"),
        ("cam1", "rtsp://cam/a?x=1"),  # the URL's own '=' is no name
        ("yard-2", "clip.mp4"),
    ]
    odd_file = tmp_path / "take 1=final.mp4"
    odd_file.write_bytes(b"")
    assert parse_named_sources([str(odd_file)])[0].source == str(odd_file)  # a path, whatever it holds
    with pytest.raises(ConfigError, match=r"'bad name' is not a source name \(NAME=SRC: a letter"):
        parse_named_sources(["bad name=demo"])


def vidnarrate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("vidnarrate")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_version_comes_from_the_package_metadata() -> None:
    done = vidnarrate("--version")
    assert done.returncode == 0 and done.stdout == f"vidnarrate {importlib.metadata.version('vidnarrate')}\n"


@pytest.mark.parametrize("command", ["run", "caption"])
def test_help_says_the_live_and_the_offline_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    defaults = load_config(None)
    live, offline = defaults.sampler, defaults.offline
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {live.window:g} s for run, {offline.window:g} s for caption)" in text
    assert f"(default {live.stride:g} s for run, {offline.stride:g} s for caption)" in text
    assert f"(default {defaults.model.max_slice_nums} for run, {offline.max_slice_nums} for caption)" in text
    if command == "caption":
        assert "--no-progress do not show the progress bar" in text


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")}


@pytest.mark.parametrize(("command", "heading"), [("run", "### Live:"), ("caption", "### Offline:")])
def test_the_readme_synopsis_lists_every_flag_of_help(command: str, heading: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index(heading) :]
    synopsis = section[section.index("```bash") : section.index("```\n", section.index("```bash") + 7)]
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    expected = _flags(subparsers.choices[command]) - {"--help"}
    assert set(re.findall(r"--[a-z][a-z-]*", synopsis)) == expected


def test_loopback_needs_no_token_and_beyond_it_one_is_made() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
    assert choose_token("127.0.0.1", "", no_auth=False) == ("", False)
    assert choose_token("127.0.0.1", "mine", no_auth=False) == ("mine", False)
    assert choose_token("0.0.0.0", "mine", no_auth=False) == ("mine", False)
    made, generated = choose_token("0.0.0.0", "", no_auth=False)
    assert generated and len(made) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", made)
    assert choose_token("0.0.0.0", "", no_auth=False)[0] != made, "random per run"
    assert choose_token("0.0.0.0", "", no_auth=True) == ("", False)
    with pytest.raises(ConfigError, match="--no-auth, but a token is set"):
        choose_token("0.0.0.0", "mine", no_auth=True)


def test_caption_refuses_an_output_it_cannot_write_before_loading_the_model(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0)
    earlier = tmp_path / "earlier.vtt"
    earlier.write_text("an earlier run's captions")
    for out, reason in [
        (clip / "sub.vtt", f"{clip} is a file, not a folder"),
        (Path("/proc/nope/x.vtt"), "nothing can be created in /proc"),
    ]:
        done = vidnarrate("caption", str(clip), "--out", str(earlier), "--out", str(out), "--model", "tiny")
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert done.stderr.startswith(f"vidnarrate: --out {out}: {reason}"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, "one line"
        assert "loaded MiniCPM-V" not in done.stderr, "refused before the model loads"
    assert earlier.read_text() == "an earlier run's captions"
