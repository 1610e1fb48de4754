"""Generation for ``MiniCPMV.chat``: the official defaults, HF ``generate`` on embeddings, and streaming.

The official ``chat()`` semantics (MODEL_SPEC §8.2), kept exactly:
* ``sampling=True``: top-p 0.8, top-k 100, temperature 0.7, repetition penalty 1.05;
  ``sampling=False``: beam search with 3 beams and repetition penalty 1.2;
* keyword overrides replace only keys already in the chosen set (others are dropped, as officially,
  but logged here); ``min_new_tokens`` is added only when > 0;
* always ``pad_token_id=0`` and both terminators as ``eos_token_id``.

Generation starts from ``inputs_embeds``, so ``generate`` returns only new tokens and the repetition
penalty sees only generated tokens, as in the official code.

Streaming runs ``generate`` in one worker thread that feeds token ids through a queue. Closing the
generator early (``break``, ``close()``, garbage collection) sets a stop flag that a stopping criterion
checks every step, then joins the thread, so no thread outlives the stream.
"""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer
from transformers.generation.streamers import BaseStreamer

log = logging.getLogger(__name__)


class _OurPenaltyIsMeant(logging.Filter):
    """transformers warns when a custom RepetitionPenaltyLogitsProcessor replaces its own; ours does so
    on purpose (see GenerationRequest.call_kwargs), so the warning would only alarm users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RepetitionPenaltyLogitsProcessor" not in record.getMessage()


logging.getLogger("transformers.generation.utils").addFilter(_OurPenaltyIsMeant())

SAMPLING_DEFAULTS: Mapping[str, Any] = {
    "top_p": 0.8,
    "top_k": 100,
    "temperature": 0.7,
    "do_sample": True,
    "repetition_penalty": 1.05,
}
BEAM_DEFAULTS: Mapping[str, Any] = {"num_beams": 3, "repetition_penalty": 1.2}
PAD_ID = 0


def generation_kwargs(sampling: bool, min_new_tokens: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The official decoding settings for ``sampling``, with ``overrides`` applied to known keys only."""
    kwargs = dict(SAMPLING_DEFAULTS if sampling else BEAM_DEFAULTS)
    dropped = sorted(k for k in overrides if k not in kwargs)
    if dropped:
        log.warning(
            "ignoring generation settings %s: with sampling=%s only %s can be overridden",
            dropped,
            sampling,
            sorted(kwargs),
        )
    kwargs.update({k: v for k, v in overrides.items() if k in kwargs})
    if min_new_tokens > 0:
        kwargs["min_new_tokens"] = min_new_tokens
    return kwargs


