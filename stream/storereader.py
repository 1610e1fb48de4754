"""The gateway's read-only access to the caption store: websocket ``search`` and ``history`` answered,
and the stored captions a question over the past (``ask`` with ``since`` or ``from``/``to``) needs.

The recorder writes the store; the gateway only reads it (WAL: neither blocks the other). The file may
not exist when the gateway starts (the recorder makes it moments later), so it is opened on the first
request that needs it, and again after a failed read; until then requests get ``store_unavailable``
with the reason. :meth:`StoreReader.answer` does blocking SQLite work: the gateway calls it on one
worker thread of its own, never on the event loop (a :class:`~stream.store.Store` is used by one
thread at a time).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import StoreError, StoreQueryError
from .messages import AskId, ErrorCode, ErrorReply, Message, Results
from .requests import Search, StoreRequest
from .store import Store, StoredMessage
from .storereplay import ReplayEntry

log = logging.getLogger(__name__)

MAX_RESULTS_BYTES: Final = 1024 * 1024  # of the items of one reply; the rest is left out (truncated)
# Stored captions sent with a question over the past, best first; the inference process keeps those
# that fit the model's input (8k tokens hold about 150 captions).
PAST_CANDIDATES: Final = 300


@dataclass(frozen=True)
class PastCaptions:
    """The stored captions a question over the past is answered from, best first (``{t_start, t_end,
    wall_start, wall_end, text}`` each), and the span searched (Unix seconds)."""

    captions: list[Message]
    wall_from: float
    wall_to: float


class StoreReader:
    """Answers store requests from the store at ``path``, opened read-only when first needed."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_RESULTS_BYTES, run_id: str | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.run_id = run_id  # this run's: items stored by another are marked earlier_run
        self._store: Store | None = None

    def answer(self, request: StoreRequest) -> Results | ErrorReply:
        """The reply to ``request``: its ``results``, or an ``error`` (never raises for a store that is
        missing, unreadable or damaged: the client is told, and the next request tries again)."""
        try:
            store = self._open()
            if isinstance(request, Search):
                found = store.search(
                    request.query,
                    streams=None if request.streams is None else sorted(request.streams),
                    wall_from=request.wall_from,
                    wall_to=request.wall_to,
                    limit=request.limit,
                )
            else:
                found = store.history(request.stream, request.wall_from, request.wall_to, request.limit)
        except StoreQueryError as exc:
            return ErrorReply(error=ErrorCode.BAD_QUERY, message=str(exc), id=request.id)
        except StoreError as exc:
            self.close()  # a file replaced or repaired meanwhile is read afresh next time
            return ErrorReply(error=ErrorCode.STORE_UNAVAILABLE, message=str(exc), id=request.id)
        return self._results(request.id, found)

    def recent(self, streams: frozenset[str] | None, count: int, max_streams: int) -> list[ReplayEntry]:
        """The last ``count`` stored captions of each of ``streams`` (None: every stream), for a replay;
        none while the store cannot be read (the replay then comes from the gateway's buffer alone)."""
        try:
            found = self._open().recent(
                None if streams is None else sorted(streams), count, max_streams=max_streams
            )
        except StoreError as exc:
            self.close()
            log.info("replaying without the store: %s", exc)
            return []
        return [
            ReplayEntry(row.stream, row.seq, row.wall_end, row.json.encode(), run_id=row.run_id)
            for row in found
        ]

    def thumbnail(self, store_id: int) -> bytes | None:
        """The JPEG kept with the stored message ``store_id``; None when there is none or the store
        cannot be read."""
        try:
            return self._open().thumbnail(store_id)
        except StoreError as exc:
            self.close()
            log.info("no thumbnail %d: %s", store_id, exc)
            return None

    def past_captions(
        self,
        request_id: AskId,
        stream: str,
        question: str,
        wall_from: float | None,
        wall_to: float,
    ) -> PastCaptions | ErrorReply:
        """The captions of ``stream`` ending within ``[wall_from, wall_to]`` to answer ``question``
        from: those that share its words, best bm25 first, then the span's newest; or an ``error``
        (no store, no such stream, no caption in the span)."""
        try:
            store = self._open()
            if not store.has_stream(stream):
                known = ", ".join(store.streams()) or "none"
                return ErrorReply(
                    error=ErrorCode.UNKNOWN_STREAM,
                    message=f"nothing of stream {stream!r} is stored (streams: {known})",
                    id=request_id,
                )
            try:
                found = store.search(
                    question, [stream], wall_from, wall_to, PAST_CANDIDATES, kinds=["caption"], any_word=True
                )
            except StoreQueryError:  # a question without a word to search for
                found = []
            seen = {m.id for m in found}
            newest = store.newest_captions(stream, wall_from, wall_to, PAST_CANDIDATES)
            found += [m for m in newest if m.id not in seen][: PAST_CANDIDATES - len(found)]
            if wall_from is None and found:  # an open start: the span covered begins at the first caption
                (first,) = store.history(stream, None, wall_to, limit=1)
                wall_from = first.wall_start if first.wall_start is not None else first.wall_end
        except StoreError as exc:
            self.close()
            return ErrorReply(error=ErrorCode.STORE_UNAVAILABLE, message=str(exc), id=request_id)
        if not found:
            start = "the beginning" if wall_from is None else _when(wall_from)
            return ErrorReply(
                error=ErrorCode.NO_CAPTIONS,
                message=f"no caption of {stream} is stored from {start} to {_when(wall_to)}",
                id=request_id,
            )
        captions: list[Message] = [
            {"t_start": m.t_start, "t_end": m.t_end, "wall_start": m.wall_start or m.wall_end,
             "wall_end": m.wall_end, "text": m.text}
            for m in found
        ]  # fmt: skip
        assert wall_from is not None
        return PastCaptions(captions, wall_from, wall_to)

    def _open(self) -> Store:
        if self._store is None:
            if not self.path.is_file():
                raise StoreError(
                    f"store {self.path}: nothing has been recorded yet (the file does not exist)"
                )
            self._store = Store.open(self.path, readonly=True)
            log.info("gateway reading the store %s", self.path)
        return self._store

    def _results(self, request_id: AskId, found: list[StoredMessage]) -> Results:
        items: list[Message] = []
        size = 0
        for stored in found:
            item = stored.message()
            item["store_id"] = stored.id  # names the row, e.g. for its thumbnail (/thumbnail/<store_id>)
            if self.run_id is not None and stored.run_id != self.run_id:
                item["earlier_run"] = True
            size += len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())
            if size > self.max_bytes:
                return Results(id=request_id, items=items, truncated=True)
            items.append(item)
        return Results(id=request_id, items=items)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(wall))
