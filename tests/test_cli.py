"""Command-line helpers that need no process: what the user is told before a run starts."""

from __future__ import annotations

import pytest

from stream.cli import warn_if_prompt_looks_like_a_preset_typo


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