def check_generation_settings(
    sampling: bool, stream: bool, max_new_tokens: Any, overrides: Mapping[str, Any]
) -> None:
    """Reject settings ``generate`` would fail on late (after the vision tower ran) or obscurely."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    beams = overrides.get("num_beams", BEAM_DEFAULTS["num_beams"]) if not sampling else 1
    if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
        raise ValueError(f"num_beams must be a positive integer, got {beams!r}")
    if stream and beams > 1:
        raise ValueError(
            "stream=True cannot stream beam search: pass sampling=True, or sampling=False with num_beams=1"
        )
    _check_number(overrides, "top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
    _check_number(overrides, "temperature", lambda v: v > 0, "a positive number")
    _check_number(overrides, "repetition_penalty", lambda v: v > 0, "a positive number")
    top_k = overrides.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer (0: no top-k), got {top_k!r}")


def _check_number(overrides: Mapping[str, Any], name: str, valid: Callable[[float], bool], what: str) -> None:
    value = overrides.get(name)
    if value is None:  # None unsets a setting, as transformers takes it (greedy: top_p=None ...)
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not valid(float(value)):
        raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """One ``generate`` call: left-padded embeddings and what the official code always passes."""

    inputs_embeds: torch.Tensor  # [B, T, D]
    attention_mask: torch.Tensor  # [B, T], long
    eos_token_ids: tuple[int, ...]
    max_new_tokens: int
    kwargs: Mapping[str, Any]
    interrupt: Callable[[], bool] | None = None  # checked every step: True ends generation early

    def call_kwargs(self, cache: Cache | None = None) -> dict[str, Any]:
        """``generate``'s arguments; ``cache``: the prompt's KV cache but its last token, already computed
        (:func:`ragged_prefill`). Greedy and sampling decode into a :class:`ReservedLayer` cache."""
        kwargs = {
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "pad_token_id": PAD_ID,
            "eos_token_id": list(self.eos_token_ids),
            "max_new_tokens": self.max_new_tokens,
            **self.kwargs,
        }
        penalty = float(self.kwargs.get("repetition_penalty", 1.0))
        if penalty != 1.0 and self.inputs_embeds.shape[0] > 1:
            # transformers 5 tells its own repetition-penalty processor to skip the first pad-length
            # *generated* tokens of left-padded rows; the official (4.4x) penalty sees every generated
            # token. A processor of the same type replaces the default in place (same order).
            kwargs["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)])
        if self.interrupt is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhen(self.interrupt)])
        if int(self.kwargs.get("num_beams", 1)) == 1:  # beam search reorders its cache: not reserved
            # transformers calls the "layer class" with no arguments for each layer it meets
            replicate = cast("type[CacheLayerMixin]", self._layer)
            kwargs["cache"] = cache if cache is not None else Cache(layer_class_to_replicate=replicate)
        elif cache is not None:
            raise ValueError("beam search starts from the whole prompt, not a prefilled cache")
        return kwargs

    def _layer(self) -> ReservedLayer:
        return ReservedLayer(self.max_new_tokens + 1)


class ReservedLayer(DynamicLayer):
    """One layer's KV cache with room reserved for the tokens still to come.

    transformers' dynamic cache grows by concatenation: every decoded token copies the whole cache
    into a new allocation (for a batch of 8 windows of 16 frames, 5 MB per layer per step, which on
    the CPU costs as much as the attention itself). This one writes each step into room reserved at
    the first update (``reserve`` more positions; it reallocates only if that runs out) and hands
    attention a view of the filled part. For greedy and sampling (beam search reorders rows: not
    supported here)."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = reserve
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, new = self._length, key_states.shape[-2]
        if self._keys is None or self._values is None or start + new > self._keys.shape[-2]:
            room = start + new + self.reserve
            keys = key_states.new_zeros((*key_states.shape[:-2], room, key_states.shape[-1]))
            values = value_states.new_zeros((*value_states.shape[:-2], room, value_states.shape[-1]))
            if self._keys is not None and self._values is not None:
                keys[..., :start, :] = self._keys[..., :start, :]
                values[..., :start, :] = self._values[..., :start, :]
            self._keys, self._values = keys, values
        self._keys[..., start : start + new, :] = key_states
        self._values[..., start : start + new, :] = value_states
        self._length = start + new
        self.keys = self._keys[..., : self._length, :]
        self.values = self._values[..., : self._length, :]
        return self.keys, self.values

    def place(self, row: int, batch: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Lay one row's prompt keys and values (``[1, heads, n, dim]``), computed alone, into a batch
        left-padded to ``start + n`` positions (all rows must end there; see :func:`ragged_prefill`)."""
        end = start + keys.shape[-2]
        if self._keys is None or self._values is None:
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            shape = (batch, keys.shape[1], end + self.reserve, keys.shape[-1])
            self._keys, self._values = keys.new_zeros(shape), values.new_zeros(shape)
        self._keys[row, :, start:end] = keys[0]
        self._values[row, :, start:end] = values[0]

    def close_prefill(self, length: int) -> None:
        """The rows placed fill ``length`` positions (a batch none of whose rows had a prefix gets
        an empty cache)."""
        if self._keys is None or self._values is None:
            return
        self._length = length
        self.keys = self._keys[..., :length, :]
        self.values = self._values[..., :length, :]

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a ReservedLayer cache is not cropped (greedy and sampling only)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a ReservedLayer cache keeps its rows (greedy and sampling only)")


def ragged_prefill(llm: Any, request: GenerationRequest) -> Cache:
    """The KV cache of a left-padded batch's prompts but their last token, each row computed alone.

    A padded batch needs an attention mask, and with one the CPU's attention falls back to a kernel
    that materialises every row's full score matrix: eight 1,100-token prompts prefill 13x slower
    than one (not 8x). Alone, a row needs no mask (its causal attention takes the fast kernel) and no
    padding is computed at all. The rows' keys and values are then laid into one left-padded cache
    (padding positions stay zero and masked), so ``generate`` (given it with
    :meth:`GenerationRequest.call_kwargs`) runs only the last prompt token and decodes the batch
    together. A row's positions count its real tokens, as ``generate``'s own do, so each row gets the
    text it gets alone."""
    embeds, mask = request.inputs_embeds, request.attention_mask
    batch, width = embeds.shape[:2]
    layers = [ReservedLayer(request.max_new_tokens + 1) for _ in range(llm.config.num_hidden_layers)]
    with torch.inference_mode():
        for b in range(batch):
            real = mask[b].nonzero()
            start = int(real[0, 0]) if len(real) else width - 1
            if start >= width - 1:
                continue  # nothing but the last token: generate runs it
            row_mask = mask[b : b + 1, start : width - 1]
            row = DynamicCache()
            llm(
                inputs_embeds=embeds[b : b + 1, start : width - 1],
                attention_mask=row_mask,
                position_ids=(row_mask.cumsum(-1) - 1).clamp(min=0),
                cache=row,
                use_cache=True,
                logits_to_keep=1,
            )
            for layer, computed in zip(layers, row.layers, strict=True):
                assert isinstance(computed, DynamicLayer)
                assert computed.keys is not None and computed.values is not None
                layer.place(b, batch, start, computed.keys, computed.values)
    for layer in layers:
        layer.close_prefill(width - 1)
    return Cache(layers=cast("list[Any]", layers))


def run_generate(llm: Any, kwargs: Mapping[str, Any]) -> torch.Tensor:
    """``llm.generate`` without the notice that the repetition penalty skips the prompt.

    Starting from embeddings, the penalty sees only generated tokens: that is the official behaviour,
    so transformers' UserWarning about it is silenced here (and only it).
    """
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
        return llm.generate(**kwargs)


def generate_ids(llm: Any, request: GenerationRequest) -> torch.Tensor:
    """New token ids ``[B, n]`` (rows that finished early are padded with 0)."""
    return run_generate(llm, request.call_kwargs())


class TextPieces:
    """Turns a growing list of token ids into text pieces whose concatenation is the final answer.

    ``decode`` is the answer decoding of the final text (drop pads and terminators, decode, strip).
    A piece is released only up to the last character that cannot change: a trailing run of
    whitespace (the final ``strip`` may remove it) or of U+FFFD (an incomplete UTF-8 sequence a later
    byte token may complete) is held back until more text follows or the stream ends.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._sent = ""

    def push(self, ids: Sequence[int]) -> str:
        self._ids.extend(int(i) for i in ids)
        text = self._decode(self._ids)
        stable = len(text)
        while stable and (text[stable - 1].isspace() or text[stable - 1] == "\ufffd"):
            stable -= 1
        return self._release(text[:stable])

    def finish(self) -> str:
        return self._release(self._decode(self._ids))

    def _release(self, text: str) -> str:
        if not text.startswith(self._sent):  # cannot happen with byte-level BPE; never emit garbage
            log.warning("streamed text diverged from the decoded answer; holding back the rest")
            return ""
        piece = text[len(self._sent) :]
        self._sent = text
        return piece


class _QueueStreamer(BaseStreamer):
    """Receives new token ids from ``generate`` (in the worker thread) and queues them."""

    def __init__(self, out: queue.Queue[Any]) -> None:
        self._out = out

    def put(self, value: torch.Tensor) -> None:
        if value.numel():  # the first call carries the (empty) prompt ids
            self._out.put(value.reshape(-1).tolist())

    def end(self) -> None:
        """The worker signals the end itself, also when generate raises."""


class _StopWhen(StoppingCriteria):
    def __init__(self, check: Callable[[], bool]) -> None:
        self._check = check

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), bool(self._check()), dtype=torch.bool, device=input_ids.device
        )


