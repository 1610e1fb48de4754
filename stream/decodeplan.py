"""Which frames capture decodes, converts and writes under ``[capture] decode = "sampled"``: pure rules.

**Who chooses the frame that stands for a moment.** The sampler's rule,
:class:`~stream.sampler.SampleGrid`, and nothing else. Capture runs it (:class:`Demand`) on the stream
time of every frame it decodes, and converts and writes into the ring only the frames it keeps; the
inference process's sampler is told the ring is presampled (``CaptionSettings.presampled``) and keeps
every frame it finds there. So the frames captioned are the ones the rule chose, by construction, and
their times (``frame_times``) are their own pts. The thumbnails are taken from kept frames (at most one
a second), so they need nothing more.

**What is decoded at all** (:class:`DecodePlan`, asked once per packet, in the source's own seconds;
``g`` is the grid time of the next bucket to fill):

* **Before the next needed frame** (a packet earlier than ``g`` less the longest recent frame interval,
  or half a bucket where that is shorter): non-reference frames are not decoded (FFmpeg ``skip_frame``
  ``NONREF``); reference frames must be, for what follows.
* **From there on** everything is decoded, and the source tells the rule each frame's true distance to
  the frame before it (:attr:`~stream.videosource.PendingFrame.gap`), so on the frames around ``g``
  the rule sees what it would see decoding everything: the frame chosen is the same frame (same pts).
* **Keyframe interval (GOP), measured from the keyframes' pts**: when the longest recent one is at or
  below the sampling period, only keyframes are decoded (``NONKEY``), and of those only the ones that
  can be kept (``ALL`` for the rest: a keyframe before ``g - min(GOP, period) / 2``). The samples are
  then keyframes: a sample's time moves from where decoding everything would put it by at most half
  a GOP, i.e. half the sampling period.
* **Longer GOPs**: once the next keyframe (the last one plus the longest recent GOP) would itself be
  the frame chosen for ``g`` (it is at most half a frame after ``g``) or comes before ``g``, everything
  up to it is skipped (``NONKEY``) and decoding resumes there. A keyframe that comes later than
  predicted moves the sample to it (by at most the GOP's own variation); one on time changes nothing.
* **Intra-only streams** (MJPEG, every packet a keyframe) fall under the first GOP rule: only the
  frames that can be kept are decoded.

Never a wrong frame: after a skipped stretch, decoding resumes only at a keyframe, and frames that come
out before that keyframe's pts (an open GOP's leading pictures, which reference skipped frames) are
dropped (:meth:`DecodePlan.usable`). Until the GOP is measured (two keyframes) and until the first
frame gives capture its time offset, everything that may be needed is decoded.
"""

from __future__ import annotations

import time
from collections import deque
from enum import Enum

from .sampler import SampleGrid

# How many recent keyframe intervals (and frame intervals) the plan remembers: the longest of them
# is its estimate, so one irregular GOP does not make it skip past a needed frame.
RECENT = 8


class Skip(Enum):
    """How much of a packet to decode: FFmpeg's ``skip_frame`` values (AVDiscard)."""

    NONE = "DEFAULT"  # decode it
    NONREF = "NONREF"  # skip it if no other frame references it
    NONKEY = "NONKEY"  # skip it unless it is a keyframe
    ALL = "ALL"  # skip it


class Demand:
    """The sampling rule as capture runs it, and what a source needs to know of it.

    One per capture (the grid runs on stream time, across reconnects); :meth:`new_segment` at each
    connection. Capture calls :meth:`want` for each decoded frame; the source reads
    :meth:`next_grid_pts` in its own seconds and reports packets as they arrive (:meth:`arrived`, which
    the capture's stall watchdog reads: a skipped frame is still a sign of life)."""

    def __init__(self, fps: float) -> None:
        self.grid = SampleGrid(fps)
        self.period = 1.0 / self.grid.fps
        self._offset: float | None = None  # stream time minus the source's pts, this connection
        self.last_arrival = time.monotonic()
        # What the source delivered, decoded or not: packets reported by a source that skips decoding,
        # frames offered by one that decodes everything (the larger is the source's own frame count).
        self._packets = 0
        self._offered = 0

    def new_segment(self) -> None:
        self._offset = None

    def want(self, t: float, pts: float, gap: float | None = None) -> bool:
        """Whether the decoded frame at stream time ``t`` (source pts ``pts``) is kept."""
        self._offset = t - pts
        self._offered += 1
        return self.grid.offer(t, gap=gap) is not None

    @property
    def source_frames(self) -> int:
        """Frames the source has delivered so far, whether or not they were decoded or kept: what the
        camera sends, for the ``fps`` users see (the ring gets about ``fps`` of them a second)."""
        return max(self._packets, self._offered)

    def next_grid_pts(self) -> float | None:
        """The next bucket's grid time in the source's pts (None before this connection's first frame)."""
        return None if self._offset is None else self.grid.next_grid_time - self._offset

    def arrived(self) -> None:
        self.last_arrival = time.monotonic()
        self._packets += 1


