"""Frame embeddings: encode a frame once, then use it in prompts exactly as its pixels would be used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.modeling import FrameEmbedding, MiniCPMV
from tests.conftest import DATA_DIR

ORACLE = DATA_DIR / "oracle"
FRAMES = [ORACLE / "expected" / "images" / f"video_frame_{i}.png" for i in range(8)]
QUESTION = "Describe the video."
VIDEO = {"use_image_id": False, "max_slice_nums": 2}  # the model card's video settings


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> MiniCPMV:
    return MiniCPMV.from_pretrained(ORACLE / "tiny_minicpmv26", device="cpu")


@pytest.fixture(scope="module")
def frames() -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in FRAMES]


def video_msgs(items: list) -> list[dict]:
    return [{"role": "user", "content": [*items, QUESTION]}]


def greedy(model: MiniCPMV, msgs: list[dict]) -> str:
    return model.chat(msgs, sampling=False, max_new_tokens=8, num_beams=1, repetition_penalty=1.0, **VIDEO)


def test_embedding_path_equals_pixel_path(model: MiniCPMV, frames: list[Image.Image]) -> None:
    """All frames encoded in one call: the same batches as the pixel path, so bit-identical logits."""
    embedded = model.encode_frames(frames, max_slice_nums=2)
    assert [f.n_pieces for f in embedded] == [3] * 8  # 640x360 at max_slice_nums=2: source + 2 tiles
    assert all(f.grid == (2, 1) and f.tgt_sizes == ((24, 43), (34, 30), (34, 30)) for f in embedded)
    assert embedded[0].embeddings.shape == (3, 64, 256)

    pixel_prep = model.prepare(video_msgs(frames), **VIDEO)
    cached_prep = model.prepare(video_msgs(embedded), **VIDEO)
    assert torch.equal(cached_prep.input_ids, pixel_prep.input_ids)
    assert torch.equal(cached_prep.image_bound, pixel_prep.image_bound)
    assert cached_prep.pieces == []  # nothing left to encode
    assert torch.equal(model.logits(cached_prep), model.logits(pixel_prep))

    with np.load(ORACLE / "expected" / "video_8f.npz") as oracle:  # the pixel path's answer
        np.testing.assert_array_equal(cached_prep.input_ids.numpy(), oracle["input_ids"][0])
        assert greedy(model, video_msgs(embedded)) == str(oracle["greedy_text"][0])


def test_frames_encoded_one_by_one_match_the_pixel_path(model: MiniCPMV, frames: list[Image.Image]) -> None:
    """The live pipeline encodes each frame when it arrives: other batches, same answer."""
    one_by_one = [model.encode_frames([frame], max_slice_nums=2)[0] for frame in frames[:3]]
    pixel_prep = model.prepare(video_msgs(frames[:3]), **VIDEO)
    cached_prep = model.prepare(video_msgs(one_by_one), **VIDEO)
    torch.testing.assert_close(model.logits(cached_prep), model.logits(pixel_prep), atol=1e-5, rtol=0)
    pixel_ids = model.generate(
        [pixel_prep], sampling=False, max_new_tokens=8, num_beams=1, repetition_penalty=1.0
    )
    cached_ids = model.generate(
        [cached_prep], sampling=False, max_new_tokens=8, num_beams=1, repetition_penalty=1.0
    )
    assert torch.equal(cached_ids, pixel_ids)


def test_cached_frames_and_pixels_mix_in_one_prompt(model: MiniCPMV, frames: list[Image.Image]) -> None:
    cached = model.encode_frames(frames[1:2], max_slice_nums=2)
    mixed = model.prepare(video_msgs([frames[0], cached[0], frames[2]]), **VIDEO)
    pixels = model.prepare(video_msgs(frames[:3]), **VIDEO)
    assert torch.equal(mixed.input_ids, pixels.input_ids)
    torch.testing.assert_close(model.logits(mixed), model.logits(pixels), atol=1e-5, rtol=0)


def test_numpy_frames_and_layouts(model: MiniCPMV, frames: list[Image.Image]) -> None:
    arrays = [np.asarray(frame) for frame in frames[:2]]
    from_arrays = model.encode_frames(arrays, max_slice_nums=1)
    from_images = model.encode_frames(frames[:2], max_slice_nums=1)
    assert [f.tgt_sizes for f in from_arrays] == [((24, 43),)] * 2  # one piece at max_slice_nums=1
    assert all(f.grid is None and f.max_slice_nums == 1 for f in from_arrays)
    for a, b in zip(from_arrays, from_images, strict=True):
        assert torch.equal(a.embeddings, b.embeddings)
    small = model.encode_frames([np.zeros((100, 80, 3), dtype=np.uint8)], max_slice_nums=2)[0]
    assert small.n_pieces == 1 and small.original_size == (80, 100)
    assert model.encode_frames([]) == []


def test_frame_embedding_is_a_frozen_value(model: MiniCPMV, frames: list[Image.Image]) -> None:
    frame = model.encode_frames(frames[:1], max_slice_nums=2)[0]
    assert isinstance(frame, FrameEmbedding)
    with pytest.raises(AttributeError):
        frame.grid = None  # type: ignore[misc]
    assert (
        frame.embeddings.untyped_storage().nbytes() == frame.embeddings.numel() * 4
    )  # owns no batch storage


@pytest.mark.parametrize(
    "frame,message",
    [
        (
            np.zeros((10, 10), dtype=np.uint8),
            r"frame 0: expected a PIL image or a uint8 RGB array .*\(10, 10\)",
        ),
        (np.zeros((10, 10, 3), dtype=np.float32), "frame 0: expected a PIL image or a uint8 RGB array"),
        ("frame.png", "frame 0: expected a PIL image"),
    ],
)
def test_bad_frames_are_named(model: MiniCPMV, frame: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        model.encode_frames([frame])  # type: ignore[list-item]


def test_embedding_from_another_model_is_rejected(model: MiniCPMV, frames: list[Image.Image]) -> None:
    frame = model.encode_frames(frames[:1], max_slice_nums=1)[0]
    alien = FrameEmbedding(frame.original_size, frame.grid, frame.tgt_sizes, torch.zeros(1, 64, 512), 1)
    with pytest.raises(ValueError, match=r"frame embedding 0 has shape \[1, 64, 512\]"):
        model.logits(model.prepare(video_msgs([alien]), **VIDEO))
