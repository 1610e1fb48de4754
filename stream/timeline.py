"""Stream time: a source's pts mapped once, where frames are read, onto one timeline per stream.

Every time the rest of the package sees is seconds since the source's first frame: the ring's
``pts``, the samples, the caption messages' ``t_*``. Capture stamps it as it writes the ring (a
restarted capture resumes after the ring's newest frame); the offline ``caption`` command stamps it
the same way as it decodes. Nothing downstream re-anchors it: the scheduler takes it as it comes.

Rules, so that stream time strictly increases whatever the source's pts do:

* first frame: t = 0 (or just after where a resumed timeline left off);
* repeat (pts equal to the previous frame's): the frame is dropped (None);
* small step back (less than ``reorder`` seconds: decoder reordering jitter): dropped (None);
* big step back (a camera or stream restarting its pts): the timeline continues after the previous
  frame by the wall-clock time between them, and follows the new pts from there;
* jump forward (a gap in a file, a DVR's missing hour): time jumps with it; except that for a live
  source (``max_jump`` set) pts running ahead of the wall clock by more than ``max_jump`` seconds are
  a discontinuity and continue by the wall clock instead;
* no pts (None, or not finite), or the first frame of a new connection (:meth:`Timeline.new_segment`):
  continues by the wall-clock time since the previous frame.

Where time continues by the wall clock it moves at least :data:`MIN_STEP_S`, so two frames never
share a time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIN_STEP_S = 1e-3


@dataclass
class TimelineCounters:
    """Frames the timeline dropped or re-anchored (for logs and tests)."""

    repeats: int = 0
    reordered: int = 0
    restarts: int = 0
    jumps: int = 0


class Timeline:
    """Maps one source's pts to stream time (see the module doc). Pure logic: the caller passes the
    wall-clock time each frame was read at."""

    def __init__(
        self,
        *,
        max_jump: float | None = None,
        reorder: float = 1.0,
        resume: tuple[float, float] | None = None,
        name: str = "",
    ) -> None:
        """``max_jump``: None for files (their pts outrun the wall clock when decoded faster than real
        time), seconds for live sources. ``reorder``: how far back a frame may step and still count
        as reordering rather than a restart. ``resume``: (stream time, wall) of the newest frame an
        earlier reader stamped on this timeline (a restarted capture continues after it)."""
        if max_jump is not None and not max_jump > 0:
            raise ValueError(f"Timeline: max_jump must be positive or None (got {max_jump!r})")
        if not reorder >= 0:
            raise ValueError(f"Timeline: reorder must be >= 0 (got {reorder!r})")
        self.max_jump = max_jump
        self.reorder = reorder
        self.name = name
        self.counters = TimelineCounters()
        self._last_t: float | None = None
        self._last_wall = 0.0
        self._last_pts: float | None = None  # None: no pts to follow (new segment, or none given)
        self._offset = 0.0  # stream time = pts + offset within a segment
        self._interval: float | None = None  # between the last two frames
        self._resume = resume

    @property
    def last(self) -> float | None:
        """Stream time of the newest frame stamped (None before any)."""
        return self._last_t

    @property
    def end(self) -> float | None:
        """Where the newest frame ends: its time plus its duration, taken as the interval since the
        frame before it (a file's last frame lasts as long as its neighbours). None before any."""
        if self._last_t is None:
            return None
        return self._last_t + (self._interval or 0.0)

    def new_segment(self) -> None:
        """A new connection to the source: its first frame continues by the wall clock, whatever its pts."""
        self._last_pts = None

    def stamp(self, pts: float | None, wall: float) -> float | None:
        """The frame's stream time, or None for a frame to drop (a repeat or reordering jitter)."""
        if not math.isfinite(wall):
            raise ValueError(f"Timeline {self.name}: wall-clock time {wall!r} is not finite")
        if pts is not None and not math.isfinite(pts):
            pts = None
        if self._last_t is None:
            t = 0.0
            if self._resume is not None:
                last_t, last_wall = self._resume
                t = last_t + max(wall - last_wall, MIN_STEP_S)
        elif pts is None or self._last_pts is None:
            t = self._continue(wall)
        else:
            step = pts - self._last_pts
            if step == 0:
                self.counters.repeats += 1
                return None
            if step < 0:
                if -step < self.reorder:
                    self.counters.reordered += 1
                    return None
                self.counters.restarts += 1
                t = self._continue(wall)
                log.info("%s: pts went back %.3f s (restart?); time continues at t=%.3f", self.name, -step, t)
            elif self.max_jump is not None and step - (wall - self._last_wall) > self.max_jump:
                self.counters.jumps += 1
                t = self._continue(wall)
            else:
                t = pts + self._offset
                if t <= self._last_t:  # a step too small to survive rounding
                    self.counters.repeats += 1
                    return None
        if pts is not None and (self._last_pts is None or t != pts + self._offset):
            self._offset = t - pts  # a new anchor: follow this pts from here
        if self._last_t is not None:
            self._interval = t - self._last_t
        self._last_t, self._last_wall, self._last_pts = t, wall, pts
        return t

    def _continue(self, wall: float) -> float:
        assert self._last_t is not None
        return self._last_t + max(wall - self._last_wall, MIN_STEP_S)
