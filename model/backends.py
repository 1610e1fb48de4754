"""Caption backends: the small interface the live pipeline talks to, and the local implementation.

The pipeline encodes every sampled frame once (``encode_frames``), keeps the embeddings in a bounded
cache, and asks for a caption of a window of them (``describe``) or an answer about them (``ask``).
Both build the model card's video chat: one user turn holding the optional ``context`` text, the
frames, then the prompt, with ``use_image_id=False``. ``on_text`` receives text pieces as they are
generated; their concatenation is the returned text.

Backends are not thread-safe: one inference loop drives one backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from model.modeling import FrameEmbedding, MiniCPMV
from model.tiny import build_tiny_model

log = logging.getLogger(__name__)

Frame = Image.Image | np.ndarray
TextCallback = Callable[[str], None]


@runtime_checkable
class CaptionBackend(Protocol):
    """What the inference loop needs from a captioning model."""

    name: str

    def encode_frames(self, frames: Sequence[Frame], max_slice_nums: int) -> list[FrameEmbedding]:
        """Encode frames once; the results stand for them in later ``describe``/``ask`` calls."""
        ...

    def describe(
        self,
        frames: Sequence[FrameEmbedding],
        prompt: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        sampling: bool = True,
        on_text: TextCallback | None = None,
    ) -> str:
        """A caption of the frames (oldest first) as asked by ``prompt``."""
        ...

    def ask(
        self,
        frames: Sequence[FrameEmbedding],
        question: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        sampling: bool = True,
        on_text: TextCallback | None = None,
    ) -> str:
        """An answer to a user's question about the frames."""
        ...


class LocalBackend:
    """``CaptionBackend`` on an in-process ``MiniCPMV`` (CUDA bf16 + SDPA, or CPU).

    With ``sampling=False`` the official decoding is beam search, which cannot stream: ``on_text`` then
    receives the whole answer once at the end.
    """

    def __init__(self, model: MiniCPMV, name: str = "minicpm-v-2.6") -> None:
        self.model = model
        self.name = name

    def encode_frames(self, frames: Sequence[Frame], max_slice_nums: int) -> list[FrameEmbedding]:
        return self.model.encode_frames(frames, max_slice_nums=max_slice_nums)

    def describe(
        self,
        frames: Sequence[FrameEmbedding],
        prompt: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        sampling: bool = True,
        on_text: TextCallback | None = None,
    ) -> str:
        return self._video_chat(frames, prompt, context, max_new_tokens, sampling, on_text)

    def ask(
        self,
        frames: Sequence[FrameEmbedding],
        question: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        sampling: bool = True,
        on_text: TextCallback | None = None,
    ) -> str:
        return self._video_chat(frames, question, context, max_new_tokens, sampling, on_text)

    def _video_chat(
        self,
        frames: Sequence[FrameEmbedding],
        text: str,
        context: str | None,
        max_new_tokens: int,
        sampling: bool,
        on_text: TextCallback | None,
    ) -> str:
        content: list[object] = [context] if context else []
        content.extend(frames)
        content.append(text)
        msgs = [{"role": "user", "content": content}]
        stream = on_text is not None and sampling
        answer = self.model.chat(
            msgs, sampling=sampling, stream=stream, max_new_tokens=max_new_tokens, use_image_id=False
        )
        if isinstance(answer, str):
            if on_text is not None and answer:
                on_text(answer)
            return answer
        assert isinstance(answer, Iterator) and on_text is not None
        pieces = []
        for piece in answer:
            pieces.append(piece)
            on_text(piece)
        return "".join(pieces)


def load_backend(spec: str, device: str | torch.device | None = None) -> LocalBackend:
    """``"tiny"`` (the tiny random model, CPU unless ``device`` says otherwise), or a hub id / folder."""
    if spec == "tiny":
        return LocalBackend(build_tiny_model(device=device or "cpu"), name="tiny")
    model = MiniCPMV.from_pretrained(spec, device=device)
    return LocalBackend(model, name=str(spec))
