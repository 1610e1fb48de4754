"""The command line before a run starts: help, version, checks and what the user is told."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from realparts import make_clip

from stream import democlip
from stream.cli import build_parser, resolve_config, resolve_sources
from stream.config import load_config
from stream.errors import ConfigError
from stream.pipeline import NamedSource, inference_options
from stream.preflight import (
    choose_token,
    is_loopback,
    live_windows,
    warn_about_prompt_typos,
    warn_if_windows_too_long,
)
from stream.process import ExitCode
from stream.prompts import load_prompts

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")


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
    assert parse_named_sources(["x.mp4", "demo"]) == [
        NamedSource("cam0", "x.mp4"),
        NamedSource("demo", "demo"),
    ]
    with pytest.raises(ConfigError, match="the name 'door' is used twice"):
        parse_named_sources(["door=a.mp4", "door=b.mp4"])


def _clip(path: Path) -> Path:
    democlip.make_video(path, width=160, height=96, fps=10.0, seconds=1.0)
    return path


def test_per_source_settings_from_the_config_file_and_the_command_line(tmp_path: Path) -> None:
    yard, door = _clip(tmp_path / "yard.mp4"), _clip(tmp_path / "door.mp4")
    cams = tmp_path / "cams.toml"
    cams.write_text(f'[sources.yard]\nurl = "{yard}"\nwindow = 30\n\n[sources.door]\nprompt = "narration"\n')
    args = build_parser().parse_args(
        ["run", "--config", str(cams), "--source", f"door={door}", "--set", "sources.door.prompt=cctv"]
        + ["--prompt", "screen", "--stride", "3", "--model", "tiny"]
    )
    config = resolve_config(args)
    sources, has_demo = resolve_sources(config)
    assert sources == [NamedSource("yard", str(yard)), NamedSource("door", str(door))] and not has_demo
    options = inference_options(config, run_id="r", run_dir="/r", streams={s.name: s.name for s in sources})
    presets = load_prompts()
    assert options.captions.prompt == presets["screen"] and options.captions.stride == 3.0  # the flags
    door_settings, yard_settings = options.stream_captions["door"], options.stream_captions["yard"]
    assert door_settings.prompt == presets["cctv"]  # --set over the file; a source's own over --prompt
    assert (door_settings.window, door_settings.stride) == (16.0, 3.0)
    assert (yard_settings.prompt, yard_settings.window, yard_settings.stride) == (
        presets["screen"],
        30.0,
        3.0,
    )


def test_config_sources_bad_ones_exit_2_naming_the_source_and_key(tmp_path: Path) -> None:
    cams = tmp_path / "cams.toml"
    cams.write_text('[sources.door]\nprompt = "cctv"\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(tmp_path / "runs")}
        return subprocess.run([str(VIDNARRATE), *args], capture_output=True, text=True, timeout=60, env=env)

    no_url = run("run", "--config", str(cams), "--model", "tiny")  # no --source: the file's sources run
    assert no_url.returncode == 2, no_url.stderr
    assert "sources.door: no url (set url in [sources.door] or pass --source door=SRC)" in no_url.stderr
    nothing = run("run", "--model", "tiny")
    assert nothing.returncode == 2 and "no source: pass --source SRC" in nothing.stderr, nothing.stderr
    assert not (tmp_path / "runs").exists(), "nothing was started"


def test_the_demo_source_is_built_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(democlip, "DEMO_SECONDS", 1.0)  # the same clip, shorter: a quick test
    args = build_parser().parse_args(["run", "--source", "demo", "--source", "lobby=demo", "--model", "tiny"])
    sources, has_demo = resolve_sources(resolve_config(args))
    clip = tmp_path / "cache" / "vidnarrate" / f"demo-v{democlip.DEMO_VERSION}.mp4"
    assert has_demo and sources == [NamedSource("demo", str(clip)), NamedSource("lobby", str(clip))]
    assert clip.is_file()


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


def test_every_prompt_of_the_run_that_looks_like_a_preset_typo_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["run", "--source", "door=x.mp4", "--prompt", "scren", "--set", "sources.door.prompt=ctv"]
    )
    warn_about_prompt_typos(resolve_config(args))
    err = capsys.readouterr().err
    assert "--prompt / captions.prompt: 'scren' is not a preset" in err and "Did you mean 'screen'?" in err
    assert "sources.door.prompt: 'ctv' is not a preset" in err and "Did you mean 'cctv'?" in err
    warn_about_prompt_typos(resolve_config(build_parser().parse_args(["run", "--source", "x.mp4"])))
    assert capsys.readouterr().err == ""


def test_caption_of_a_live_source_says_it_is_not_a_file() -> None:
    done = vidnarrate("caption", "rtsp://user:secret@cam.example/stream", "--model", "tiny")
    assert done.returncode == ExitCode.USAGE and "Traceback" not in done.stderr, done.stderr
    assert "is not a file (use `vidnarrate run` for live sources)" in done.stderr
    assert "rtsp:/cam" not in done.stderr and "secret" not in done.stderr, "the URL as given, redacted"


def test_a_source_window_of_its_own_that_cannot_fit_is_warned_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(
        ["run", "--source", "door=x.mp4", "--set", "sources.door.window=60", "--max-slice-nums", "2"]
    )
    config = resolve_config(args)
    assert live_windows(config) == [config.sampler.window, 60.0]
    for window in live_windows(config):
        warn_if_windows_too_long(config, window, config.model.max_slice_nums)
    err = capsys.readouterr().err
    assert "a full 60-s window" in err and f"a full {config.sampler.window:g}-s window" not in err
