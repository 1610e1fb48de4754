"""The tiny random model, chat semantics (defaults, overrides, streaming, long prompts) and backends."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from model import MiniCPMV, PromptTooLongError, build_tiny_model, load_backend
from model.backends import CaptionBackend, LocalBackend
from model.generation import BEAM_DEFAULTS, SAMPLING_DEFAULTS, TextPieces, generation_kwargs
from model.tiny import tiny_state_dict, write_tiny_checkpoint
from tests.conftest import DATA_DIR

FRAME = DATA_DIR / "oracle" / "expected" / "images" / "img_64x64.png"  # one piece: fast


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> MiniCPMV:
    return build_tiny_model(seed=0)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.open(FRAME).convert("RGB")


def ask(image: Image.Image, text: str = "What is in this image?") -> list[dict]:
    return [{"role": "user", "content": [image, text]}]


# ---------------------------------------------------------------------------------------------- tiny


def test_tiny_weights_are_deterministic_by_seed() -> None:
    a, b, c = tiny_state_dict(1), tiny_state_dict(1), tiny_state_dict(2)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1)
    assert a["resampler.query"].abs().min() > 0  # every weight random, query included


def test_tiny_checkpoint_is_a_complete_official_layout(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "tiny", seed=5)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "preprocessor_config.json", "model.safetensors", "tokenizer.json"} <= names
    model = MiniCPMV.from_pretrained(folder, device="cpu")
    stored = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    assert len(model.tokenizer) == model.config.text.vocab_size == 536


def test_tiny_model_chats_about_images_and_text(tiny: MiniCPMV, image: Image.Image) -> None:
    text = tiny.chat(ask(image), sampling=False, max_new_tokens=6)
    assert isinstance(text, str)
    assert tiny.chat(ask(image), sampling=False, max_new_tokens=6) == text  # beam search is deterministic
    few_shot = [
        {"role": "user", "content": [image, "Name it."]},
        {"role": "assistant", "content": "A street."},
        {"role": "user", "content": [image, "And this one?"]},
    ]
    prep = tiny.prepare(few_shot)
    assert prep.n_pieces == 2 and prep.chat_text.count("<|im_start|>assistant") == 2
    assert isinstance(tiny.chat(few_shot, max_new_tokens=4), str)


# ---------------------------------------------------------------------------------------- generation


def test_generation_defaults_and_overrides() -> None:
    assert generation_kwargs(True, 0, {}) == dict(SAMPLING_DEFAULTS)
    assert SAMPLING_DEFAULTS == {
        "top_p": 0.8,
        "top_k": 100,
        "temperature": 0.7,
        "do_sample": True,
        "repetition_penalty": 1.05,
    }
    assert (
        generation_kwargs(False, 0, {}) == dict(BEAM_DEFAULTS) == {"num_beams": 3, "repetition_penalty": 1.2}
    )
    # only keys already present can be overridden; num_beams is dropped when sampling
    assert generation_kwargs(True, 0, {"temperature": 0.1, "num_beams": 5}) == {
        **SAMPLING_DEFAULTS,
        "temperature": 0.1,
    }
    assert generation_kwargs(False, 4, {"num_beams": 1}) == {
        "num_beams": 1,
        "repetition_penalty": 1.2,
        "min_new_tokens": 4,
    }


def test_sampling_follows_the_seed(tiny: MiniCPMV, image: Image.Image) -> None:
    torch.manual_seed(11)
    first = tiny.chat(ask(image), max_new_tokens=12)
    torch.manual_seed(11)
    assert tiny.chat(ask(image), max_new_tokens=12) == first


def test_stream_pieces_concatenate_to_the_non_stream_text(tiny: MiniCPMV, image: Image.Image) -> None:
    for seed in (1, 2):
        torch.manual_seed(seed)
        whole = tiny.chat(ask(image), max_new_tokens=24)
        torch.manual_seed(seed)
        pieces = list(tiny.chat(ask(image), stream=True, max_new_tokens=24))
        assert "".join(pieces) == whole
        assert all(pieces)
    greedy = dict(sampling=False, num_beams=1, max_new_tokens=16)
    assert "".join(tiny.chat(ask(image), stream=True, **greedy)) == tiny.chat(ask(image), **greedy)


def test_closing_a_stream_early_stops_its_thread(tiny: MiniCPMV, image: Image.Image) -> None:
    before = set(threading.enumerate())
    stream = tiny.chat(ask(image), stream=True, max_new_tokens=2000, min_new_tokens=2000)
    next(stream)  # generation runs
    assert any(t.name == "minicpmv-stream" for t in threading.enumerate())
    stream.close()
    assert set(threading.enumerate()) <= before


def test_stream_errors_reach_the_caller(
    tiny: MiniCPMV, image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="cannot stream beam search"):
        tiny.chat(ask(image), sampling=False, stream=True)

    def out_of_memory(**kwargs: object) -> None:
        # A failure inside generation (a GPU running out of memory mid-caption: not reachable here).
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tiny.llm, "generate", out_of_memory)
    bad = tiny.chat(ask(image), stream=True, max_new_tokens=4)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(bad)
    assert not any(t.name == "minicpmv-stream" for t in threading.enumerate())


def test_text_pieces_hold_back_what_may_still_change() -> None:
    """Trailing whitespace (stripped at the end) and U+FFFD (an incomplete UTF-8 char) wait for more."""
    texts = {(1,): " a", (1, 2): " a \ufffd", (1, 2, 3): " a \u00e9", (1, 2, 3, 4): " a \u00e9 "}

    def decode(ids: list[int]) -> str:
        return texts[tuple(ids)].strip()

    pieces = TextPieces(decode)
    out = [pieces.push([1]), pieces.push([2]), pieces.push([3]), pieces.push([4]), pieces.finish()]
    assert out == ["a", "", " \u00e9", "", ""]
    assert "".join(out) == decode([1, 2, 3, 4])


def test_image_keyword_goes_before_the_first_text_as_in_the_model_card(
    tiny: MiniCPMV, image: Image.Image
) -> None:
    greedy = {"sampling": False, "num_beams": 1, "max_new_tokens": 8}
    msgs = [{"role": "user", "content": "What is in this image?"}]
    with_image = tiny.chat(image=image, msgs=msgs, tokenizer=object(), **greedy)  # the card passes one
    assert with_image == tiny.chat(ask(image), **greedy)
    assert tiny.prepare(msgs).image_bound.shape[0] == 0  # the caller's msgs were not changed
    listed = [{"role": "user", "content": [image, "What is in this image?"]}]
    assert tiny.chat(image=image, msgs=listed, **greedy) == tiny.chat(listed, **greedy)  # list: kept as is
    with pytest.raises(ValueError, match="one conversation"):
        tiny.chat([msgs, msgs], image=image)


@pytest.mark.parametrize(
    ("msgs", "message"),
    [
        ("What is this?", "not valid JSON: give a list of"),
        ([{"role": "user", "content": [torch.zeros(3, 8, 8), "What?"]}], r"content\[0\] is a Tensor of"),
        (
            [{"role": "user", "content": [np.zeros((480, 640, 3), np.uint8), "What?"]}],
            r"ndarray of shape \(480, 640, 3\) and dtype uint8 \(a video frame\? pass PIL.Image.fromarray",
        ),
    ],
)
def test_messages_of_the_wrong_kind_are_named(tiny: MiniCPMV, msgs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny.chat(msgs)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": None}, "max_new_tokens must be a positive integer"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"sampling": False, "num_beams": 0}, "num_beams must be a positive integer"),
        ({"top_p": 5.0}, r"top_p must be a number in \(0, 1\], got 5.0"),
        ({"top_p": 0}, "top_p must be a number in"),
        ({"temperature": -1}, "temperature must be a positive number, got -1"),
        ({"temperature": "hot"}, "temperature must be a positive number, got 'hot'"),
        ({"top_k": -3}, "top_k must be a non-negative integer"),
        ({"sampling": False, "repetition_penalty": 0}, "repetition_penalty must be a positive number"),
    ],
)
def test_bad_generation_settings_fail_before_any_model_work(
    tiny: MiniCPMV, image: Image.Image, settings: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the vision tower ran before the settings were checked")

    monkeypatch.setattr(tiny, "encode_pieces", must_not_run)
    with pytest.raises(ValueError, match=message):
        tiny.chat(ask(image), **settings)


def test_prompt_too_long_surfaces_through_chat(tiny: MiniCPMV, image: Image.Image) -> None:
    msgs = [{"role": "user", "content": [image] * 3 + ["Describe."]}]
    with pytest.raises(PromptTooLongError, match="max_inp_length=200"):
        tiny.chat(msgs, max_inp_length=200, max_slice_nums=2)
    with pytest.raises(PromptTooLongError, match="it has no images: shorten the text"):
        tiny.chat([{"role": "user", "content": "word " * 300}], max_inp_length=200)


def test_batched_chat_returns_one_answer_per_conversation(tiny: MiniCPMV, image: Image.Image) -> None:
    batch = [ask(image), [{"role": "user", "content": "Hello there, how are you?"}]]
    answers = tiny.chat(batch, sampling=False, num_beams=1, max_new_tokens=5)
    singles = [tiny.chat(c, sampling=False, num_beams=1, max_new_tokens=5) for c in batch]
    assert answers == singles
    with pytest.raises(ValueError, match="one conversation"):
        tiny.chat(batch, stream=True)


# ------------------------------------------------------------------------------------------ backends


def test_load_backend_tiny_needs_no_files_outside_the_package(image: Image.Image) -> None:
    backend = load_backend("tiny")
    assert isinstance(backend, CaptionBackend) and isinstance(backend, LocalBackend)
    assert backend.name == "tiny"
    frames = backend.encode_frames([image, image], max_slice_nums=1)
    assert [f.n_pieces for f in frames] == [1, 1]
    video = [{"role": "user", "content": [*frames, "Describe the video."]}]

    seen: list[str] = []
    torch.manual_seed(4)
    caption = backend.describe(
        frames, "Describe the video.", max_new_tokens=10, decoding="sampling", on_text=seen.append
    )
    assert "".join(seen) == caption
    torch.manual_seed(4)
    assert backend.describe(frames, "Describe the video.", max_new_tokens=10, decoding="sampling") == caption
    torch.manual_seed(4)
    assert (
        backend.model.chat(video, max_new_tokens=10, use_image_id=False) == caption
    )  # the card's video chat

    seen.clear()
    question = [{"role": "user", "content": ["Earlier: a street.", *frames, "Is anyone there?"]}]
    answer = backend.ask(
        frames,
        "Is anyone there?",
        context="Earlier: a street.",
        decoding="beam",
        max_new_tokens=6,
        on_text=seen.append,
    )
    assert answer == backend.model.chat(question, sampling=False, max_new_tokens=6, use_image_id=False)

    # Clients' questions and earlier captions are text: image tags in them are read, never obeyed.
    tagged = backend.ask(frames, "Is </image> anyone <slice>?", context="A <image> street.", max_new_tokens=6)
    as_text = ["A \u2039image\u203a street.", *frames, "Is \u2039/image\u203a anyone \u2039slice\u203a?"]
    greedy = {"sampling": False, "num_beams": 1, "repetition_penalty": 1.05}
    plain = [{"role": "user", "content": as_text}]
    assert tagged == backend.model.chat(plain, max_new_tokens=6, use_image_id=False, **greedy)
    assert seen == ([answer] if answer else [])  # beam search cannot stream: one piece at the end


@pytest.mark.parametrize("streamed", [False, True])
def test_an_interrupt_ends_a_caption_early(image: Image.Image, streamed: bool) -> None:
    """What a shutdown does to a caption in progress: generation stops at the next token."""
    backend = load_backend("tiny")
    frames = backend.encode_frames([image], max_slice_nums=1)
    on_text = (lambda piece: None) if streamed else None
    full = backend.describe(frames, "Describe.", max_new_tokens=40, on_text=on_text)
    steps = iter(range(1000))
    backend.set_interrupt(lambda: next(steps) >= 3)
    cut = backend.describe(frames, "Describe.", max_new_tokens=40, on_text=on_text)
    assert len(backend.model.tokenizer.encode(cut)) <= 5 < len(backend.model.tokenizer.encode(full))
    assert full.startswith(cut)
    backend.set_interrupt(None)
    assert backend.describe(frames, "Describe.", max_new_tokens=40, on_text=on_text) == full


def test_no_transformers_warnings_reach_the_user_for_what_we_do_on_purpose(
    tiny: MiniCPMV, image: Image.Image, caplog: pytest.LogCaptureFixture
) -> None:
    """Batched sampling replaces transformers' repetition-penalty processor on purpose, and an
    over-long prompt is refused with our own advice: neither may be preceded by transformers' alarms."""
    import transformers

    transformers.logging.enable_propagation()  # so caplog sees transformers' records
    try:
        with caplog.at_level(logging.WARNING):
            tiny.chat([ask(image), ask(image)], max_new_tokens=3)
            with pytest.raises(PromptTooLongError):
                tiny.chat([{"role": "user", "content": "word " * 40_000}])
    finally:
        transformers.logging.disable_propagation()
    shown = [r.getMessage() for r in caplog.records if r.name.startswith("transformers")]
    assert not any("RepetitionPenaltyLogitsProcessor" in m or "Token indices" in m for m in shown), shown
