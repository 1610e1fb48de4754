"""What a user types to search the store, made safe: the query, and the wall-clock span (no I/O).

A query is plain words, which must all occur (AND), and ``"quoted phrases"``, whose words must occur
in that order; a word ending in ``*`` matches words starting with it. Nothing else of FTS5's query
language is passed through: every word and phrase becomes an FTS5 string (``"..."`` with inner quotes
doubled), so ``OR``, ``NOT``, ``NEAR``, ``column:``, parentheses and ``^`` are searched for as words,
never parsed as syntax. A query that cannot be searched (too long, no words, a quote left open) is a
:class:`~stream.errors.StoreQueryError` naming it.

Spans: ``--since 2h`` (``45s``, ``30m``, ``2h``, ``1d``, ``1w``, and sums such as ``1h30m``) ends now;
``--from``/``--to`` take ISO 8601 (``2026-12-06T14:00``, ``2026-12-06 14:00:00+01:00``) or ``HH:MM`` /
``HH:MM:SS`` today; times without a zone are local. The current time is passed in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, time, tzinfo
from typing import Final

from .errors import ConfigError, StoreQueryError

MAX_QUERY_CHARS: Final = 1000
MAX_QUERY_TERMS: Final = 64

_TERM = re.compile(r'"([^"]*)"|([^\s"]+)')
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])", re.IGNORECASE)
_CONTROLS: Final = dict.fromkeys(range(32), " ")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


def match_expression(query: str) -> str:
    """The FTS5 MATCH expression of a user's query: its words and phrases ANDed, each one quoted."""
    shown = _shown(query)
    if len(query) > MAX_QUERY_CHARS:
        raise StoreQueryError(
            f"search query {shown}: {len(query)} characters; the limit is {MAX_QUERY_CHARS}"
        )
    if query.count('"') % 2:
        raise StoreQueryError(f"search query {shown}: a quote is not closed")
    terms: list[str] = []
    for match in _TERM.finditer(query.translate(_CONTROLS)):  # FTS5 strings end at a NUL
        phrase, word = match.groups()
        prefix = False
        if word is not None:
            prefix = word.endswith("*") and len(word.rstrip("*")) > 0
            text = word.rstrip("*")
        else:
            text = phrase
        if not any(ch.isalnum() for ch in text):  # nothing FTS5's tokenizer would index
            continue
        terms.append('"' + text.replace('"', '""') + '"' + ("*" if prefix else ""))
    if not terms:
        raise StoreQueryError(f"search query {shown}: no words to search for")
    if len(terms) > MAX_QUERY_TERMS:
        raise StoreQueryError(
            f"search query {shown}: {len(terms)} words and phrases; the limit is {MAX_QUERY_TERMS}"
        )
    return " AND ".join(terms)


def any_word_expression(text: str) -> str:
    """The FTS5 MATCH expression of any of ``text``'s words (ORed, each one quoted; the first
    :data:`MAX_QUERY_TERMS` distinct ones): a question's words, ranked by bm25, where the plain query
    would need all of them. :class:`~stream.errors.StoreQueryError` when it has no word."""
    words = dict.fromkeys(w.lower() for w in _WORD.findall(text[: MAX_QUERY_CHARS * 4]))
    if not words:
        raise StoreQueryError(f"search query {_shown(text)}: no words to search for")
    return " OR ".join(f'"{word}"' for word in list(words)[:MAX_QUERY_TERMS])


_WORD = re.compile(r"\w+")


def _shown(query: str) -> str:
    return repr(query) if len(query) <= 60 else repr(query[:57] + "...")


@dataclass(frozen=True)
class Span:
    """Wall-clock seconds ``[wall_from, wall_to]``; None leaves that side open."""

    wall_from: float | None = None
    wall_to: float | None = None


def parse_duration(text: str, *, flag: str = "--since") -> float:
    """Seconds of ``45s``, ``30m``, ``2h``, ``1d``, ``1w`` or a sum such as ``1h30m``."""
    compact = text.strip()
    parts = _DURATION_PART.findall(compact)
    if not parts or _DURATION_PART.sub("", compact).strip():
        raise ConfigError(f"{flag} {text!r}: not a duration (e.g. 45s, 30m, 2h, 1d, 1h30m)")
    seconds = sum(float(number) * _UNITS[unit.lower()] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{flag} {text!r}: the duration must be more than 0")
    return seconds


def parse_time(text: str, *, now: float, tz: tzinfo | None = None, flag: str = "--from") -> float:
    """Unix seconds of an ISO 8601 time or ``HH:MM[:SS]`` today; ``tz`` (default: local) is the zone
    of times that name none, and of "today"."""
    value = text.strip()
    clock = _CLOCK.fullmatch(value)
    if clock is not None:
        hour, minute, second = int(clock[1]), int(clock[2]), int(clock[3] or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ConfigError(f"{flag} {text!r}: not a time of day")
        # Naive local times are resolved by the C library, which knows the day's DST offset.
        today = datetime.fromtimestamp(now, tz=tz).date()
        return datetime.combine(today, time(hour, minute, second), tzinfo=tz).timestamp()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: not a time (ISO 8601 such as 2026-12-06T14:00, or HH:MM today)"
        ) from None
    if moment.tzinfo is None and tz is not None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def parse_span(
    *, since: str | None, wall_from: str | None, wall_to: str | None, now: float, tz: tzinfo | None = None
) -> Span:
    """The span of ``--since`` or ``--from``/``--to`` (either side may be left open); both kinds
    together, or a start after the end, is a :class:`~stream.errors.ConfigError`."""
    if since is not None:
        if wall_from is not None or wall_to is not None:
            raise ConfigError("--since and --from/--to: give one or the other")
        return Span(now - parse_duration(since), None)
    start = parse_time(wall_from, now=now, tz=tz, flag="--from") if wall_from is not None else None
    end = parse_time(wall_to, now=now, tz=tz, flag="--to") if wall_to is not None else None
    if start is not None and end is not None and start > end:
        raise ConfigError(f"--from {wall_from!r} is after --to {wall_to!r}")
    return Span(start, end)
