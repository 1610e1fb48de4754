"""``vidnarrate events``: the alert events a store kept, one line (or JSON object) per event.

The recorder stores every ``start``, ``update`` and ``end`` message of an event as it was published;
:func:`summarize` folds those of one ``event_id`` into one :class:`EventSummary` (its span, its state,
its highest score and its latest caption). The store is opened read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .process import ExitCode
from .storecli import check_streams, clock, open_store_for_reading, span_of

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


@dataclass
class EventSummary:
    """One event as far as the store knows it. ``state``: ``"ended"`` once its ``end`` is stored,
    else ``"open"`` (still running, or its run was killed before it could end it). ``score``: the
    highest score of its messages; ``text``: its newest caption; ``messages``: how many were stored."""

    event_id: str
    stream: str
    rule: str
    state: str
    t_start: float
    t_end: float
    wall_start: float
    wall_end: float
    score: float
    text: str
    messages: int


def summarize(
    messages: Iterable[dict[str, Any]], *, rules: Iterable[str] | None = None
) -> list[EventSummary]:
    """Stored ``event`` messages (any order) folded per ``event_id``, newest first (by ``wall_end``);
    only of ``rules`` when given."""
    wanted = None if rules is None else set(rules)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        if wanted is None or m.get("rule") in wanted:
            grouped.setdefault(m["event_id"], []).append(m)
    events = []
    for event_id, group in grouped.items():
        group.sort(key=lambda m: (m["wall_end"], m["state"] == "end"))
        positive = [m for m in group if m["state"] != "end"] or group  # only its end is in the span
        first = group[0]
        events.append(
            EventSummary(
                event_id=event_id,
                stream=first["stream"],
                rule=first["rule"],
                state="ended" if any(m["state"] == "end" for m in group) else "open",
                t_start=min(m["t_start"] for m in group),
                t_end=max(m["t_end"] for m in group),
                wall_start=min(m["wall_start"] for m in group),
                wall_end=max(m["wall_end"] for m in group),
                score=max(m["score"] for m in positive),
                text=positive[-1]["text"],
                messages=len(group),
            )
        )
    return sorted(events, key=lambda e: (e.wall_end, e.event_id), reverse=True)


def add_events_command(commands: Any) -> None:
    events = commands.add_parser(
        "events", help="list the alert events a run stored (start, end, score, text)"
    )
    events.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    events.add_argument("--rule", action="append", metavar="NAME", help="only this rule (repeatable)")
    events.add_argument("--since", metavar="DURATION", help="the last 45s, 30m, 2h, 1d, 1h30m ...")
    events.add_argument("--from", dest="wall_from", metavar="TIME", help="ISO 8601 or HH:MM today (local)")
    events.add_argument("--to", dest="wall_to", metavar="TIME", help="ISO 8601 or HH:MM today (local)")
    events.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"the newest N events (default {DEFAULT_LIMIT})",
    )
    events.add_argument("--json", action="store_true", help="JSON lines: one object per event")
    events.add_argument("--store", type=Path, metavar="PATH", help="the store (default: store.path)")
    events.add_argument("--config", type=Path, help="a TOML file with the settings to change")
    events.set_defaults(log_level="WARNING")


def cmd_events(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_LIMIT:
        raise ConfigError(f"--limit {args.limit}: must be from 1 to {MAX_LIMIT}")
    span = span_of(args)
    with open_store_for_reading(args) as store:
        if args.stream:
            check_streams(store, args.stream)
        rows = (json.loads(row.json) for row in store.iter_events(args.stream, span.wall_from, span.wall_to))
        found = summarize(rows, rules=args.rule)[: args.limit]
    for event in found:
        print(json.dumps(asdict(event), ensure_ascii=False) if args.json else event_line(event))
    if not found:
        what = " of " + ", ".join(args.rule) if args.rule else ""
        print(f"vidnarrate: no events{what} stored in that span", file=sys.stderr)
    return ExitCode.OK


def event_line(event: EventSummary) -> str:
    """``start wall time  stream  rule  stream-time span  state  score  text``."""
    wall = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.wall_start))
    span = f"{clock(event.t_start)}-{clock(event.t_end)}"
    text = " ".join(event.text.split())
    return f"{wall}  {event.stream}  {event.rule}  {span}  {event.state}  {event.score:.2f}  {text}"
