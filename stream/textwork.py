"""The inference process's text-only work, without I/O: live summaries and questions over the past.

Both are chats without frames (``backend.chat``), handed out by the scheduling core
(:class:`~stream.scheduler.Scheduler`) as actions between captions:

* **Live summaries** (``[summaries] every`` seconds of stream time, 0: off). Each stream's captions
  since its last summary are kept (bounded: the newest :data:`MAX_PENDING_CAPTIONS`; an unchanged
  scene's repeats are one line); when a caption ends past the next multiple of ``every``, they become
  a :class:`~stream.summaries.SpanSummary` whose chat turns are handed out one :class:`Summarize`
  at a time, so captions go on between the turns of a long one. The last turn's answer is the
  ``summary`` message. A stream that ends has its tail summarised too.
* **Questions over the past**: the gateway sends an ask with the stored captions of its span (best
  matches first); :meth:`TextWork.submit_past_ask` keeps those that fit the model's input, in that
  order, puts them in time order in the question prompt (each with its local wall-clock time), and
  hands out an :class:`AnswerPast`; its answer says the span (``from``/``to``) and how many captions
  were used.

Tokens are counted with the function passed in (the model's tokenizer); times come in messages.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from . import messages
from .messages import AskId, ErrorCode
from .prompts import load_summary_prompts
from .summaries import (
    TEMPLATE_TOKENS,
    ChatRequest,
    SpanSummary,
    SummaryPrompts,
    Timed,
    TimeLabels,
    spans_days,
    time_label,
)

if TYPE_CHECKING:
    from model.backends import CaptionBackend

log = logging.getLogger(__name__)

MAX_PENDING_CAPTIONS: Final = 4096  # per stream, waiting for its next summary (the oldest go first)
MAX_SUMMARY_JOBS: Final = 64  # summaries due and not made yet, of every stream (the oldest go first)


@dataclass(frozen=True)
class TextSettings:
    """``every``: seconds of stream time between a stream's summaries (0: none). ``presets``: the
    summary preset of each stream (others: ``preset``). ``max_new_tokens`` per summary turn and
    per answer over the past."""

    every: float = 0.0
    preset: str = "narration"
    presets: dict[str, str] = field(default_factory=dict)
    max_new_tokens: int = 384
    decoding: str = "greedy"


@dataclass(frozen=True)
class Summarize:
    """One chat turn of ``stream``'s live summary (:meth:`run_on`); report the text with
    :meth:`Scheduler.summarized <stream.scheduler.Scheduler.summarized>`."""

    stream: str
    job: int
    prompt: str
    max_new_tokens: int
    decoding: str

    def run_on(self, backend: CaptionBackend) -> str:
        return backend.chat(self.prompt, max_new_tokens=self.max_new_tokens, decoding=self.decoding)


@dataclass(frozen=True)
class AnswerPast:
    """Answer a question from stored captions (:meth:`run_on`); report with
    :meth:`Scheduler.past_answered <stream.scheduler.Scheduler.past_answered>`."""

    id: AskId
    stream: str
    prompt: str
    wall_from: float
    wall_to: float
    captions: int
    max_new_tokens: int
    decoding: str

    def run_on(self, backend: CaptionBackend) -> str:
        return backend.chat(self.prompt, max_new_tokens=self.max_new_tokens, decoding=self.decoding)


@dataclass
class _Job:
    number: int
    stream: str
    summary: SpanSummary
    request: ChatRequest | None = None  # the turn handed out, while it runs


class TextWork:
    """Live summaries and questions over the past (see the module doc). ``budget``: the model's
    ``max_inp_length``."""

    def __init__(self, settings: TextSettings, count_tokens: Callable[[str], int], budget: int) -> None:
        self.settings = settings
        self.count_tokens = count_tokens
        self.budget = budget
        presets = load_summary_prompts()
        self._question = presets["question"][0]
        self._prompts: dict[str, SummaryPrompts] = {}
        self._pending: dict[str, deque[Timed]] = {}
        self._next_due: dict[str, float] = {}
        self._jobs: deque[_Job] = deque()
        self._active: _Job | None = None
        self._asks: deque[AnswerPast | messages.Answer] = deque()
        self._numbers = 0
        self.dropped_summaries = 0

    # -- live summaries ---------------------------------------------------------------------------
    def caption(self, message: messages.Caption) -> None:
        """A caption just published: kept for its stream's next summary, which may now be due."""
        every = self.settings.every
        if every <= 0:
            return
        pending = self._pending.setdefault(message.stream, deque(maxlen=MAX_PENDING_CAPTIONS))
        pending.append(Timed.of_caption(message.to_dict()))
        due = self._next_due.setdefault(message.stream, (math.floor(message.t_start / every) + 1) * every)
        if message.t_end >= due:
            self._next_due[message.stream] = (math.floor(message.t_end / every) + 1) * every
            self._start_summary(message.stream)

    def end_stream(self, stream: str) -> None:
        """The stream ended and its last caption is in: its tail gets a summary of its own."""
        if self._pending.get(stream):
            self._start_summary(stream)

    def _start_summary(self, stream: str) -> None:
        items = self._pending.pop(stream, None)
        if not items:
            return
        first, last = items[0].wall_start, items[-1].wall_end
        summary = SpanSummary(
            self._prompts_of(stream),
            self.count_tokens,
            self.budget,
            labels=TimeLabels.WALL,
            day=spans_days(first, last),
        )
        for item in items:
            summary.add(item)
        summary.finish()
        self._numbers += 1
        self._jobs.append(_Job(self._numbers, stream, summary))
        while len(self._jobs) > MAX_SUMMARY_JOBS:
            gone = self._jobs.popleft()
            self.dropped_summaries += 1
            log.warning("stream %s: a summary was dropped: the model is far behind", gone.stream)

    def _prompts_of(self, stream: str) -> SummaryPrompts:
        name = self.settings.presets.get(stream, self.settings.preset)
        prompts = self._prompts.get(name)
        if prompts is None:
            prompts = self._prompts[name] = SummaryPrompts.preset(name)
        return prompts

    def next_summary(self) -> Summarize | None:
        """The next turn of the summary being made (the oldest due first), or None."""
        while True:
            if self._active is None:
                if not self._jobs:
                    return None
                self._active = self._jobs.popleft()
            job = self._active
            request = job.summary.next_request()
            if request is None:  # an empty span (cannot happen: jobs start with captions)
                self._active = None
                continue
            job.request = request
            s = self.settings
            return Summarize(job.stream, job.number, request.prompt, s.max_new_tokens, s.decoding)

    def summarized(self, action: Summarize, text: str) -> messages.Summary | None:
        """The text of ``action``: the ``summary`` message when it was the last turn, else None."""
        job = self._active
        if job is None or job.number != action.job:
            raise RuntimeError("summarized: this summary turn was not handed out")
        assert job.request is not None
        job.summary.answered(job.request, text)
        result = job.summary.result
        if result is None:
            return None
        self._active = None
        return messages.Summary(
            stream=job.stream,
            t_start=round(result.t_start, 3),
            t_end=round(result.t_end, 3),
            wall_start=result.wall_start,
            wall_end=result.wall_end,
            text=result.text,
            captions=result.captions,
        )

    def summary_failed(self, action: Summarize) -> None:
        """The model refused a turn: that summary is given up (the next one starts afresh)."""
        if self._active is not None and self._active.number == action.job:
            self._active = None

    # -- questions over the past ------------------------------------------------------------------
    def submit_past_ask(self, ask: messages.AskRequest) -> None:
        """An ask carrying stored captions (``ask.captions``, best first) and its span."""
        items = []
        for data in ask.captions or []:
            try:
                items.append(Timed.of_caption(data))
            except (KeyError, TypeError, ValueError):
                log.warning("ask %s: a stored caption without its times or text was left out", ask.id)
        question = " ".join(ask.question.split())
        frame = self._question.replace("{question}", question)
        room = self.budget - TEMPLATE_TOKENS - self.count_tokens(frame.replace("{items}", ""))
        chosen: list[tuple[Timed, str]] = []
        day = bool(items) and _days(items)
        for item in items:  # best first: the best that fit are kept
            line = f"[{time_label(item, TimeLabels.WALL, day=day)}] {' '.join(item.text.split())}\n"
            tokens = self.count_tokens(line)
            if tokens <= room:
                chosen.append((item, line))
                room -= tokens
        if not chosen:
            reason = "no stored caption fits the model's input beside this question"
            self._asks.append(
                messages.Answer(
                    id=ask.id, stream=ask.stream, text="", error=ErrorCode.MODEL_ERROR, message=reason
                )
            )
            return
        chosen.sort(key=lambda pair: (pair[0].wall_end, pair[0].wall_start))
        prompt = frame.replace("{items}", "".join(line for _, line in chosen).rstrip("\n"))
        wall_from = ask.from_ if ask.from_ is not None else min(item.wall_start for item, _ in chosen)
        wall_to = ask.to if ask.to is not None else ask.wall
        s = self.settings
        self._asks.append(
            AnswerPast(
                ask.id, ask.stream, prompt, wall_from, wall_to, len(chosen), s.max_new_tokens, s.decoding
            )
        )

    def next_past_ask(self) -> AnswerPast | messages.Answer | None:
        """The next question over the past to answer (or an ``answer`` with the reason it cannot be)."""
        return self._asks.popleft() if self._asks else None

    @staticmethod
    def past_answered(action: AnswerPast, text: str) -> messages.Answer:
        return messages.Answer(
            id=action.id,
            stream=action.stream,
            text=text,
            from_=action.wall_from,
            to=action.wall_to,
            captions=action.captions,
        )

    @staticmethod
    def past_answer_failed(action: AnswerPast, reason: str) -> messages.Answer:
        return messages.Answer(
            id=action.id, stream=action.stream, text="", error=ErrorCode.MODEL_ERROR, message=reason
        )

    @property
    def idle(self) -> bool:
        """Nothing to do now: no question waits, no summary is due or being made."""
        return not self._asks and not self._jobs and self._active is None


def _days(items: list[Timed]) -> bool:
    return spans_days(min(i.wall_start for i in items), max(i.wall_end for i in items))
