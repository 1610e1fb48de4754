"""model/backends.py's text-only ``chat`` on the real tiny model: the turn span summaries and
questions over the past use (no frames), streamed, deterministic, refused when over the input limit."""

from __future__ import annotations

import pytest

from model.backends import CaptionBackend, LocalBackend, load_backend


@pytest.fixture(scope="module")
def tiny() -> LocalBackend:
    return load_backend("tiny", max_inp_length=300)


def test_chat_is_a_text_only_turn_streamed_piece_by_piece_and_deterministic(tiny: LocalBackend) -> None:
    assert isinstance(tiny, CaptionBackend)
    prompt = "[0:00:00-0:00:08] a man opens the door\nSummarise what happens."
    pieces: list[str] = []
    streamed = tiny.chat(prompt, max_new_tokens=12, on_text=pieces.append)
    assert streamed and "".join(pieces) == streamed
    assert tiny.chat(prompt, max_new_tokens=12) == streamed, "greedy: the same text with or without streaming"
    assert tiny.count_tokens(prompt) == len(tiny.model.tokenizer.encode(prompt))


def test_a_chat_over_the_input_limit_is_refused_as_a_value_error(tiny: LocalBackend) -> None:
    with pytest.raises(ValueError, match="over max_inp_length=300: it has no images"):
        tiny.chat("word " * 400, max_new_tokens=4)
    with pytest.raises(ValueError, match="decoding 'fast' is not one of"):
        tiny.chat("hello", decoding="fast")