_END = object()


def stream_text(
    llm: Any, request: GenerationRequest, decode: Callable[[Sequence[int]], str]
) -> Iterator[str]:
    """Yield text pieces of a one-sample generation as tokens arrive (see ``TextPieces``)."""
    if request.inputs_embeds.shape[0] != 1:
        raise ValueError("stream=True takes one conversation, not a batch")
    if int(request.kwargs.get("num_beams", 1)) > 1:
        raise ValueError("stream=True needs sampling=True or num_beams=1: beam search cannot stream")
    tokens: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            kwargs = request.call_kwargs()
            kwargs["streamer"] = _QueueStreamer(tokens)
            interrupt = request.interrupt
            closed = stop.is_set
            check = closed if interrupt is None else (lambda: closed() or interrupt())
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhen(check)])
            run_generate(llm, kwargs)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            tokens.put(exc)
        finally:
            tokens.put(_END)

    return _consume(tokens, stop, threading.Thread(target=work, name="minicpmv-stream", daemon=True), decode)


def _consume(
    tokens: queue.Queue[Any],
    stop: threading.Event,
    worker: threading.Thread,
    decode: Callable[[Sequence[int]], str],
) -> Iterator[str]:
    pieces = TextPieces(decode)
    worker.start()
    try:
        while True:
            item = tokens.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            piece = pieces.push(item)
            if piece:
                yield piece
        tail = pieces.finish()
        if tail:
            yield tail
    finally:
        stop.set()
        worker.join()
