"""Replay served from the caption store, merged with the gateway's own replay buffer, without I/O.

A client that subscribes with ``replay`` gets the last captions of each stream it asked for. The
gateway's in-memory buffer (:class:`~stream.fanout.ReplayStore`) holds only what this gateway heard
since it started; the store (written by the recorder) also holds earlier runs and whatever this run
published before a restarted gateway subscribed. The two overlap, and neither is complete:

* the recorder commits a batch about twice a second, so this run's newest captions are in memory and
  not yet in the store;
* the store may hold a caption of this run the gateway has not read from the bus yet (the two
  subscribers read at their own pace): it reaches the client live moments later, so replaying it too
  would show it twice.

:func:`merge_replay` therefore keys this run's captions by ``(stream, seq)``: the buffer's copy wins,
and a stored one newer than the newest the gateway has seen of that stream is left to the live path.
Captions of other runs (another ``run_id`` in the store) are marked ``"earlier_run": true``; every
replayed caption carries ``"replayed": true``. The order is the one live clients saw: earlier runs
first, then this run, each by wall time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import ProtocolError

_REPLAYED = b',"replayed":true}'
_EARLIER = b',"replayed":true,"earlier_run":true}'


@dataclass(frozen=True)
class ReplayEntry:
    """One caption that may be replayed: from the gateway's buffer (``run_id`` None: this run, ``body``
    already marked) or from the store (``run_id`` as stored, ``body`` the JSON as published)."""

    stream: str
    seq: int | None
    wall_end: float
    body: bytes
    run_id: str | None = None


def mark_stored(body: bytes, *, earlier_run: bool) -> bytes:
    """A stored caption's JSON with ``"replayed": true`` (and ``"earlier_run": true``) spliced in,
    without decoding it (the store keeps the bytes the bus carried: one JSON object)."""
    body = body.rstrip()
    if not body.endswith(b"}"):
        raise ProtocolError("cannot mark a stored caption as replayed: its JSON is not an object")
    return body[:-1] + (_EARLIER if earlier_run else _REPLAYED)


def merge_replay(
    stored: Iterable[ReplayEntry],
    buffered: Mapping[str, Sequence[ReplayEntry]],
    *,
    run_id: str,
    count: int,
) -> list[bytes]:
    """The captions to replay, ready to send: up to ``count`` per stream, oldest first.

    ``stored``: the last captions of each wanted stream read from the store (any runs); ``buffered``:
    the gateway's buffer per wanted stream, in arrival order (captions of this run, ``run_id`` None);
    ``run_id``: this run's id, as the recorder stores it."""
    if count <= 0:
        return []
    newest_seen = {
        stream: max((e.seq for e in entries if e.seq is not None), default=None)
        for stream, entries in buffered.items()
    }
    buffered_keys = {(e.stream, e.seq) for entries in buffered.values() for e in entries}
    # (this run?, wall time, arrival) -> body; this run's captions sort after every earlier run's.
    picked: dict[str, list[tuple[bool, float, int, bytes]]] = {}
    arrival = 0
    for entry in stored:
        current = entry.run_id == run_id
        if current:
            newest = newest_seen.get(entry.stream)
            if (entry.stream, entry.seq) in buffered_keys or (
                newest is not None and entry.seq is not None and entry.seq > newest
            ):
                continue  # the buffer's copy is sent, or the live path is about to send it
        body = mark_stored(entry.body, earlier_run=not current)
        picked.setdefault(entry.stream, []).append((current, entry.wall_end, arrival, body))
        arrival += 1
    for stream, entries in buffered.items():
        for entry in entries:
            picked.setdefault(stream, []).append((True, entry.wall_end, arrival, entry.body))
            arrival += 1
    chosen: list[tuple[bool, float, int, bytes]] = []
    for candidates in picked.values():
        candidates.sort()
        chosen.extend(candidates[-count:])
    chosen.sort()
    return [body for *_, body in chosen]
