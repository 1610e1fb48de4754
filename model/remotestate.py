"""What the remote backend knows of its server between requests.

Its health as ``status`` shows it (:class:`BackendState`, :class:`Health`: one lock, since several
requests report at once), the media ids the server holds (:class:`MediaCache`: vLLM's per-media
``uuid`` caching, given up after misses in a row and tried again later), and how long a 429 asks the
client to wait (:func:`retry_after`, :func:`next_pause`). No I/O and no clock of its own: times are
passed in.
:mod:`model.remote` makes the requests and reports to these.
"""

from __future__ import annotations

import email.utils
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

# The remote backend's own log: what these learn is its story (media ids given up, tried again).
log = logging.getLogger("model.remote")

# A server's Retry-After is honoured up to this: a bogus or hours-long one must not park captions
# beyond what an operator would notice and fix (the wait still ends at once on a stop).
RETRY_AFTER_MAX_S = 120.0
# A request that failed for want of the server is tried again after this, doubling up to the max.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
SENT_IDS = 4096  # frame ids the server is known to hold (vLLM media caching), newest kept
# Cache misses in a row after which the server is taken not to honour media uuids at all (a vLLM
# too old for them, a router spreading one camera over replicas): frames are then always sent.
MISSES_TO_GIVE_UP = 3
# How long media ids stay off after that, before they are tried again: a few wasted resends per
# period against the bytes saved once a server that honours them is back.
REPROBE_AFTER_S = 600.0
# A 500 (not 502-504: gateways, overload) or an unfinished stream this many times in a row for one
# request is the server's answer to that request, not an outage.
INTERNAL_ERRORS_TO_REFUSE = 3


class BackendState(StrEnum):
    """The server, as the last request found it (``status``: ``backend.state``)."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    RATE_LIMITED = "rate_limited"  # the server answers, with 429: it asks us to slow down


class Health:
    """What the backend's requests found, for ``status`` (one lock: several requests report)."""

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        self.url = url
        self.state = BackendState.OK
        self.error: str | None = None
        self.requests = 0
        self.in_flight = 0
        self.failures = 0  # requests that failed and were retried (outages)
        self.refused = 0  # requests the server refused (4xx)
        self.rate_limited = 0  # 429 answers (each retried)
        self.bytes_sent = 0
        self.media_cache_misses = 0
        self._internal_in_row = 0  # requests refused by internal errors since one was answered

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def sent(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_sent += nbytes

    def succeeded(self) -> None:
        with self._lock:
            self.requests += 1
            self._internal_in_row = 0
            self.state, self.error = BackendState.OK, None

    def failed(self, reason: str) -> None:
        with self._lock:
            self.failures += 1
            self.state, self.error = BackendState.UNREACHABLE, reason

    def limited(self, reason: str) -> None:
        with self._lock:
            self.rate_limited += 1
            self.state, self.error = BackendState.RATE_LIMITED, reason

    def was_refused(self, reason: str, *, internal: bool = False) -> None:
        """A refusal is an answer: the server is up. But requests refused one after another by
        internal errors (``internal``), none answered between, are a server that fails everything
        (a dead engine behind a live HTTP front): shown ``unreachable``."""
        with self._lock:
            self.refused += 1
            self._internal_in_row = self._internal_in_row + 1 if internal else 0
            if self._internal_in_row >= INTERNAL_ERRORS_TO_REFUSE:
                self.state, self.error = BackendState.UNREACHABLE, f"the server fails every request: {reason}"
            else:
                self.state, self.error = BackendState.OK, reason

    def missed(self) -> None:
        with self._lock:
            self.media_cache_misses += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "url": self.url,
                "state": self.state.value,
                "error": self.error,
                "requests": self.requests,
                "in_flight": self.in_flight,
                "failures": self.failures,
                "refused": self.refused,
                "rate_limited": self.rate_limited,
                "bytes_sent": self.bytes_sent,
                "media_cache_misses": self.media_cache_misses,
            }


class MediaCache:
    """What this client has learnt of the server, shared by every ``for_user`` view: whether vLLM's
    media caching is used (``supported``: the server said it is vLLM; off for ``reprobe_after``
    seconds after :data:`MISSES_TO_GIVE_UP` misses in a row), the frame ids the server has received
    in a request that went through (bounded, newest kept), and whether it takes ``logprobs``. No
    clock of its own: times are passed in."""

    def __init__(
        self,
        supported: bool,
        limit: int = SENT_IDS,
        reprobe_after: float = REPROBE_AFTER_S,
        url: str = "",
    ) -> None:
        self.supported = supported
        self.url = url  # the server's, for the log
        self.misses = 0
        self.off_until: float | None = None  # given up until then (monotonic seconds)
        self.reprobe_after = reprobe_after
        self.logprobs = True
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def enabled(self, now: float) -> bool:
        """Whether frames go with their ids at ``now`` (given up ids come back once their time is up)."""
        if not self.supported:
            return False
        with self._lock:
            if self.off_until is not None and now >= self.off_until:
                self.off_until, self.misses = None, 0
                log.info("model server %s: media uuids are tried again", self.url)
            return self.off_until is None

    def missed(self, now: float) -> bool:
        """A request relied on ids the server did not hold; True when that gives ids up (now)."""
        with self._lock:
            self.misses += 1
            if self.misses < MISSES_TO_GIVE_UP or self.off_until is not None:
                return False
            self.off_until = now + self.reprobe_after
            self._ids.clear()
            return True

    def found(self) -> None:
        """A request that relied on held ids went through: the misses in a row end."""
        with self._lock:
            self.misses = 0

    def reset(self) -> None:
        """The server may be another one now (after an outage): nothing is held, ids are tried again."""
        with self._lock:
            self._ids.clear()
            self.misses, self.off_until = 0, None

    def __contains__(self, uuid: object) -> bool:
        with self._lock:
            return uuid in self._ids

    def add(self, uuids: Iterable[str]) -> None:
        with self._lock:
            for uuid in uuids:
                self._ids[uuid] = None
                self._ids.move_to_end(uuid)
            while len(self._ids) > self.limit:
                self._ids.popitem(last=False)

    def forget(self, uuids: Iterable[str]) -> None:
        with self._lock:
            for uuid in uuids:
                self._ids.pop(uuid, None)


def retry_after(headers: Any, now: float) -> float | None:
    """Seconds to wait that a 429's headers ask for: ``retry-after-ms`` (OpenAI's), else
    ``Retry-After`` as seconds or an HTTP date (RFC 9110), at most ``RETRY_AFTER_MAX_S``; None when
    neither is there or readable (the caller's backoff applies)."""
    seconds: float | None = None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            seconds = None
    value = headers.get("retry-after")
    if seconds is None and value is not None:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
            except (TypeError, ValueError):
                return None
    if seconds is None or seconds != seconds:  # absent, or NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def next_pause(backoff: float, wait: float | None) -> tuple[float, float]:
    """How long to wait before asking the server again, and the backoff after that: its Retry-After
    ``wait`` when it gave one (at least :data:`BACKOFF_INITIAL_S`: a "0" must not spin; the backoff
    stays), else ``backoff``, doubled for the next time up to :data:`BACKOFF_MAX_S`."""
    if wait is not None:
        return max(wait, BACKOFF_INITIAL_S), backoff
    return backoff, min(backoff * 2, BACKOFF_MAX_S)
