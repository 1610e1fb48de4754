"""What the scheduling core hands out: one frozen value per kind of work, each knowing how it meets the
model (``run_on(backend)``), so the inference process, the offline command and the tests run actions the
same way. The core that decides which comes next is :mod:`stream.scheduler`; its results come back
through the :class:`~stream.scheduler.Scheduler` methods each action names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from . import messages
from .alerts import Window
from .messages import AskId
from .sampler import Job, SampledFrame
from .textwork import AnswerPast, Summarize

if TYPE_CHECKING:
    from model.backends import CaptionBackend

log = logging.getLogger(__name__)


# -- actions (what the caller should do next) ------------------------------------------------------
@dataclass(frozen=True)
class EncodeFrame:
    """One frame to encode: its stream, ring seq and pixels (an RGB uint8 array)."""

    stream: str
    seq: int
    pixels: Any


@dataclass(frozen=True)
class Encode:
    """Encode these frames in one vision call (:meth:`run_on`, or :meth:`run_each_on`), then report the
    embeddings, in order, with :meth:`Scheduler.encoded`."""

    frames: tuple[EncodeFrame, ...]
    max_slice_nums: int

    @property
    def pixels(self) -> list[Any]:
        return [f.pixels for f in self.frames]

    def run_on(self, backend: CaptionBackend) -> list[Any]:
        return list(backend.encode_frames(self.pixels, max_slice_nums=self.max_slice_nums))

    def run_each_on(self, backend: CaptionBackend) -> list[Any | None]:
        """As :meth:`run_on` (one vision call for every frame, of whichever stream), but a batch the
        model refuses is retried frame by frame, so one bad frame loses only itself: its place holds
        None (reported as lost with :meth:`Scheduler.encoded`), the others their embeddings. Torch's
        own errors (a device out of memory among them) count as refusals: one frame may still fit."""
        try:
            return self.run_on(backend)
        except (ValueError, TypeError, RuntimeError) as exc:
            if len(self.frames) == 1:
                frame = self.frames[0]
                log.error("stream %s: frame %d not encoded: %s", frame.stream, frame.seq, exc)
                return [None]
            log.warning("an encode of %d frames failed (%s); encoding them one by one", len(self.frames), exc)
        return [Encode((frame,), self.max_slice_nums).run_each_on(backend)[0] for frame in self.frames]


@dataclass(frozen=True)
class Caption:
    """Caption one window (:meth:`run_on`), then report the text with :meth:`Scheduler.captioned` (or
    the model's refusal with :meth:`Scheduler.caption_failed`). ``frames``: the window's frames that
    have embeddings (frames whose pixels were lost are left out); ``seq``: the caption's number (for
    ``partial`` messages); ``encode_ms``: the vision call that encoded its newest frame."""

    stream: str
    seq: int
    job: Job
    frames: tuple[SampledFrame, ...]
    embeddings: tuple[Any, ...]
    prompt: str
    context: str | None
    max_new_tokens: int
    decoding: str
    encode_ms: float

    def run_on(self, backend: CaptionBackend, on_text: Callable[[str], None] | None = None) -> str:
        """The caption's text (``on_text`` gets it piece by piece as it is generated)."""
        return backend.describe(
            list(self.embeddings),
            self.prompt,
            context=self.context,
            max_new_tokens=self.max_new_tokens,
            decoding=self.decoding,
            on_text=on_text,
        )


def run_captions(
    captions: Sequence[Caption], backend: Any, on_text: Sequence[Callable[[str], None] | None]
) -> list[str]:
    """The texts of several Captions (of different streams, one ``max_new_tokens`` and ``decoding``)
    from one batched call of a backend that has ``describe_batch`` (the local model); ``on_text[i]``
    gets caption i's pieces."""
    first = captions[0]
    return list(
        backend.describe_batch(
            [(list(c.embeddings), c.prompt, c.context) for c in captions],
            max_new_tokens=first.max_new_tokens,
            decoding=first.decoding,
            on_text=on_text,
        )
    )


@dataclass(frozen=True)
class Extend:
    """A window whose frames did not change since the stream's last caption (see
    :mod:`stream.change`): the model is not called. Report it with :meth:`Scheduler.extended`, which
    returns the ``caption`` message with ``unchanged`` set, the last caption's ``text`` and
    ``t_start`` and this window's ``t_end`` (the scene stayed as captioned from then to now).
    ``change``: the share of the picture that changed (below the stream's threshold)."""

    stream: str
    seq: int
    job: Job
    frames: tuple[SampledFrame, ...]
    change: float


@dataclass(frozen=True)
class Answer:
    """Answer an ask from these frames (:meth:`run_on`), then report with :meth:`Scheduler.answered`
    (or :meth:`Scheduler.answer_failed`)."""

    id: AskId
    stream: str
    question: str
    frames: tuple[SampledFrame, ...]
    embeddings: tuple[Any, ...]
    max_new_tokens: int
    decoding: str

    def run_on(self, backend: CaptionBackend) -> str:
        return backend.ask(
            list(self.embeddings), self.question, max_new_tokens=self.max_new_tokens, decoding=self.decoding
        )


@dataclass(frozen=True)
class Reply:
    """Publish this message (an ``answer`` with an error: no such stream, no frames yet, too many
    asks); nothing to report back."""

    message: messages.Answer


@dataclass(frozen=True)
class EvaluateRules:
    """Score these question rules (their names, their questions) on a captioned window's cached
    embeddings (:meth:`run_on`: P(yes) per question, one batched prefill), then report the scores
    with :meth:`Scheduler.rules_evaluated` (or :meth:`Scheduler.rules_failed`)."""

    stream: str
    job: Job
    frames: tuple[SampledFrame, ...]
    embeddings: tuple[Any, ...]
    rules: tuple[str, ...]
    questions: tuple[str, ...]
    window: Window

    def run_on(self, backend: CaptionBackend) -> list[float]:
        return list(backend.yes_probabilities(list(self.embeddings), list(self.questions)))


Action: TypeAlias = Encode | Caption | Extend | Answer | Reply | EvaluateRules | Summarize | AnswerPast
