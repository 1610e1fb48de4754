"""The inference process's frame tap: the thread that feeds ring frames to the scheduling core.

It polls every source's shared-memory ring, reading headers only: pixels are copied out only for the
frames the core keeps (:meth:`~stream.scheduler.Scheduler.offer`), with their change signature
(:mod:`stream.change`) where the stream's unchanged windows are gated. It publishes a thumbnail a second
per stream (and gives the core the one an alert event's start carries), and tells the core when a
source ended, with where it ended. It and the model loop (:mod:`stream.inference`) use the core only
through :class:`SharedScheduler`, the one place its lock is taken, so the tap never waits for the model
and sampling stays on time while a caption is generated.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import change, messages
from .bus import LockedPublisher
from .errors import RingError
from .ring import FrameRing
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .inference import InferenceOptions

# The inference process's log: the tap is one of its two threads.
log = logging.getLogger("stream.inference")

_TAP_IDLE_S = 0.01
_THUMBNAIL_EVERY_S = 1.0


def thumbnail_jpeg(image: np.ndarray, side: int, quality: int = 70) -> str:
    """A small JPEG of an RGB frame, base64-encoded for a JSON message."""
    picture = Image.fromarray(image)
    picture.thumbnail((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return base64.b64encode(out.getvalue()).decode("ascii")


class SharedScheduler:
    """The scheduling core and the one lock both threads take to use it (see the module doc)."""

    def __init__(self, core: Scheduler) -> None:
        self._core = core
        self._lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[Scheduler]:
        """The core, for as long as the ``with`` block runs (keep it short: no model calls inside)."""
        with self._lock:
            yield self._core


class FrameTap(threading.Thread):
    """Feeds ring frames to the scheduling core (see the module doc)."""

    def __init__(
        self,
        shared: SharedScheduler,
        ring_names: dict[str, str],
        bus: LockedPublisher,
        options: InferenceOptions,
        wake: threading.Event,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="frame-tap", daemon=True)
        self.shared = shared
        self.ring_names = ring_names
        self.bus = bus
        self.options = options
        self.wake = wake
        self.stop = stop
        self.rings: dict[str, FrameRing | None] = dict.fromkeys(ring_names)
        self.cursor: dict[str, int] = dict.fromkeys(ring_names, -1)
        self.ended: set[str] = set()
        self.unattached: set[str] = set()  # rings we could not attach to yet (warned once each)
        self.last_thumbnail: dict[str, float] = dict.fromkeys(ring_names, 0.0)
        self.gated = {  # streams whose unchanged windows are gated: their frames need a signature
            name: options.stream_captions.get(name, options.captions).unchanged_threshold > 0
            for name in ring_names
        }
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not any([self._poll(name) for name in self.ring_names]):
                    self.stop.wait(_TAP_IDLE_S)
        except BaseException as exc:  # surfaced by the model loop, which exits with an error
            self.error = exc
            log.exception("frame tap failed")
            self.stop.set()
        finally:
            for ring in self.rings.values():
                if ring is not None:
                    ring.close()

    def _ring(self, name: str) -> FrameRing | None:
        ring = self.rings[name]
        if ring is None:
            try:
                ring = FrameRing.attach(self.ring_names[name])
            except RingError as exc:  # the supervisor creates rings first; retried on every poll
                if name not in self.unattached:
                    self.unattached.add(name)
                    log.warning("stream %s: no frames yet: %s", name, exc)
                return None
            self.rings[name] = ring
        return ring

    def _poll(self, name: str) -> bool:
        """Take the new frames of one stream; True if there were any."""
        ring = self._ring(name)
        if ring is None:
            return False
        head = ring.head_seq
        cursor = self.cursor[name]
        if head <= cursor:
            if ring.ended and head == cursor and name not in self.ended:
                self.ended.add(name)
                with self.shared.use() as core:
                    core.end_stream(name, ring.end_time)
                self.wake.set()
            return False
        for seq in range(max(cursor + 1, head - ring.slots + 1), head + 1):
            info = ring.info(seq)
            if info is None:
                continue  # overwritten before we looked: the sampler sees a gap
            frame = None
            with self.shared.use() as core:
                if core.offer(name, seq, info.pts, info.wall):
                    frame = ring.read(seq)
                    if frame is None:
                        core.pixels_lost(name, seq)
                    else:
                        signature = change.signature(frame.image) if self.gated[name] else None
                        core.add_pixels(name, seq, frame.image, signature)
            if frame is not None:
                self._thumbnail(name, info.pts, info.wall, frame.image)
        self.cursor[name] = head
        self.wake.set()
        return True

    def _thumbnail(self, name: str, t: float, wall: float, image: np.ndarray) -> None:
        alerts = bool(self.options.alerts)  # an event's start carries its window's newest thumbnail
        if not self.options.thumbnails and not alerts:
            return
        now = time.monotonic()
        if now - self.last_thumbnail[name] < _THUMBNAIL_EVERY_S:
            return
        self.last_thumbnail[name] = now
        jpeg = thumbnail_jpeg(image, self.options.thumbnail_side)
        if alerts:
            with self.shared.use() as core:
                core.add_thumbnail(name, t, jpeg)
        if not self.options.thumbnails:
            return
        self.bus.send(
            messages.Thumbnail(
                stream=name,
                t=round(t, 3),
                wall=wall,
                jpeg=jpeg,
                width=int(image.shape[1]),
                height=int(image.shape[0]),
            )
        )
