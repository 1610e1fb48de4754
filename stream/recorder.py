"""The recorder process of ``vidnarrate run``: every caption, event, answer and summary of the bus
into the store.

Two threads, so that a slow or failing disk never slows the bus:

* the **reader** subscribes to the run's publishers (as the gateway does), decodes only what is kept
  (:class:`~stream.recordqueue.Selection`: captions with their window's newest thumbnail, events,
  answers, summaries), puts it in the bounded :class:`~stream.recordqueue.RecordQueue` (full: the
  oldest is dropped and counted), and publishes ``recorder_status`` at ~1 Hz (the gateway folds it into
  ``status``);
* the **writer** (the main thread, the only one that touches the SQLite connection) writes a batch
  with :meth:`Store.add <stream.store.Store.add>`, one transaction, whenever the queue says one is
  due (at most ``max_delay`` after its oldest message arrived), and every ``prune_every`` seconds
  runs :meth:`Store.prune <stream.store.Store.prune>` (retention by age and size).

On stop (the supervisor's SIGTERM) the reader keeps reading until the bus has been quiet for
``drain_quiet`` seconds, and the writer commits everything queued before the process exits: what was
published before a Ctrl-C is kept. What is committed survives a SIGKILL of any process (SQLite's WAL);
a recorder that is killed is restarted by the supervisor and carries on in the same file.

:class:`StoreWriter` keeps the captions of ``vidnarrate caption`` the same way, without a process.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bus import Publisher, Subscriber
from .config import StoreConfig
from .errors import ConfigError, ProtocolError
from .messages import Caption, RecorderStatus
from .process import ExitCode
from .recordqueue import Kept, RecordQueue, Selection
from .store import PRUNE_MAX_ROWS, Record, Store, StoreError

log = logging.getLogger(__name__)


def check_store(path: Path) -> None:
    """Open (creating it if need be) and close the store, so that a file that cannot be used (a
    folder that cannot be created or written, a corrupt file, a newer schema) is refused before
    anything starts, as a :class:`ConfigError` naming the path and the reason."""
    try:
        Store.open(path).close()
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:  # anything Store did not name itself
        raise ConfigError(f"store {path}: {exc}") from None


@dataclass(frozen=True)
class RecorderOptions:
    run_id: str
    store: str  # the SQLite file
    events_endpoints: tuple[str, ...]  # the publishers to record from
    status_endpoint: str  # where this process publishes ``recorder_status``
    retention_days: float = StoreConfig.retention_days
    max_mb: float = StoreConfig.max_mb
    prune_every: float = 300.0  # seconds between two retention passes (the first one at start)
    status_every: float = 1.0
    drain_quiet: float = 0.5  # stopping: the bus is drained once it has been quiet this long
    drain_max: float = 2.0  # ... or after this long at most (the supervisor kills after stop_timeout)
    queue: dict[str, Any] = field(default_factory=dict)  # RecordQueue's keyword arguments


class Recorder:
    """The reader thread and the writer loop around one open :class:`Store` (see the module)."""

    def __init__(self, options: RecorderOptions, store: Store) -> None:
        self.options = options
        self.store = store
        self.queue = RecordQueue(**options.queue)
        self.selection = Selection()
        self._lock = threading.Condition()
        self._reader_done = False
        self.reader_failed = False
        self.written = 0
        self.last_commit_wall: float | None = None
        self.last_error: str | None = None
        self._reported_error: str | None = None

    # -- the reader thread -----------------------------------------------------------------------
    def _read(self, stop: threading.Event) -> None:
        try:
            self._read_bus(stop)
        except Exception:  # the process must then exit non-zero, for the supervisor to restart it
            log.exception("the recorder's bus reader failed")
            self.reader_failed = True
        finally:
            with self._lock:
                self._reader_done = True
                self._lock.notify_all()

    def _read_bus(self, stop: threading.Event) -> None:
        subscriber = Subscriber(list(self.options.events_endpoints))
        try:
            publisher = Publisher(self.options.status_endpoint)
        except Exception:
            subscriber.close()
            raise
        next_status = 0.0
        quiet_since: float | None = None
        stop_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                if stop.is_set() and stop_at is None:
                    stop_at = now + self.options.drain_max
                    quiet_since = now
                if stop_at is not None:
                    assert quiet_since is not None
                    if now - quiet_since >= self.options.drain_quiet or now >= stop_at:
                        break
                if now >= next_status or self._error_unreported():
                    next_status = now + self.options.status_every
                    publisher.send(self.status())
                if self._receive(subscriber, 0.05):
                    quiet_since = time.monotonic() if stop_at is not None else None
        finally:
            subscriber.close()
            publisher.close()

    def _receive(self, subscriber: Subscriber, timeout: float) -> bool:
        """Read one bus message (waiting up to ``timeout``) and queue it if it is kept; True when one came."""
        try:
            envelope = subscriber.recv_envelope(timeout)
            if envelope is None:
                return False
            if not self.selection.reads(envelope.type):
                return True
            kept = self.selection.offer(envelope.decode(), envelope.body)
        except ProtocolError as exc:
            log.warning("ignoring a bad bus message: %s", exc)
            return True
        if kept is not None:
            with self._lock:
                if self.queue.push(kept, time.monotonic()):
                    log.debug(
                        "the store queue is full: dropped the oldest messages (%d so far)", self.queue.dropped
                    )
                self._lock.notify_all()
        return True

    def _error_unreported(self) -> bool:
        return self.last_error != self._reported_error

    def status(self) -> RecorderStatus:
        with self._lock:
            self._reported_error = self.last_error
            return RecorderStatus(
                store=self.options.store,
                written=self.written,
                dropped=self.queue.dropped,
                queue=len(self.queue),
                errors=self.queue.failures,
                last_commit_wall=self.last_commit_wall,
                error=self.last_error,
                wall=time.time(),
            )

    # -- the writer (main thread) ----------------------------------------------------------------
    def run(self, stop_event: threading.Event) -> bool:
        """Record until ``stop_event`` is set and everything read before it is committed; False when
        it ended because the bus reader failed (what it had read is committed all the same)."""
        stop = stop_event
        reader = threading.Thread(target=self._read, args=(stop,), name="recorder-reader", daemon=True)
        reader.start()
        next_prune = time.monotonic()
        try:
            while True:
                if time.monotonic() >= next_prune:
                    # A prune deletes a bounded number of rows: while there is more, the next comes soon.
                    more = not stop.is_set() and self._prune()
                    next_prune = time.monotonic() + (1.0 if more else self.options.prune_every)
                batch = self._next_batch(until=next_prune)
                if batch is None:
                    break
                if batch:
                    self._write(batch)
        finally:
            reader.join(self.options.drain_max + 1.0)
        return not self.reader_failed

    def _next_batch(self, until: float) -> list[Kept] | None:
        """The next batch to write; [] when it is time to prune; None once the reader has stopped
        and everything is written."""
        with self._lock:
            while True:
                now = time.monotonic()
                batch = self.queue.take(now, force=self._reader_done)
                if batch:
                    return batch
                if self._reader_done and not len(self.queue):
                    return None
                if now >= until and not self._reader_done:
                    return []
                wait = self.queue.wait(now)
                self._lock.wait(min(wait if wait is not None else 1.0, max(0.0, until - now), 1.0))

    def _write(self, batch: list[Kept]) -> None:
        records = [Record(self.options.run_id, k.message, k.body, k.thumbnail) for k in batch]
        try:
            self.store.add(records)
        except (OSError, sqlite3.Error) as exc:  # StoreError is an OSError: disk full, read-only, ...
            with self._lock:
                dropped = self.queue.failed(time.monotonic())
                self.last_error = str(exc)
            log.warning(
                "could not write %d message(s) to the store: %s%s",
                len(batch),
                exc,
                f" ({dropped} dropped)" if dropped else "; retrying",
            )
            return
        with self._lock:
            self.queue.written()
            self.written += len(batch)
            self.last_commit_wall = time.time()

    def _prune(self) -> bool:
        """One retention pass; True when it stopped at its row limit (more is due)."""
        try:
            deleted = self.store.prune(
                now=time.time(), retention_days=self.options.retention_days, max_mb=self.options.max_mb
            )
        except (OSError, sqlite3.Error) as exc:
            log.warning("could not prune the store: %s", exc)
            return False
        if deleted:
            log.info("pruned %d old message(s) from the store", deleted)
        return deleted >= PRUNE_MAX_ROWS


def recorder_main(options: RecorderOptions, *, stop_event: Any) -> int:
    """The recorder process. A store it cannot open (the disk went away since the run checked it) is
    exit code 1: the supervisor retries with its backoff, and the rest of the run goes on."""
    try:
        store = Store.open(Path(options.store))
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot open the store: %s", exc)
        return ExitCode.FAILED
    try:
        ok = Recorder(options, store).run(stop_event=stop_event)
    finally:
        store.close()
    return ExitCode.OK if ok else ExitCode.FAILED


class StoreWriter:
    """A caption writer (:class:`~stream.exports.CaptionWriter`) into the store: ``vidnarrate
    caption`` keeps its captions under a run id of its own, each committed as it is made."""

    def __init__(self, path: Path, *, run_id: str | None = None) -> None:
        self.path = path
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._store = Store.open(path)

    def write(self, caption: dict[str, Any]) -> None:
        message = Caption.from_dict(caption)
        self._store.add([Record(self.run_id, message, message.to_json())])

    def close(self) -> None:
        self._store.close()