class DecodePlan:
    """Per packet of one connection: how much to decode (see the module doc)."""

    def __init__(self, demand: Demand, frame_step: float) -> None:
        """``frame_step``: the stream's nominal frame interval (seconds)."""
        self.demand = demand
        self.period = demand.period
        self.frame_step = frame_step
        self._keys: deque[float] = deque(maxlen=RECENT + 1)  # recent keyframe pts
        self._steps: deque[float] = deque(maxlen=RECENT)  # recent forward steps of the packets' pts
        self._recent: deque[float] = deque(maxlen=8 * RECENT)  # recent packets' pts, decode order
        self._last_pts: float | None = None
        self._to_key = False  # skipping until the next keyframe
        # The latest packet decoded to stand for a grid time: frames leave a threaded decoder a few
        # packets late, so the demand's grid lags; the plan counts that time as served already.
        self._covered: float | None = None
        self._resumed_at: float | None = None  # pts of the keyframe decoding last resumed at
        # pts of packets decoded after that keyframe but shown before it (an open GOP's leading
        # pictures, whose references were skipped): their frames are dropped
        self._leading: deque[float] = deque(maxlen=8 * RECENT)

    @property
    def gop(self) -> float | None:
        """The longest recent keyframe interval (None until two keyframes came)."""
        keys = list(self._keys)
        return max((b - a for a, b in zip(keys, keys[1:], strict=False)), default=None)

    @property
    def keyframes_only(self) -> bool:
        gop = self.gop
        return gop is not None and gop <= self.period + 1e-6

    def packet(self, pts: float | None, key: bool) -> Skip:
        """How much of the packet at ``pts`` (source seconds; None: unknown) to decode."""
        if pts is not None:
            self._recent.append(pts)
            if self._last_pts is not None and pts > self._last_pts:
                # In decode order, so with B-frames a step spans the reference distance: the
                # estimate errs long, towards decoding more around a needed frame, never less.
                self._steps.append(pts - self._last_pts)
            self._last_pts = pts if self._last_pts is None else max(pts, self._last_pts)
            if key and (not self._keys or pts > self._keys[-1]):
                self._keys.append(pts)
        skip = self._decide(pts, key)
        resumed = self._resumed_at
        if pts is not None and resumed is not None and pts < resumed and skip in (Skip.NONE, Skip.NONREF):
            self._leading.append(pts)
        return skip

    def _next_grid(self, reach: float) -> float | None:
        """The next grid time (source pts) not served yet: a frame ``reach`` before it serves it."""
        grid = self.demand.next_grid_pts()
        if grid is None or self._covered is None:
            return grid
        while grid - reach <= self._covered + 1e-6:
            grid += self.period
        return grid

    def _decide(self, pts: float | None, key: bool) -> Skip:
        if pts is None or self.demand.next_grid_pts() is None:
            return Skip.NONE
        if self.keyframes_only:
            if not key:
                return Skip.NONKEY
            reach = min(self.gop or self.period, self.period) / 2
            grid = self._next_grid(reach)
            assert grid is not None
            if pts < grid - reach:
                return Skip.ALL
            self._resumed_at = self._covered = pts
            return Skip.NONE
        grid = self._next_grid(0.0)
        assert grid is not None
        if self._to_key:
            if not key:
                return Skip.NONKEY
            self._to_key = False
            self._resumed_at = pts
        longest = max(self._steps, default=self.period)
        due = grid - min(longest, self.period / 2)
        if pts >= due - 1e-6:
            # Frames shown up to ``longest`` before this one may still come after it in decode
            # order (B-frames); every grid time before that has a decoded frame standing for it.
            if pts - longest >= grid - 1e-6:
                self._covered = pts - longest
            return Skip.NONE
        gop = self.gop
        # The next keyframe would itself be the frame chosen (the first at or after g less half a
        # frame), or an earlier one: nothing before it is needed.
        if not key and gop is not None and self._keys and self._keys[-1] + gop - self.frame_step / 2 <= grid:
            self._to_key = True
            return Skip.NONKEY
        return Skip.NONREF

    def usable(self, pts: float) -> bool:
        """Whether a decoded frame may be used: not a leading picture of the keyframe decoding
        resumed at (see the module doc)."""
        for index, leading in enumerate(self._leading):
            if abs(leading - pts) < 1e-6:
                del self._leading[index]
                return False
        return True

    def gap(self, pts: float) -> float | None:
        """The gap the rule is to use for the decoded frame at ``pts``: the distance to the packet
        before it in presentation order, decoded or not, so that it chooses as when every frame is
        decoded; None when only keyframes are decoded (the rule then measures from the last frame it
        saw: the samples are keyframes, see the module doc)."""
        if self.keyframes_only:
            return None
        before = [q for q in self._recent if q < pts - 1e-9]
        return pts - max(before) if before else None
