"""The alert core: window scores in, ``event`` messages out, per (stream, rule), with no I/O.

No clock, no threads, no model: the scheduling core (:mod:`stream.scheduler`) feeds it each scored
window (:meth:`AlertCore.observe`), times are the window's own (stream seconds and wall seconds), and
it returns the :class:`~stream.messages.Event` values to publish. The rules are
:class:`~stream.alertrules.AlertRule` values.

Each (stream, rule) pair is independent and runs this state machine (:class:`RuleState`):

* **idle**: a window with ``score >= threshold`` is positive. ``on_after`` positive windows in a row
  start an event (``start``, with the thumbnail of the window's newest frame) unless the rule is
  cooling down: after an event ended, it may start again only with a window that ends at least
  ``cooldown`` seconds (stream time) after the window that ended it. Positives seen while cooling
  down still count towards ``on_after``.
* **open**: every further positive window is an ``update`` (its score, its caption, the event's
  ``t_end``/``wall_end`` moved to the window's end), so a listener follows how the scene goes on.
  ``off_after`` negative windows in a row end it (``end``).
* A stream that ends (:meth:`AlertCore.end_stream`) or a run that stops (:meth:`AlertCore.stop`)
  ends every event still open on it, so no ``start`` is ever left without its ``end``.

Times of an event: ``t_start``/``wall_start`` are the start of the first window of the positive run
that started it; ``t_end``/``wall_end`` the end of its last positive window (``end`` included: the
event covers what was seen, not the negative windows that ended it). ``score`` and ``text`` are the
window that made the message (on ``end``: the negative window that ended it, or the last window seen
when its stream ended or the run stopped). ``event_id`` is ``RUN-STREAM-RULE-N``: unique across runs
(the run id is unique), the same from ``start`` to ``end``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .alertrules import AlertRule
from .messages import Event, EventState


@dataclass(frozen=True)
class Window:
    """What the alert core needs of one captioned window. ``thumbnail``: base64 JPEG of its newest
    frame, or None (sent on an event's ``start`` only)."""

    stream: str
    t_start: float
    t_end: float
    wall_start: float
    wall_end: float
    text: str
    thumbnail: str | None = None


class Phase(StrEnum):
    IDLE = "idle"
    OPEN = "open"


@dataclass
class RuleState:
    """One (stream, rule) pair's hysteresis state."""

    phase: Phase = Phase.IDLE
    positives: int = 0  # positive windows in a row
    negatives: int = 0  # negative windows in a row (open only)
    run_start: tuple[float, float] | None = None  # (t, wall) start of the current positive run
    event_id: str | None = None
    started: tuple[float, float] = (0.0, 0.0)  # (t_start, wall_start) of the open event
    last_positive: tuple[float, float] = (0.0, 0.0)  # (t_end, wall_end) of its last positive window
    last_seen: tuple[Window, float] | None = None  # the last window scored, and its score
    cool_until: float | None = None  # stream time a starting window must end at or after


@dataclass
class RuleCounts:
    """Per rule, over every stream: windows scored, events started."""

    scored: int = 0
    started: int = 0


@dataclass
class AlertCore:
    """Every rule's state on every stream (see the module docstring). ``run_id`` makes event ids
    unique across runs."""

    rules: Sequence[AlertRule]
    run_id: str
    _states: dict[tuple[str, str], RuleState] = field(default_factory=dict)
    _numbers: dict[tuple[str, str], int] = field(default_factory=dict)
    counts: dict[str, RuleCounts] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {rule.name: rule for rule in self.rules}
        self.counts = {rule.name: RuleCounts() for rule in self.rules}

    def rules_for_window(self, stream: str, unchanged: bool = False) -> tuple[AlertRule, ...]:
        """The rules to score on a window of ``stream``; a window whose scene did not change since the
        last caption (``unchanged``) only by the rules with ``on_unchanged``."""
        return tuple(r for r in self.rules if r.applies_to(stream) and (r.on_unchanged or not unchanged))

    def open_events(self, stream: str | None = None) -> int:
        return sum(
            1
            for (s, _), state in self._states.items()
            if state.phase is Phase.OPEN and (stream is None or s == stream)
        )

    def observe(self, window: Window, scores: Iterable[tuple[str, float]]) -> list[Event]:
        """The window's ``(rule name, score)`` pairs, in any order: the events they make."""
        events: list[Event] = []
        for name, score in scores:
            rule = self._by_name[name]
            self.counts[name].scored += 1
            event = self._observe(rule, window, score)
            if event is not None:
                events.append(event)
        return events

    def _observe(self, rule: AlertRule, window: Window, score: float) -> Event | None:
        key = (window.stream, rule.name)
        state = self._states.setdefault(key, RuleState())
        state.last_seen = (window, score)
        positive = score >= rule.threshold
        if state.phase is Phase.OPEN:
            if positive:
                state.negatives = 0
                state.last_positive = (window.t_end, window.wall_end)
                return self._event(rule, state, window, score, EventState.UPDATE)
            state.negatives += 1
            if state.negatives < rule.off_after:
                return None
            event = self._event(rule, state, window, score, EventState.END)
            self._reset(state, cool_until=window.t_end + rule.cooldown)
            return event
        if not positive:
            state.positives, state.run_start = 0, None
            return None
        if state.positives == 0 or state.run_start is None:
            state.run_start = (window.t_start, window.wall_start)
        state.positives += 1
        cooling = state.cool_until is not None and window.t_end < state.cool_until
        if state.positives < rule.on_after or cooling:
            return None
        number = self._numbers.get(key, 0) + 1
        self._numbers[key] = number
        state.phase = Phase.OPEN
        state.negatives = 0
        state.event_id = f"{self.run_id}-{window.stream}-{rule.name}-{number}"
        state.started = state.run_start
        state.last_positive = (window.t_end, window.wall_end)
        self.counts[rule.name].started += 1
        return self._event(rule, state, window, score, EventState.START, thumbnail=window.thumbnail)

    @staticmethod
    def _reset(state: RuleState, *, cool_until: float | None) -> None:
        state.phase = Phase.IDLE
        state.positives = state.negatives = 0
        state.run_start = state.event_id = None
        state.cool_until = cool_until

    @staticmethod
    def _event(
        rule: AlertRule,
        state: RuleState,
        window: Window,
        score: float,
        kind: EventState,
        *,
        thumbnail: str | None = None,
    ) -> Event:
        assert state.event_id is not None
        return Event(
            stream=window.stream,
            rule=rule.name,
            event_id=state.event_id,
            state=kind,
            t_start=round(state.started[0], 3),
            t_end=round(state.last_positive[0], 3),
            wall_start=state.started[1],
            wall_end=state.last_positive[1],
            score=round(float(score), 4),
            text=window.text,
            thumbnail=thumbnail,
        )

    def end_stream(self, stream: str) -> list[Event]:
        """The stream ended: each event open on it ends, and its rules start afresh (no cooldown)."""
        events = []
        for (s, name), state in self._states.items():
            if s != stream:
                continue
            if state.phase is Phase.OPEN and state.last_seen is not None:
                window, score = state.last_seen
                events.append(self._event(self._by_name[name], state, window, score, EventState.END))
            self._reset(state, cool_until=None)
        return events

    def stop(self) -> list[Event]:
        """The run stops: every open event, of every stream, ends."""
        events: list[Event] = []
        for stream in sorted({s for s, _ in self._states}):
            events.extend(self.end_stream(stream))
        return events
