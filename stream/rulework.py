"""The alert side of the scheduling core: what a run's alert rules need between the model's turns.

No I/O, no clock, no model calls (like :mod:`stream.scheduler`, whose :class:`~stream.scheduler.Scheduler`
holds one of these when the run has rules, and :mod:`stream.textwork`, its text-only twin). A window
whose caption is out (made by the model, or ``unchanged``) is scored here: its pattern rules at once on
the caption's text, its question rules queued as one :class:`~stream.actions.EvaluateRules` over the
window's cached embeddings, which the core hands out before anything else. The ``event`` messages the
rules' :class:`~stream.alerts.AlertCore` makes wait in an outbox; a stream that ended with nothing left
to caption or score ends its open events. It also keeps the last thumbnails per stream (an event's
``start`` carries its window's newest) and the per-stream rule figures of ``status``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from . import messages
from .actions import EvaluateRules
from .alerts import AlertCore, Window
from .captioning import StreamCaptions
from .recordqueue import Thumbnails
from .sampler import Job, SampledFrame


class RuleWork:
    """The rules of one scheduling core (see the module doc)."""

    def __init__(self, alerts: AlertCore) -> None:
        self.alerts = alerts
        self.due: deque[EvaluateRules] = deque()  # at most one per captioned window
        self._events: list[messages.Event] = []  # the outbox of take_events
        self._closed: set[str] = set()  # ended streams whose events were ended
        self._thumbnails = Thumbnails(per_stream=16)  # for an event's start (base64 JPEG as bytes)
        self._figures: dict[str, dict[str, Any]] = {}

    def add_thumbnail(self, stream: str, t: float, jpeg: str) -> None:
        self._thumbnails.add(stream, t, jpeg.encode("ascii"))

    def window_out(
        self,
        caption: messages.Caption,
        job: Job,
        frames: tuple[SampledFrame, ...],
        embeddings: tuple[Any, ...],
    ) -> None:
        """A window whose ``caption`` is out: its pattern rules on the caption's text now, its question
        rules queued as one EvaluateRules over ``embeddings`` (none: the window has no frame to ask
        about). Unchanged windows only for rules that want them."""
        rules = self.alerts.rules_for_window(caption.stream, bool(caption.unchanged))
        if not rules:
            return
        thumbnail = self._thumbnails.at_or_before(caption.stream, job.t_end)
        window = Window(
            stream=caption.stream,
            t_start=caption.t_start,
            t_end=caption.t_end,
            wall_start=caption.wall_start,
            wall_end=caption.wall_end,
            text=caption.text,
            thumbnail=None if thumbnail is None else thumbnail.decode("ascii"),
        )
        patterns = [r for r in rules if r.pattern is not None]
        if patterns:
            scores = [(r.name, 1.0 if re.search(r.pattern or "", caption.text) else 0.0) for r in patterns]
            self._events.extend(self.alerts.observe(window, scores))
        questions = [r for r in rules if r.question is not None]
        if questions and embeddings:
            self.due.append(
                EvaluateRules(
                    stream=caption.stream,
                    job=job,
                    frames=frames,
                    embeddings=embeddings,
                    rules=tuple(r.name for r in questions),
                    questions=tuple(r.question or "" for r in questions),
                    window=window,
                )
            )

    def evaluated(self, action: EvaluateRules, scores: Sequence[float], *, model_ms: float) -> None:
        figures = self._figures.setdefault(action.stream, {"rule_windows": 0, "rule_errors": 0})
        figures["rule_windows"] += 1
        figures["rules_model_ms"] = round(model_ms, 1)
        figures["rules_ms"] = round(model_ms / len(action.rules), 1)  # per rule, of the batched pass
        self._events.extend(self.alerts.observe(action.window, zip(action.rules, scores, strict=True)))

    def failed(self, action: EvaluateRules) -> int:
        """The model refused to score the window: the rules' state stays as it was. Returns the
        stream's ``rule_errors``."""
        figures = self._figures.setdefault(action.stream, {"rule_windows": 0, "rule_errors": 0})
        figures["rule_errors"] += 1
        return int(figures["rule_errors"])

    def close_ended(self, streams: Mapping[str, StreamCaptions], pending: set[str]) -> None:
        """End the open events of every stream that ended and has nothing left to caption, and none of
        whose windows is held, in flight or waiting to be scored (``pending``, with :attr:`due`)."""
        pending = pending | {action.stream for action in self.due}
        for name, stream in streams.items():
            if stream.ended and not stream.due and name not in pending and name not in self._closed:
                self._closed.add(name)
                self._events.extend(self.alerts.end_stream(name))

    def all_closed(self, streams: int) -> bool:
        return len(self._closed) == streams

    def take_events(self) -> list[messages.Event]:
        events, self._events = self._events, []
        return events

    def stop(self) -> list[messages.Event]:
        """The run stops: the ``end`` of every event still open (with what the outbox still held)."""
        self._events.extend(self.alerts.stop())
        return self.take_events()

    def add_status(self, figures: dict[str, dict[str, Any]]) -> None:
        """The rule figures of each stream's ``inference_status`` entry."""
        for name, entry in figures.items():
            entry.update(self._figures.get(name, {}))
            entry["open_events"] = self.alerts.open_events(name)
