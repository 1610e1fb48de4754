"""stream/actions.py: an :class:`Encode` of several streams' frames on the real tiny model, one vision
call for all of them, and what a frame the model refuses costs (only itself)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from model.backends import LocalBackend, load_backend
from stream.actions import Encode, EncodeFrame

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Counting:
    """The real tiny backend, counting its vision calls and the frames each carried."""

    def __init__(self, real: LocalBackend) -> None:
        self.real, self.name = real, real.name
        self.calls: list[int] = []

    def encode_frames(self, frames: list[np.ndarray], max_slice_nums: int) -> list[object]:
        self.calls.append(len(frames))
        return self.real.encode_frames(frames, max_slice_nums)


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return load_backend("tiny")


def frames(count: int) -> list[EncodeFrame]:
    rng = np.random.default_rng(3)
    return [
        EncodeFrame(f"cam{i % 3}", i, rng.integers(0, 255, (72 + 8 * i, 128, 3), dtype=np.uint8))
        for i in range(count)
    ]


def test_the_frames_of_several_streams_are_encoded_in_one_call_as_each_alone(backend: LocalBackend) -> None:
    counting = Counting(backend)
    batch = Encode(tuple(frames(5)), max_slice_nums=1)
    together = batch.run_each_on(counting)  # type: ignore[arg-type]
    assert counting.calls == [5]
    for frame, embedding in zip(batch.frames, together, strict=True):
        (alone,) = backend.encode_frames([frame.pixels], max_slice_nums=1)
        assert embedding is not None and embedding.tgt_sizes == alone.tgt_sizes
        torch.testing.assert_close(embedding.embeddings, alone.embeddings, atol=1e-5, rtol=1e-5)


def test_a_frame_the_model_refuses_loses_only_itself(
    backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    good = frames(3)
    bad = EncodeFrame("cam1", 99, np.zeros((72, 128, 3), np.float32))  # not uint8: the model refuses it
    counting = Counting(backend)
    batch = Encode((good[0], bad, good[1], good[2]), max_slice_nums=1)
    with caplog.at_level(logging.WARNING, logger="stream.actions"):
        result = batch.run_each_on(counting)  # type: ignore[arg-type]
    assert counting.calls == [4, 1, 1, 1, 1]  # the batch, then each frame alone
    assert result[1] is None
    for frame, embedding in zip((good[0], good[1], good[2]), (result[0], result[2], result[3]), strict=True):
        (alone,) = backend.encode_frames([frame.pixels], max_slice_nums=1)
        assert embedding is not None
        torch.testing.assert_close(embedding.embeddings, alone.embeddings, atol=1e-5, rtol=1e-5)
    assert "stream cam1: frame 99 not encoded" in caplog.text and "uint8" in caplog.text
