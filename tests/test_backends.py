"""model/backends.py on the tiny model: ``yes_probabilities`` (random weights: the values are arbitrary,
so what is checked is that they are the model's own P(yes), batched as one by one, from the cached
embeddings alone) and the text-only ``chat`` that span summaries and questions over the past use (no
frames), streamed, deterministic, refused when over the input limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.backends import NO_WORDS, YES_NO_SUFFIX, YES_WORDS, CaptionBackend, LocalBackend, load_backend
from model.modeling import FrameEmbedding
from model.prompting import neutralize_image_tags

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [
    "Is a person standing at the door?",
    "Fire?",
    "Is it night, and is the street wet with rain after a long storm in the city?",
    "Is there a <image> tag here?",
]


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return load_backend("tiny")


@pytest.fixture(scope="module")
def frames(backend: LocalBackend) -> list[FrameEmbedding]:
    rng = np.random.default_rng(7)
    pixels = [rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(3)]
    return backend.encode_frames(pixels, max_slice_nums=1)


def test_answer_tokens_are_the_first_tokens_of_the_yes_and_no_spellings(backend: LocalBackend) -> None:
    yes, no = backend._answer_ids()
    tokenizer = backend.model.tokenizer
    yes_first = {tokenizer.encode(w)[0] for w in YES_WORDS}
    no_first = {tokenizer.encode(w)[0] for w in NO_WORDS}
    # a first token both answers share (the tiny tokenizer's lone space before " Yes"/" No") says nothing
    assert set(yes) == yes_first - no_first and set(no) == no_first - yes_first
    assert yes and no


def test_probabilities_are_the_model_s_next_token_odds_of_yes_against_no(
    backend: LocalBackend, frames: list[FrameEmbedding]
) -> None:
    scores = backend.yes_probabilities(frames, QUESTIONS)
    assert len(scores) == len(QUESTIONS) and all(0.0 <= s <= 1.0 for s in scores)
    yes, no = backend._answer_ids()
    for question, score in zip(QUESTIONS, scores, strict=True):
        # the same prompt through the model's own single-prompt path, unpadded
        prep = backend.model.prepare(
            [{"role": "user", "content": [*frames, neutralize_image_tags(question) + YES_NO_SUFFIX]}],
            use_image_id=False,
        )
        last = backend.model.logits(prep)[-1].float()
        expected = torch.sigmoid(torch.logsumexp(last[yes], 0) - torch.logsumexp(last[no], 0))
        assert score == pytest.approx(float(expected), abs=1e-4)


def test_one_batched_pass_equals_each_question_alone(
    backend: LocalBackend, frames: list[FrameEmbedding]
) -> None:
    batched = backend.yes_probabilities(frames, QUESTIONS, context="Earlier: a dog ran past.")
    alone = [backend.yes_probabilities(frames, [q], context="Earlier: a dog ran past.")[0] for q in QUESTIONS]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert len(set(batched)) > 1, "different questions, different answers"
    assert backend.yes_probabilities(frames, []) == []


def test_only_cached_embeddings_are_used_no_vision_call_and_the_frames_are_prefilled_once(
    backend: LocalBackend, frames: list[FrameEmbedding], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_vision(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the vision tower ran")

    monkeypatch.setattr(backend.model, "encode_pieces", no_vision)
    monkeypatch.setattr(backend.model.vpm, "forward", no_vision)
    inputs: list[torch.Size] = []

    def record(_module: object, _args: object, kwargs: dict[str, torch.Tensor]) -> None:
        inputs.append(kwargs["inputs_embeds"].shape)

    handle = backend.model.llm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        scores = backend.yes_probabilities(frames, QUESTIONS)
    finally:
        handle.remove()
    assert len(scores) == len(QUESTIONS)
    # the shared prefix (chat header and the frames' 3 x 64 rows) once, then every question's own
    # tail in one batched pass
    (prefix, tails) = inputs
    assert prefix[0] == 1 and prefix[1] > 3 * 64
    assert tails[0] == len(QUESTIONS) and tails[1] < 60


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


# -- batched captions (several streams' windows in one generation) ---------------------------------
def test_a_batch_of_ragged_windows_gets_each_window_s_own_greedy_text_streamed_per_row(
    backend: LocalBackend, frames: list[FrameEmbedding]
) -> None:
    items = [
        (frames[:1], "Describe.", None),
        (frames, "What happens in this video, in detail, from start to end?", "A man walks in."),
        (frames[1:], "Say it.", None),
        (frames[2:] + frames[:1], "Describe the scene.", "Earlier: a dog <image> barks."),
    ]
    for max_new_tokens in (1, 7):
        alone = [backend.describe(f, p, context=c, max_new_tokens=max_new_tokens) for f, p, c in items]
        pieces: list[list[str]] = [[] for _ in items]
        batched = backend.describe_batch(
            items, max_new_tokens=max_new_tokens, on_text=[p.append for p in pieces[:3]] + [None]
        )
        assert batched == alone
        assert ["".join(p) for p in pieces[:3]] == alone[:3] and pieces[3] == []
    assert len(set(alone)) > 1  # the rows' texts differ: none got another's
    beams = backend.describe_batch(items[:2], max_new_tokens=4, decoding="beam")  # not batched: alone
    assert beams == [
        backend.describe(f, p, context=c, max_new_tokens=4, decoding="beam") for f, p, c in items[:2]
    ]
    assert len(backend.describe_batch(items, max_new_tokens=4, decoding="sampling")) == 4


def test_a_row_s_pieces_end_at_its_terminator_while_the_others_go_on() -> None:
    from model.backends import _RowStreamer

    def decode(ids: list[int]) -> str:  # pads (0) and the terminator (9) are no text
        return "".join(chr(ord("a") + i) for i in ids if i not in (0, 9))

    got: list[list[str]] = [[], []]
    rows = _RowStreamer(decode, [got[0].append, got[1].append], {9})
    rows.put(torch.zeros((2, 0), dtype=torch.long))  # the prompt (empty: generation starts from embeddings)
    for step in ([1, 2], [9, 3], [0, 4]):  # row 0 ends at step 2 and is padded after
        rows.put(torch.tensor(step))
    rows.end()
    rows.finish()
    assert got == [["b"], ["c", "d", "e"]]


def test_a_batch_holding_a_prompt_over_the_limit_is_refused_before_any_text(
    backend: LocalBackend, frames: list[FrameEmbedding]
) -> None:
    short = LocalBackend(backend.model, name="tiny", max_inp_length=256)
    pieces: list[str] = []
    with pytest.raises(ValueError, match="max_inp_length"):
        short.describe_batch(
            [(frames[:1], "Describe.", None), (frames[:1], "word " * 400, None)],
            max_new_tokens=4,
            on_text=[pieces.append, pieces.append],
        )
    assert pieces == []
