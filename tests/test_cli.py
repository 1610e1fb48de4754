"""Command-line helpers that need no process: what the user is told before a run starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream import democlip
from stream.cli import build_parser, resolve_config, resolve_sources
from stream.config import load_prompts
from stream.errors import ConfigError
from stream.pipeline import NamedSource, inference_options

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
    typo = run("run", "--source", "x.mp4", "--set", "sources.cam0.prompt=ctv", "--model", "tiny")
    assert typo.returncode == 2 and "sources.cam0.prompt: 'ctv' is not a preset" in typo.stderr, typo.stderr
    assert "did you mean 'cctv'?" in typo.stderr
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
