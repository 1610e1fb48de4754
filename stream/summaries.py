"""Summaries of a span of captions, hierarchical, without I/O: captions in, chat prompts out.

A span's captions rarely fit one prompt (40 minutes at one caption a second is some 160k tokens), so
they are summarised as a tree: consecutive captions, each with its time, are packed into chunks that
fit the model's input (``budget`` tokens, counted with the model's own tokenizer through the
``count_tokens`` function passed in), each chunk is summarised, and the chunk summaries, each with
its time span, are packed and summarised again, until one summary is left. Times travel with every
item, so each level's prompt still says when things happened.

:class:`SpanSummary` is the state machine: :meth:`~SpanSummary.add` the captions oldest first (a
chunk is sealed into a :class:`ChatRequest` as soon as the next caption would not fit, so memory
holds about one chunk per level, however long the span), :meth:`~SpanSummary.finish`, and answer
every :meth:`~SpanSummary.next_request` with :meth:`~SpanSummary.answered` (the shell calls the
model: ``backend.chat``) until :attr:`~SpanSummary.result` is set. :func:`summarize` drives it with a
chat function, as the ``summarize`` and ``caption --summary`` commands do; the live inference process
hands its requests out one at a time between captions (:mod:`stream.textwork`).

The prompt presets (``narration``, ``cctv``, ``screen``) are ``stream/defaults/summaries.toml``,
beside the caption presets.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from .prompts import load_summary_prompts

# Tokens kept free for the chat template around a prompt (role markers, the assistant's turn).
TEMPLATE_TOKENS: Final = 64
# Characters per token where no tokenizer is at hand (a remote model): English BPE averages about 4;
# 3 errs on the side of fitting.
CHARS_PER_TOKEN: Final = 3


class TimeLabels(StrEnum):
    """How items' times are written in prompts: stream time (``H:MM:SS`` from the source's start:
    a file), or local wall-clock time (a live camera, a stored span)."""

    STREAM = "stream"
    WALL = "wall"


@dataclass(frozen=True)
class Timed:
    """A caption, or a summary of several, and the span it describes."""

    t_start: float
    t_end: float
    wall_start: float
    wall_end: float
    text: str
    captions: int = 1  # how many captions it stands for

    @classmethod
    def of_caption(cls, message: dict[str, Any]) -> Timed:
        """From a caption message as published or stored (``wall_start`` may be absent)."""
        return cls(
            t_start=float(message["t_start"]),
            t_end=float(message["t_end"]),
            wall_start=float(message.get("wall_start", message["wall_end"])),
            wall_end=float(message["wall_end"]),
            text=str(message["text"]),
        )


@dataclass(frozen=True)
class SummaryPrompts:
    """One preset: ``chunk`` introduces captions, ``combine`` summaries of parts; ``{items}`` in each
    is replaced by the timed lines."""

    chunk: str
    combine: str

    @classmethod
    def preset(cls, name: str) -> SummaryPrompts:
        presets = load_summary_prompts()
        if name not in presets:
            raise KeyError(f"no summary preset {name!r} (presets: {', '.join(sorted(presets))})")
        chunk, combine = presets[name]
        return cls(chunk=chunk, combine=combine)


@dataclass(frozen=True)
class ChatRequest:
    """One chat turn to run: summarise ``items`` (at ``level`` 0 captions, above it summaries)."""

    number: int
    level: int
    items: tuple[Timed, ...]
    prompt: str

    @property
    def span(self) -> Timed:
        """The items' whole span, without text."""
        return _merged(self.items, "")


