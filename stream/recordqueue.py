"""The recorder's core, without I/O: what of the bus is kept, and when it is written.

* :class:`Selection` decides what is kept: every ``caption`` (with the newest thumbnail of its stream
  taken at or before the window's end, when one was seen), every ``event`` and ``summary``, and every
  ``answer`` that answers (not those that carry an ``error``). Thumbnails themselves are only
  remembered, a few per stream, for the captions that follow them.
* :class:`RecordQueue` holds what waits to be written, bounded in messages and in bytes: when full,
  the oldest is dropped and counted, so a slow or failing disk costs memory up to the bound and never
  blocks the reader. It hands out a batch when it is big enough or its oldest message has waited
  ``max_delay`` seconds; a batch whose write failed goes back to the front and is retried after a
  backoff, and dropped (counted) after ``max_attempts`` failures in a row.

Time is passed in (monotonic seconds); :mod:`stream.recorder` is the shell with the threads, the bus
and the store.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict, deque
from dataclasses import dataclass

from .messages import Answer, BusMessage, Caption, Event, Summary, Thumbnail
from .outputqueue import Backoff

KEPT_TYPES = frozenset({"caption", "event", "answer", "summary"})
READ_TYPES = KEPT_TYPES | {"thumbnail"}  # the bus messages the recorder decodes at all


@dataclass(frozen=True)
class Kept:
    """One message to write: the typed message, its JSON exactly as published, and for a caption
    the JPEG bytes of its window's newest thumbnail (or None)."""

    message: Caption | Event | Answer | Summary
    body: bytes
    thumbnail: bytes | None = None

    @property
    def size(self) -> int:
        """Bytes this holds in memory, roughly: what the queue's byte bound counts."""
        return len(self.body) + len(self.thumbnail or b"") + 200


class Thumbnails:
    """The latest ``per_stream`` thumbnails (decoded JPEG bytes) of at most ``max_streams`` streams
    (the stream heard from least recently is forgotten first)."""

    def __init__(self, *, per_stream: int = 32, max_streams: int = 256) -> None:
        self.per_stream = per_stream
        self.max_streams = max_streams
        self._streams: OrderedDict[str, deque[tuple[float, bytes]]] = OrderedDict()

    def add(self, stream: str, t: float, jpeg: bytes) -> None:
        kept = self._streams.get(stream)
        if kept is None:
            kept = self._streams[stream] = deque(maxlen=self.per_stream)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(stream)
        kept.append((t, jpeg))

    def at_or_before(self, stream: str, t: float) -> bytes | None:
        """The newest thumbnail of ``stream`` taken at or before stream time ``t``, else None."""
        best: tuple[float, bytes] | None = None
        for taken, jpeg in self._streams.get(stream, ()):
            if taken <= t and (best is None or taken >= best[0]):
                best = (taken, jpeg)
        return best[1] if best is not None else None


class Selection:
    """Turns bus messages into what the recorder keeps (see the module docstring)."""

    def __init__(self, thumbnails: Thumbnails | None = None) -> None:
        self.thumbnails = thumbnails or Thumbnails()
        self.bad_thumbnails = 0

    @staticmethod
    def reads(kind: str) -> bool:
        """Whether a bus message of this type matters here (everything else is never decoded)."""
        return kind in READ_TYPES

    def offer(self, message: BusMessage, body: bytes) -> Kept | None:
        """What to write for ``message`` (published as ``body``), or None."""
        if isinstance(message, Thumbnail):
            try:
                jpeg = base64.b64decode(message.jpeg, validate=True)
            except (binascii.Error, ValueError):
                self.bad_thumbnails += 1
                return None
            self.thumbnails.add(message.stream, message.t, jpeg)
            return None
        if isinstance(message, Caption):
            return Kept(message, body, self.thumbnails.at_or_before(message.stream, message.t_end))
        if isinstance(message, Event | Summary):
            return Kept(message, body)
        if isinstance(message, Answer) and message.error is None:
            return Kept(message, body)
        return None


class RecordQueue:
    """The bounded queue of :class:`Kept` messages waiting to be written, and the batching policy.

    A batch handed out by :meth:`take` is in flight (out of the queue, so it is never what a full
    queue drops) until :meth:`written` or :meth:`failed` says how its write went: memory is bounded
    by ``capacity`` + ``batch_size`` messages and about ``max_bytes``.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 500,
        max_delay: float = 0.2,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
    ) -> None:
        if capacity < 1 or batch_size < 1 or max_attempts < 1:
            raise ValueError("capacity, batch_size and max_attempts must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._items: deque[tuple[float, Kept]] = deque()
        self._bytes = 0
        self._in_flight: list[tuple[float, Kept]] | None = None
        self._attempts = 0  # failed writes in a row of the batch in flight
        self._retry_at: float | None = None
        self.dropped = 0  # messages lost: pushed out of a full queue, or their write failed for good
        self.failures = 0  # writes that failed

    def __len__(self) -> int:
        """Messages waiting, the batch in flight included."""
        return len(self._items) + len(self._in_flight or ())

    def push(self, item: Kept, now: float) -> int:
        """Queue ``item`` (arrived at ``now``); returns how many older messages were dropped for it."""
        self._items.append((now, item))
        self._bytes += item.size
        return self._trim()

    def _trim(self) -> int:
        dropped = 0
        while len(self._items) > self.capacity or (self._bytes > self.max_bytes and len(self._items) > 1):
            _, old = self._items.popleft()
            self._bytes -= old.size
            dropped += 1
        self.dropped += dropped
        return dropped

    def wait(self, now: float) -> float | None:
        """Seconds until a batch is due (0.0: now), or None while there is nothing to write or a
        batch is in flight."""
        if not self._items or self._in_flight is not None:
            return None
        if self._retry_at is not None and now < self._retry_at:
            return self._retry_at - now
        if len(self._items) >= self.batch_size:
            return 0.0
        return max(0.0, self._items[0][0] + self.max_delay - now)

    def take(self, now: float, *, force: bool = False) -> list[Kept]:
        """The next batch (oldest first, at most ``batch_size``) when due, or whatever waits with
        ``force`` (stopping: no delay, no backoff); empty when nothing is due or a batch is in flight."""
        if self._in_flight is not None or not self._items:
            return []
        if not force and self.wait(now) != 0.0:
            return []
        batch = [self._items.popleft() for _ in range(min(self.batch_size, len(self._items)))]
        self._bytes -= sum(item.size for _, item in batch)
        self._in_flight = batch
        return [item for _, item in batch]

    def written(self) -> None:
        """The batch in flight is committed."""
        self._in_flight = None
        self._attempts = 0
        self._retry_at = None

    def failed(self, now: float) -> int:
        """The write of the batch in flight failed: it goes back to the front of the queue, to be
        retried after a backoff (doubling), or, after ``max_attempts`` failures in a row, is dropped.
        Returns how many messages were dropped (a full queue drops its oldest, the batch first)."""
        batch, self._in_flight = self._in_flight or [], None
        self.failures += 1
        self._attempts += 1
        if self._attempts >= self.max_attempts:
            self.dropped += len(batch)
            self._attempts = 0
            self._retry_at = None
            return len(batch)
        self._retry_at = now + Backoff(self.backoff_initial, self.backoff_max).delay(self._attempts)
        self._items.extendleft(reversed(batch))
        self._bytes += sum(item.size for _, item in batch)
        dropped = self._trim()
        if dropped >= len(batch):
            self._attempts = 0  # the batch that failed is gone; what is at the front now is fresh
        return dropped
