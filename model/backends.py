"""Caption backends: the small interface the live pipeline talks to, and the local implementation.

The pipeline encodes every sampled frame once (``encode_frames``), keeps the embeddings in a bounded
cache, and asks for a caption of a window of them (``describe``) or an answer about them (``ask``).
Both build the model card's video chat: one user turn holding the optional ``context`` text, the
frames, then the prompt, with ``use_image_id=False``; ``chat`` is the same turn without frames (span
summaries and questions over the past, from stored captions). ``on_text`` receives text pieces as they are
generated; their concatenation is the returned text.

Backends are not thread-safe: one inference loop drives one backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from model.generation import generate_ids, stream_text
from model.modeling import FrameEmbedding, MiniCPMV
from model.prompting import neutralize_image_tags
from model.tiny import build_tiny_model

log = logging.getLogger(__name__)

Frame = Image.Image | np.ndarray
TextCallback = Callable[[str], None]


DECODINGS = ("greedy", "sampling", "beam")
# Greedy keeps the official sampling preset's light repetition penalty: deterministic captions that
# do not loop, at the cost of one forward pass per token (beam search costs three).
GREEDY_SETTINGS: dict[str, object] = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.05}


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
        decoding: str = "greedy",
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
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        """An answer to a user's question about the frames."""
        ...

    def chat(
        self,
        text: str,
        *,
        max_new_tokens: int = 512,
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        """The answer to a text-only user turn (no frames): span summaries and questions over the
        past, whose prompts hold the stored captions themselves."""
        ...

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        """From now on, ``describe``/``ask``/``chat`` end early (with what they have) once ``check()`` is
        true: a shutdown need not wait for a long caption on a slow machine."""
        ...


class LocalBackend:
    """``CaptionBackend`` on an in-process ``MiniCPMV`` (CUDA bf16 + SDPA, or CPU).

    ``decoding``: ``"greedy"`` (deterministic, fastest), ``"sampling"`` (the model card's default:
    T 0.7, top-p 0.8, top-k 100) or ``"beam"`` (the card's non-sampling default, 3 beams). Beam search
    cannot stream: ``on_text`` then receives the whole answer once at the end.
    """

    def __init__(self, model: MiniCPMV, name: str = "minicpm-v-2.6", *, max_inp_length: int = 8192) -> None:
        self.model = model
        self.name = name
        self.max_inp_length = max_inp_length
        self._interrupt: Callable[[], bool] | None = None

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        self._interrupt = check

    def encode_frames(self, frames: Sequence[Frame], max_slice_nums: int) -> list[FrameEmbedding]:
        return self.model.encode_frames(frames, max_slice_nums=max_slice_nums)

    def describe(
        self,
        frames: Sequence[FrameEmbedding],
        prompt: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        return self._video_chat(frames, prompt, context, max_new_tokens, decoding, on_text)

    def ask(
        self,
        frames: Sequence[FrameEmbedding],
        question: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        return self._video_chat(frames, question, context, max_new_tokens, decoding, on_text)

    def chat(
        self,
        text: str,
        *,
        max_new_tokens: int = 512,
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        return self._video_chat((), text, None, max_new_tokens, decoding, on_text)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for this model's tokenizer: what fits ``max_inp_length`` (prompts built
        from stored captions are packed with it). Not part of the Protocol: a backend without it is
        measured by an estimate (:func:`stream.summaries.token_counter`)."""
        return len(self.model.tokenizer.encode(text))

    def _video_chat(
        self,
        frames: Sequence[FrameEmbedding],
        text: str,
        context: str | None,
        max_new_tokens: int,
        decoding: str,
        on_text: TextCallback | None,
    ) -> str:
        if decoding not in DECODINGS:
            raise ValueError(f"decoding {decoding!r} is not one of {', '.join(DECODINGS)}")
        # Questions come from clients and context from earlier model output: either may hold an
        # image tag, which must be read as text, not break the prompt.
        content: list[object] = [neutralize_image_tags(context)] if context else []
        content.extend(frames)
        content.append(neutralize_image_tags(text))
        msgs = [{"role": "user", "content": content}]
        prep = self.model.prepare(msgs, use_image_id=False, max_inp_length=self.max_inp_length)
        request = self.model.generation_request([prep], decoding == "sampling", max_new_tokens)
        if decoding == "greedy":
            request = replace(request, kwargs=dict(GREEDY_SETTINGS))
        request = replace(request, interrupt=self._interrupt)
        with torch.inference_mode():
            if on_text is None or decoding == "beam":
                answer = self.model.decode(generate_ids(self.model.llm, request)[0].tolist())
                if on_text is not None and answer:
                    on_text(answer)
                return answer
            pieces = []
            for piece in stream_text(self.model.llm, request, self.model.decode):
                pieces.append(piece)
                on_text(piece)
        return "".join(pieces)


def load_backend(
    spec: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    max_inp_length: int = 8192,
) -> LocalBackend:
    """``"tiny"`` (the tiny random model, CPU unless ``device`` says otherwise), or a hub id / folder."""
    if spec == "tiny":
        return LocalBackend(
            build_tiny_model(device=device or "cpu"), name="tiny", max_inp_length=max_inp_length
        )
    model = MiniCPMV.from_pretrained(spec, device=device, dtype=dtype)
    return LocalBackend(model, name=str(spec), max_inp_length=max_inp_length)