def clock(seconds: float) -> str:
    """Stream time as ``H:MM:SS`` (hours grow past 24 on long runs)."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def wall_clock(wall: float, *, day: bool = False) -> str:
    """Local wall-clock time ``HH:MM:SS`` (``YYYY-MM-DD HH:MM:SS`` with ``day``)."""
    return time.strftime("%Y-%m-%d %H:%M:%S" if day else "%H:%M:%S", time.localtime(wall))


def time_label(item: Timed, labels: TimeLabels, *, day: bool = False) -> str:
    if labels is TimeLabels.STREAM:
        start, end = clock(item.t_start), clock(item.t_end)
    else:
        start, end = wall_clock(item.wall_start, day=day), wall_clock(item.wall_end, day=day)
    return start if start == end else f"{start}-{end}"


def spans_days(first: float, last: float) -> bool:
    """Whether wall times from ``first`` to ``last`` need their date (they are not of one day)."""
    return time.localtime(first)[:3] != time.localtime(last)[:3]


def token_counter(backend: Any) -> Callable[[str], int]:
    """The backend's own ``count_tokens`` when it has one, else an estimate from the length."""
    count = getattr(backend, "count_tokens", None)
    if callable(count):
        return count  # type: ignore[no-any-return]
    return lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)


class SpanSummary:
    """The hierarchical summary of one span (see the module doc).

    ``budget``: the most tokens one prompt may have (the model's ``max_inp_length``; the chat
    template's share is kept free). ``labels``: how times are written. ``day``: wall times with
    their date (a span over more than a day).
    """

    def __init__(
        self,
        prompts: SummaryPrompts,
        count_tokens: Callable[[str], int],
        budget: int,
        *,
        labels: TimeLabels = TimeLabels.WALL,
        day: bool = False,
    ) -> None:
        self.prompts = prompts
        self.count_tokens = count_tokens
        self.labels = labels
        self.day = day
        self.budget = budget - TEMPLATE_TOKENS
        # The prompt around the lines, per level: what is left of the budget is the lines'.
        self._room = [
            self.budget - count_tokens(template.replace("{items}", ""))
            for template in (prompts.chunk, prompts.combine)
        ]
        if min(self._room) < 16:
            raise ValueError(
                f"a budget of {budget} tokens leaves no room for captions beside the summary prompt"
            )
        self._levels: list[list[tuple[Timed, int]]] = []  # per level: the open chunk's items, tokens
        self._sealed: list[int] = []  # per level: chunks sealed so far
        self._queue: deque[ChatRequest] = deque()
        self._out: set[int] = set()  # numbers of requests handed out, not answered yet
        self._numbers = 0
        self._last: Timed | None = None
        self._finishing = False
        self.captions = 0
        self.requests = 0  # chat turns so far
        self.result: Timed | None = None

    # -- in ---------------------------------------------------------------------------------------
    def add(self, item: Timed) -> None:
        """The next caption (oldest first). One that repeats the previous caption's text (an
        unchanged scene) only extends that caption's span."""
        if self._finishing:
            raise RuntimeError("add() after finish()")
        self.captions += 1
        last = self._last
        if last is not None and item.text.strip() == last.text.strip():
            self._last = _merged((last, item), last.text)
            return
        if last is not None:
            self._put(0, last)
        self._last = item

    def finish(self) -> None:
        """No more captions: what is open is summarised, level by level."""
        if self._finishing:
            return
        self._finishing = True
        if self._last is not None:
            self._put(0, self._last)
            self._last = None
        self._settle()

    # -- out --------------------------------------------------------------------------------------
    def next_request(self) -> ChatRequest | None:
        """The next chat turn to run, or None (none ready: add more, finish, or answer those out)."""
        if not self._queue:
            return None
        request = self._queue.popleft()
        self._out.add(request.number)
        return request

    def answered(self, request: ChatRequest, text: str) -> None:
        """The model's summary of ``request``: an item of the level above."""
        if request.number not in self._out:
            raise RuntimeError(f"request {request.number} was not handed out, or is answered already")
        self._out.discard(request.number)
        self._put(request.level + 1, _merged(request.items, text.strip()))
        self._settle()

    @property
    def empty(self) -> bool:
        """Finished without a single caption: there is nothing to summarise."""
        return self._finishing and self.captions == 0

    @property
    def done(self) -> bool:
        return self.result is not None or self.empty

    # -- packing ----------------------------------------------------------------------------------
    def _put(self, level: int, item: Timed) -> None:
        while len(self._levels) <= level:
            self._levels.append([])
            self._sealed.append(0)
        room = self._room[min(level, 1)]
        line = self._line(item, room // 2)  # at most half: every chunk holds at least two items
        tokens = self.count_tokens(line)
        chunk = self._levels[level]
        if chunk and sum(t for _, t in chunk) + tokens > room:
            self._seal(level)
        self._levels[level].append((replace(item, text=line), tokens))

    def _line(self, item: Timed, limit: int) -> str:
        """The item's prompt line (its time, then its text on one line), cut to ``limit`` tokens."""
        text = " ".join(item.text.split())
        head = f"[{time_label(item, self.labels, day=self.day)}] "
        line = head + text + "\n"
        while self.count_tokens(line) > limit and text:
            keep = max(0, int(len(text) * limit / max(1, self.count_tokens(line))) - 8)
            text = text[:keep]
            text = (text.rsplit(" ", 1)[0] if " " in text else text).rstrip()  # at a word's end
            line = head + text + " ...\n"
        return line

    def _seal(self, level: int) -> None:
        items = self._levels[level]
        self._levels[level] = []
        self._sealed[level] += 1
        template = self.prompts.chunk if level == 0 else self.prompts.combine
        prompt = template.replace("{items}", "".join(item.text for item, _ in items).rstrip("\n"))
        # The lines were the prompt's; the items keep the original text's span, for the summary.
        self._numbers += 1
        self.requests += 1
        self._queue.append(ChatRequest(self._numbers, level, tuple(item for item, _ in items), prompt))

    def _settle(self) -> None:
        """Once finishing and nothing is out: seal or promote the lowest open chunk, until a request
        is out or a single summary is left at the top."""
        while self._finishing and not self._queue and not self._out and self.result is None:
            open_levels = [level for level, chunk in enumerate(self._levels) if chunk]
            if not open_levels:
                return  # no caption at all
            level = open_levels[0]
            chunk = self._levels[level]
            highest = level == open_levels[-1]
            if level > 0 and len(chunk) == 1:
                if highest:
                    self.result = _unlined(chunk[0][0])
                    return
                self._levels[level] = []
                self._put(level + 1, _unlined(chunk[0][0]))  # a lone summary goes up as it is
                continue
            self._seal(level)


@dataclass
class SummaryRun:
    """What :func:`summarize` made: the final summary, and the level-0 parts (chunk summaries)."""

    result: Timed | None
    parts: list[Timed] = field(default_factory=list)
    requests: int = 0
    captions: int = 0


def summarize(
    captions: Iterable[Timed],
    summary: SpanSummary,
    chat: Callable[[str], str],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SummaryRun:
    """Drive ``summary`` over ``captions`` with ``chat`` (prompt -> text, e.g. ``backend.chat``).
    ``progress(captions_read, chat_turns_done)`` is called after each turn and at the end."""
    run = SummaryRun(result=None)
    turns = 0

    def drain() -> None:
        nonlocal turns
        while (request := summary.next_request()) is not None:
            text = chat(request.prompt)
            summary.answered(request, text)
            turns += 1
            if request.level == 0:
                run.parts.append(_merged(request.items, text.strip()))
            if progress is not None:
                progress(summary.captions, turns)

    for caption in captions:
        summary.add(caption)
        drain()
    summary.finish()
    drain()
    run.result = summary.result
    run.requests = summary.requests
    run.captions = summary.captions
    if progress is not None:
        progress(summary.captions, turns)
    return run


def _merged(items: Iterable[Timed], text: str) -> Timed:
    items = list(items)
    return Timed(
        t_start=min(i.t_start for i in items),
        t_end=max(i.t_end for i in items),
        wall_start=min(i.wall_start for i in items),
        wall_end=max(i.wall_end for i in items),
        text=text,
        captions=sum(i.captions for i in items),
    )


def _unlined(item: Timed) -> Timed:
    """An item back from its prompt line (the text after the time label)."""
    text = item.text.rstrip("\n")
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return replace(item, text=text)
