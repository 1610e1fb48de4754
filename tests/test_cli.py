"""Command-line helpers that need no process: what the user is told before a run starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import warn_if_prompt_looks_like_a_preset_typo
from stream.errors import ConfigError


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
