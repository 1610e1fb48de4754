"""The thread around one output's :class:`~stream.outputqueue.OutputQueue`, shared by the webhook and
MQTT outputs.

The bus reader of the outputs process calls :meth:`OutputWorker.offer`, which only turns the message
into deliveries and queues them under a lock (a full queue drops its oldest): it never waits on the
network, so no receiver can slow the reader, let alone capture, inference or the fan-out, which do not
wait on the reader either (the bus drops for a subscriber that falls behind). The worker's own thread
(:meth:`OutputWorker.run`, written by each output) does the network I/O.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .bus import Envelope
from .outputqueue import Delivery, OutputQueue, OutputState

log = logging.getLogger(__name__)


class OutputWorker:
    """One output: its queue, its lock, and its delivering thread (``run``, in the subclass)."""

    def __init__(self, name: str, target: str, types: tuple[str, ...], queue: OutputQueue) -> None:
        self.name = name
        self.target = target  # shown in status: never a secret (no path, query or password)
        self.types = frozenset(types)
        self.queue = queue
        self.error: str | None = None  # the last failure's reason, until something goes through
        self._lock = threading.Lock()
        self._wake = threading.Event()  # something to do: a delivery queued, an answer, a stop
        self._stopping = threading.Event()
        self._stop_by = float("inf")  # monotonic deadline for delivering what is queued, once stopping
        self._thread = threading.Thread(target=self._run_logged, name=f"output-{name}", daemon=True)
        self._logged_drops = 0
        self.failed = False  # the delivering thread died of a bug: the process exits to be restarted

    # -- the bus reader's side -------------------------------------------------------------------
    def offer(self, envelope: Envelope) -> None:
        """Queue what ``envelope`` means for this output (nothing when its type is not wanted)."""
        if envelope.type not in self.types:
            return
        deliveries = self.deliveries(envelope, time.monotonic())
        if not deliveries:
            return
        with self._lock:
            for delivery in deliveries:
                self.queue.push(delivery)
            dropped = self.queue.dropped
        self._wake.set()
        if dropped >= 2 * max(self._logged_drops, 1) or (dropped and not self._logged_drops):
            self._logged_drops = dropped  # a line when the count doubles, not one per message
            log.warning(
                "%s: %d message(s) dropped so far (%s)", self.name, dropped, self.error or "queue full"
            )

    def deliveries(self, envelope: Envelope, now: float) -> list[Delivery]:
        """What to deliver for a message of a wanted type."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        with self._lock:
            q = self.queue
            return {
                "target": self.target,
                "state": q.state.value,
                "sent": q.sent,
                "failed": q.failed,
                "dropped": q.dropped,
                "queued": len(q),
                "oldest_s": None if (age := q.oldest(time.monotonic())) is None else round(age, 3),
                "retried": q.retried,
                "rejected": q.rejected,
                "error": self.error,
            }

    @property
    def state(self) -> OutputState:
        return self.queue.state

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float) -> int:
        """Deliver what is queued until the monotonic ``deadline``, then give up the rest (counted as
        dropped); returns how many were given up."""
        self._stop_by = deadline
        self._stopping.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.2)
        with self._lock:
            lost = self.queue.drop_waiting() + self.queue.abandon()
        if lost:
            log.warning("%s: stopping with %d message(s) not delivered (%s)", self.name, lost, self.error)
        self.close()
        return lost

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception:  # the process then exits non-zero and the supervisor restarts it
            log.exception("%s: the delivering thread failed", self.name)
            self.failed = True

    def run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the output's connections (after its thread has ended or been given up on)."""

    def _done_stopping(self, now: float) -> bool:
        """Stopping, and nothing is left to deliver or the time for it is up (call under the lock)."""
        return self._stopping.is_set() and (not len(self.queue) or now >= self._stop_by)

    def _sleep(self, wait: float | None) -> None:
        """Wait for a wake-up, ``wait`` seconds at most (None: until woken, 1 s at most)."""
        limit = min(1.0 if wait is None else wait, max(0.0, self._stop_by - time.monotonic()))
        self._wake.wait(limit)
