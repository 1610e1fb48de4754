"""Real-time pacing: when a file's (or a remote file's) frame is due, so that it plays as live.

:meth:`RealTimePacer.delay` is the rule (no clock of its own: the caller passes the monotonic time);
:meth:`RealTimePacer.wait` sleeps by it.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

# A file played at real time that falls this far behind re-anchors its clock instead of bursting.
MAX_PACING_LAG_S = 0.5
# A forward pts jump longer than this (a DVR file's recording gap, concatenated segments) is played on at
# once instead of waited out; shorter gaps (a 0.2-fps file, a VFR screen recording's idle seconds) are.
MAX_PACING_GAP_S = 10.0


class RealTimePacer:
    """Holds frames back until their pts is due on the monotonic clock, so a file (or a remote file)
    plays as live. A decoder that falls behind by more than MAX_PACING_LAG_S resumes pacing from
    where it is rather than rushing to catch up; a pts jump of more than MAX_PACING_GAP_S is not
    waited out (the stream would sit at 0 fps for the length of the gap, an hour for some files)."""

    def __init__(self, label: str = "source") -> None:
        self._label = label
        self._anchor: tuple[float, float] | None = None  # (monotonic, pts)
        self._last_pts: float | None = None

    def delay(self, pts: float, now: float) -> float:
        """Seconds to hold back the frame at ``pts``, given the monotonic time ``now`` (0 when it
        is due or late). Call it once per frame, in order."""
        jump = None if self._last_pts is None else pts - self._last_pts
        self._last_pts = pts
        if jump is not None and jump > MAX_PACING_GAP_S:
            log.info(
                "%s: pts jumps %.1f s ahead at %.1f s; playing on without waiting", self._label, jump, pts
            )
            self._anchor = None
        if self._anchor is None:
            self._anchor = (now, pts)
        due = self._anchor[0] + (pts - self._anchor[1])
        if due > now:
            return due - now
        if now - due > MAX_PACING_LAG_S:
            self._anchor = (now, pts)
        return 0.0

    def wait(self, pts: float, wall: float) -> float:
        """Sleep until ``pts`` is due; the frame's wall-clock time afterwards (``wall``, its decode
        time, when it was not held back)."""
        delay = self.delay(pts, time.monotonic())
        if delay > 0:
            time.sleep(delay)
            return time.time()
        return wall
