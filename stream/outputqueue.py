"""The core of the outputs that leave the machine (webhook, MQTT), without I/O: what waits to be
delivered, when the next try may go, and the counters ``status`` shows.

* :class:`OutputQueue` holds the deliveries of one output, bounded in count and in bytes: when full,
  the oldest waiting one is dropped and counted, so a receiver that is down or slow costs memory up to
  the bound and never blocks the bus reader (nor, through it, capture, inference or the fan-out). Up
  to ``window`` deliveries are handed out at once (in flight: 1 for a webhook, so its POSTs keep their
  order; more for MQTT, whose client pipelines QoS 1 publications); a delivery in flight is never what
  a full queue drops. A try that failed and may be retried goes back to the front and the queue
  waits a :class:`Backoff` (doubling per failure in a row, capped; reset by a success) before the
  next try; after ``max_attempts`` tries it is given up (dropped, counted).
* :func:`http_outcome` says what an HTTP status means for a webhook delivery: 2xx delivered; 408,
  429 and 5xx worth retrying; any other (4xx: the receiver refuses this request, and would again) a
  failure not retried.

Counters, since the outputs process started: ``sent`` deliveries that arrived, ``failed`` tries that
failed (a delivery tried three times before it arrived adds 2), ``dropped`` deliveries lost (pushed
out of a full queue, given up after ``max_attempts``, or refused by the receiver), ``queued`` waiting
or in flight. Every delivery pushed is, at any time, exactly one of sent, dropped or queued.

Time is passed in (monotonic seconds); :mod:`stream.outputs`, :mod:`stream.webhook` and
:mod:`stream.mqttout` are the shells.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections import deque
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Outcome(StrEnum):
    """What became of one try."""

    SENT = "sent"
    RETRY = "retry"  # failed, worth trying again: a timeout, a refused connection, a 5xx
    REJECTED = "rejected"  # failed, and would again: dropped without a retry


class OutputState(StrEnum):
    """An output as ``status`` shows it."""

    CONNECTING = "connecting"  # not connected yet, or reconnecting (MQTT)
    OK = "ok"  # connected (MQTT); the last try went through or none failed yet (webhook)
    RETRYING = "retrying"  # the last try failed: the next waits the backoff


@dataclass(frozen=True)
class Backoff:
    """The wait after ``failures`` failed tries in a row: ``initial``, doubling, at most ``maximum``."""

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.maximum, self.initial * 2.0 ** min(failures - 1, 64))


@dataclass(frozen=True)
class Delivery:
    """One thing to deliver: ``body`` (a webhook's POST body, an MQTT payload), and for MQTT its
    ``topic``, ``qos`` and ``retain``. ``arrived``: monotonic seconds when it was queued."""

    body: bytes
    arrived: float
    topic: str = ""
    qos: int = 0
    retain: bool = False
    ticket: int = field(default=0, compare=False)  # the queue's handle for it once pushed

    @property
    def size(self) -> int:
        """Bytes this holds in memory, roughly: what the queue's byte bound counts."""
        return len(self.body) + len(self.topic) + 100


def http_outcome(status: int) -> Outcome:
    """What an HTTP response status means for a webhook delivery (see the module docstring)."""
    if 200 <= status < 300:
        return Outcome.SENT
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.REJECTED


def signature(body: bytes, secret: str) -> str:
    """The ``X-Vidnarrate-Signature`` header value: ``sha256=`` and the hex HMAC-SHA256 of the body
    with the secret (UTF-8). A receiver computes the same over the raw body and compares in constant
    time (``hmac.compare_digest``)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class _Entry:
    delivery: Delivery
    attempts: int = 0  # tries that failed so far


class OutputQueue:
    """The bounded queue of one output, with its retry policy and counters (see the module)."""

    def __init__(
        self,
        *,
        capacity: int = 1000,
        max_bytes: int = 16 * 1024 * 1024,
        window: int = 1,
        max_attempts: int = 0,
        backoff: Backoff | None = None,
    ) -> None:
        """``max_attempts``: tries before a delivery is given up (0: never, it waits in the queue until
        it goes through or a full queue drops it)."""
        if capacity < 1 or window < 1 or max_attempts < 0:
            raise ValueError("capacity and window must be at least 1, max_attempts at least 0")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.window = window
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self._waiting: deque[_Entry] = deque()
        self._bytes = 0
        self._in_flight: dict[int, _Entry] = {}
        self._tickets = itertools.count(1)
        self._failures = 0  # failed tries in a row, of any delivery: the receiver's health
        self._retry_at: float | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.rejected = 0  # of dropped: refused by the receiver
        self.retried = 0  # tries that were a retry of a delivery tried before
        self.state = OutputState.OK

    def __len__(self) -> int:
        """Deliveries waiting or in flight: ``queued``."""
        return len(self._waiting) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def push(self, delivery: Delivery) -> int:
        """Queue ``delivery``; returns how many waiting deliveries were dropped to make room."""
        entry = _Entry(replace(delivery, ticket=next(self._tickets)))
        self._waiting.append(entry)
        self._bytes += entry.delivery.size
        dropped = 0
        while self._waiting and (
            len(self._waiting) > self.capacity or (self._bytes > self.max_bytes and len(self._waiting) > 1)
        ):
            old = self._waiting.popleft()
            self._bytes -= old.delivery.size
            dropped += 1
        self.dropped += dropped
        return dropped

    def wait(self, now: float) -> float | None:
        """Seconds until :meth:`take` hands out a delivery (0.0: now); None while there is nothing
        waiting or the window is full (a delivery in flight must end first)."""
        if not self._waiting or len(self._in_flight) >= self.window:
            return None
        if self._retry_at is not None and now < self._retry_at:
            return self._retry_at - now
        return 0.0

    def take(self, now: float) -> Delivery | None:
        """The oldest waiting delivery, now in flight, when the window and the backoff allow; else None."""
        if self.wait(now) != 0.0:
            return None
        entry = self._waiting.popleft()
        self._bytes -= entry.delivery.size
        self._in_flight[entry.delivery.ticket] = entry
        if entry.attempts:
            self.retried += 1
        return entry.delivery

    def done(self, ticket: int, outcome: Outcome, now: float) -> bool:
        """How the try of the delivery in flight ``ticket`` went; True when it is now dropped (refused,
        or given up after ``max_attempts``). A ticket not in flight (already ended) is ignored."""
        entry = self._in_flight.pop(ticket, None)
        if entry is None:
            return False
        if outcome is Outcome.SENT:
            self.sent += 1
            self._failures = 0
            self._retry_at = None
            self.state = OutputState.OK
            return False
        self.failed += 1
        entry.attempts += 1
        if outcome is Outcome.REJECTED:
            # The receiver answered, so it is up: no backoff for the deliveries behind this one.
            self.rejected += 1
            self.dropped += 1
            return True
        self._failures += 1
        self._retry_at = now + self.backoff.delay(self._failures)
        self.state = OutputState.RETRYING
        if self.max_attempts and entry.attempts >= self.max_attempts:
            self.dropped += 1
            return True
        self._waiting.appendleft(entry)
        self._bytes += entry.delivery.size
        return False

    def oldest(self, now: float) -> float | None:
        """Seconds the oldest delivery still queued (waiting or in flight) has been queued: how far
        behind the output is. None when nothing is queued."""
        arrived = [e.delivery.arrived for e in self._in_flight.values()]
        if self._waiting:
            arrived.append(self._waiting[0].delivery.arrived)
        return max(0.0, now - min(arrived)) if arrived else None

    def drop_waiting(self) -> int:
        """Drop everything waiting (not what is in flight); returns how many (stopping with a
        receiver still down: these are lost, and counted)."""
        count = len(self._waiting)
        self._waiting.clear()
        self._bytes = 0
        self.dropped += count
        return count

    def abandon(self) -> int:
        """Drop what is in flight too (stopping: no answer will come for it now); returns how many."""
        count = len(self._in_flight)
        self._in_flight.clear()
        self.dropped += count
        return count
