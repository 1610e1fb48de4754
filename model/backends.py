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
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

from model.generation import (
    GenerationRequest,
    TextPieces,
    generate_ids,
    ragged_prefill,
    run_generate,
    stream_text,
)
from model.modeling import FrameEmbedding, MiniCPMV
from model.processing import Prepared
from model.prompting import neutralize_image_tags
from model.tiny import build_tiny_model

log = logging.getLogger(__name__)

Frame = Image.Image | np.ndarray
TextCallback = Callable[[str], None]
CaptionItem = tuple[Sequence[FrameEmbedding], str, str | None]  # frames, prompt, context


DECODINGS = ("greedy", "sampling", "beam")
# How a yes/no question is put (the answer is read from the first token the model would write) and
# the spellings of the two answers whose first tokens are summed. In Qwen2's vocabulary (MiniCPM-V
# 2.6) "Yes", "yes", " Yes", " yes" (and the no's) are single tokens; the ids are read from the tokenizer.
YES_NO_SUFFIX = " Answer yes or no."
YES_WORDS = ("Yes", "yes", " Yes", " yes", "YES")
NO_WORDS = ("No", "no", " No", " no", "NO")
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

    def yes_probabilities(
        self, frames: Sequence[FrameEmbedding], questions: Sequence[str], *, context: str | None = None
    ) -> list[float]:
        """P(yes) in [0, 1] for each yes/no question about the frames, in order (alert rules)."""
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
        self._yes_no: tuple[list[int], list[int]] | None = None

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

    def yes_probabilities(
        self, frames: Sequence[FrameEmbedding], questions: Sequence[str], *, context: str | None = None
    ) -> list[float]:
        """P(yes) for each question, from the cached ``frames`` (no vision call, no decoding).

        Each question is asked as the captions are (optional context, the frames, the question and
        :data:`YES_NO_SUFFIX`); the next-token logits after the assistant prompt are compared over the
        first tokens of :data:`YES_WORDS` and :data:`NO_WORDS` only: P(yes) = softmax restricted to
        those tokens, the yes spellings summed against the no spellings.

        Every question's prompt begins with the same tokens (the chat header, the context, the
        frames' hundreds of embedding rows), so that shared prefix is prefilled once and its KV cache
        repeated for every question; the questions' own tails then go through in one batched pass
        (left-padded between the prefix and each tail, the padding masked out, positions counted
        over the real tokens only). Sixteen rules cost about one window prefill, not sixteen."""
        if not questions:
            return []
        yes_ids, no_ids = self._answer_ids()
        head: list[object] = [neutralize_image_tags(context)] if context else []
        preps = [
            self.model.prepare(
                [{"role": "user", "content": [*head, *frames, neutralize_image_tags(q) + YES_NO_SUFFIX]}],
                use_image_id=False,
                max_inp_length=self.max_inp_length,
            )
            for q in questions
        ]
        ids = [p.input_ids for p in preps]
        shared = min(_common_prefix(ids[0], other) for other in ids) if len(ids) > 1 else len(ids[0])
        shared = min(shared, min(len(i) for i in ids) - 1)  # each row keeps a token of its own
        with torch.inference_mode():
            visual = self.model.visual_embeddings(preps[0])
            embeds, mask = self.model.embed(preps, [visual] * len(preps))
            width = embeds.shape[1]
            rows = [embeds[b, width - len(i) :] for b, i in enumerate(ids)]  # unpadded, per question
            cache = DynamicCache()
            llm = self.model.llm
            prefix_mask = mask[0, width - len(ids[0]) :][:shared].unsqueeze(0)
            llm(
                inputs_embeds=rows[0][:shared].unsqueeze(0),
                attention_mask=prefix_mask,
                position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache.batch_repeat_interleave(len(questions))
            tails = [r[shared:] for r in rows]
            longest = max(len(t) for t in tails)
            tail_embeds = embeds.new_zeros((len(tails), longest, embeds.shape[-1]))
            tail_mask = mask.new_zeros((len(tails), longest))
            for b, (tail, i) in enumerate(zip(tails, ids, strict=True)):
                tail_embeds[b, longest - len(tail) :] = tail
                tail_mask[b, longest - len(tail) :] = mask[b, width - len(i) + shared :]
            full_mask = torch.cat([prefix_mask.expand(len(tails), -1), tail_mask], dim=1)
            positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            out = llm(
                inputs_embeds=tail_embeds,
                attention_mask=full_mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :].float()
            yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
            no = torch.logsumexp(logits[:, no_ids], dim=-1)
            return [float(p) for p in torch.sigmoid(yes - no).cpu()]

    def _answer_ids(self) -> tuple[list[int], list[int]]:
        """The first token of each yes and no spelling (a token both begin with counts for neither)."""
        if self._yes_no is None:
            tokenizer = self.model.tokenizer

            def first_tokens(words: Sequence[str]) -> set[int]:
                return {ids[0] for ids in (tokenizer.encode(w) for w in words) if ids}

            yes, no = first_tokens(YES_WORDS), first_tokens(NO_WORDS)
            yes, no = yes - no, no - yes
            if not yes or not no:
                raise ValueError(f"the tokenizer of {self.name} has no distinct yes and no answer tokens")
            self._yes_no = (sorted(yes), sorted(no))
        return self._yes_no

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
        request = self._request([self._prepare(frames, text, context)], max_new_tokens, decoding)
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

    def describe_batch(
        self,
        items: Sequence[CaptionItem],
        *,
        max_new_tokens: int = 256,
        decoding: str = "greedy",
        on_text: Sequence[TextCallback | None] | None = None,
    ) -> list[str]:
        """Captions of several windows (of different streams) in one batched generation: each item is
        ``(frames, prompt, context)`` as :meth:`describe` takes them, ``on_text[i]`` gets item i's
        pieces as they are generated. Each prompt is prefilled alone (no padding computed:
        :func:`~model.generation.ragged_prefill`), then the rows decode together, left-padded to one
        length (the padding masked, positions counted over the real tokens); a row that ends waits
        padded while the others go on.
        Greedy gives each window the text :meth:`describe` would. Beam search is not batched (three
        beams per row): its items run one after another. A prompt the model refuses raises before
        anything is generated (callers may then run the items alone to learn which one it was)."""
        callbacks = list(on_text) if on_text is not None else [None] * len(items)
        if len(callbacks) != len(items):
            raise ValueError(f"describe_batch: {len(callbacks)} callbacks for {len(items)} items")
        if decoding == "beam" or len(items) == 1:
            return [
                self._video_chat(frames, prompt, context, max_new_tokens, decoding, callback)
                for (frames, prompt, context), callback in zip(items, callbacks, strict=True)
            ]
        preps = [self._prepare(frames, prompt, context) for frames, prompt, context in items]
        request = self._request(preps, max_new_tokens, decoding)
        kwargs = request.call_kwargs(ragged_prefill(self.model.llm, request))
        rows = None
        if any(c is not None for c in callbacks):  # else no per-step copy of the tokens to the host
            rows = _RowStreamer(self.model.decode, callbacks, set(request.eos_token_ids))
            kwargs["streamer"] = rows
        ids = run_generate(self.model.llm, kwargs)
        texts = [self.model.decode(row.tolist()) for row in ids]
        if rows is not None:
            rows.finish()
        return texts

    def _prepare(self, frames: Sequence[FrameEmbedding], text: str, context: str | None) -> Prepared:
        # Questions come from clients and context from earlier model output: either may hold an
        # image tag, which must be read as text, not break the prompt.
        content: list[object] = [neutralize_image_tags(context)] if context else []
        content.extend(frames)
        content.append(neutralize_image_tags(text))
        msgs = [{"role": "user", "content": content}]
        return self.model.prepare(msgs, use_image_id=False, max_inp_length=self.max_inp_length)

    def _request(self, preps: Sequence[Prepared], max_new_tokens: int, decoding: str) -> GenerationRequest:
        if decoding not in DECODINGS:
            raise ValueError(f"decoding {decoding!r} is not one of {', '.join(DECODINGS)}")
        request = self.model.generation_request(preps, decoding == "sampling", max_new_tokens)
        if decoding == "greedy":
            request = replace(request, kwargs=dict(GREEDY_SETTINGS))
        return replace(request, interrupt=self._interrupt)


class _RowStreamer(BaseStreamer):
    """Hands each row of a batched generation its own text pieces (``generate`` calls :meth:`put`
    with one new token per row every step, in the generating thread); a row's pieces stop at its
    terminator (the padding after it is not text)."""

    def __init__(
        self, decode: Callable[[Sequence[int]], str], callbacks: Sequence[TextCallback | None], eos: set[int]
    ) -> None:
        self._rows = [None if c is None else TextPieces(decode) for c in callbacks]
        self._callbacks = callbacks
        self._eos = eos

    def put(self, value: torch.Tensor) -> None:
        if value.ndim != 1:
            return  # the first call carries the (empty) prompt ids
        for b, token in enumerate(value.tolist()):
            pieces, callback = self._rows[b], self._callbacks[b]
            if pieces is None or callback is None:
                continue
            if token in self._eos:
                self._rows[b] = None
                self._send(callback, pieces.finish())
            else:
                self._send(callback, pieces.push([token]))

    def end(self) -> None:
        """The rows still open are closed by :meth:`finish`, also when no token came at all."""

    def finish(self) -> None:
        for b, pieces in enumerate(self._rows):
            callback = self._callbacks[b]
            if pieces is not None and callback is not None:
                self._send(callback, pieces.finish())
        self._rows = [None] * len(self._rows)

    @staticmethod
    def _send(callback: TextCallback, piece: str) -> None:
        if piece:
            callback(piece)


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading ids two prompts share."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if len(differ) else n


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
