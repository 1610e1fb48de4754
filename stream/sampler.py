"""Which frames the model sees, and which windows it captions: stream times in, samples and windows out.

Pure logic (no I/O, no pixels, no clock): the scheduling core (:mod:`stream.scheduler`) offers every
frame's stream time as it is read, keeps the frames this returns as samples, and queues the windows
it cuts as captioning jobs.

Stream time is stamped once, where frames are read (:mod:`stream.timeline`: capture for the live
pipeline, the offline command for files): seconds since the source's first frame, strictly
increasing, with repeats, reordering, restarts and gaps already dealt with. It is taken as it comes
(a reader that attaches late, e.g. a restarted inference process, keeps the capture's timeline); a
frame that is not after the previous one is ignored and counted (``stale``), and a time that is not
finite is a ``ValueError`` naming the frame.

Sampling (at most one frame per 1/fps bucket). Bucket k stands for grid time g_k = k/fps; it takes
the frame nearest g_k, decided the moment a frame arrives (the caller must encode it promptly, so we
never wait to see a later frame): the first frame at or after g_k - h, where h is half the interval
since the previous frame, at most half a bucket. For frames at a steady interval that is exactly the
nearest one: the previous frame was more than half an interval before g_k, this one is at most half
an interval before it. So a 30-fps stream is sampled at (within 17 ms of) 0, 1, 2 ... s, and a 1-fps
camera with jitter keeps every frame instead of losing the ones that arrive a little early. A bucket
no frame reaches before the next bucket's frames arrive (a source slower than ``fps``, a gap) has no
sample; a frame is never repeated to fill one. The rule alone is :class:`SampleGrid`: live capture
runs it on every decoded frame and writes only the frames it keeps (``[capture] decode = "sampled"``),
and a sampler told so (``presampled``) keeps every frame it is then offered.

Jobs (every ``stride`` seconds of stream time). Job k has ``t_end = k * stride`` (k = 1, 2, ...) and
holds the samples in ``(t_end - window, t_end]``, ascending (``t_start = t_end - window``; a window
reaching back before the stream's start is ``[0, t_end]``). So at 1 fps a 16-s window holds 16
frames, the newest being the frame at ``t_end`` itself: no waiting for the next bucket. (With
``stride == window`` the windows tile the stream and the very first frame, t = 0, is in none.) More
than ``max_frames`` samples are subsampled uniformly, as the model card does. A job is cut (returned
by :meth:`Sampler.offer`) once a frame at or after its ``t_end`` has arrived. A job whose window
holds no sample is skipped (counted), so a gap of an hour costs at most ``window / stride`` jobs
carrying the frames from before it, not 900 empty ones; the job index jumps with it. At the end of
a file, :meth:`Sampler.flush` cuts a last job for the samples after the last ``t_end``, ending where
the stream ends. With ``hold_last`` (offline) the newest job is held back until a sample after its
``t_end`` arrives, so that when none does (the file ends less than one sample after it) that job
itself is stretched to the stream's end: the last window always reaches the end of the file.

Bounded memory: the sampler keeps only the samples a future job can still use (at most
:attr:`Sampler.window_capacity`); the jobs it cuts are the caller's to queue.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SampledFrame:
    """A frame chosen as a sample. ``t``: stream time (s since the first frame); ``bucket``: the grid
    time ``bucket / fps`` it stands for (-1 when built by hand)."""

    seq: int
    t: float
    wall: float
    bucket: int = -1


@dataclass(frozen=True)
class Job:
    """One captioning request: the window ``[t_start, t_end]`` and its frames, ascending in time."""

    stream: str | None
    index: int
    t_start: float
    t_end: float
    frames: tuple[SampledFrame, ...]

    @property
    def frame_times(self) -> list[float]:
        return [f.t for f in self.frames]


def uniform_subsample(items: Sequence[T], cap: int) -> list[T]:
    """At most ``cap`` items spread evenly, in order: the model card's ``uniform_sample`` (gap = n / cap,
    pick ``int(i * gap + gap / 2)``), with its float rounding (16 items to 12 picks index 9 where the
    exact midpoint is 10), so frames match the reference. Up to ``cap`` items come back unchanged."""
    if cap < 1:
        raise ValueError(f"uniform_subsample: cap must be at least 1 (got {cap})")
    n = len(items)
    if n <= cap:
        return list(items)
    gap = n / cap
    return [items[int(i * gap + gap / 2)] for i in range(cap)]


@dataclass
class SamplerCounters:
    """What the sampler did with the frames it was offered (for status and tests)."""

    offered: int = 0
    sampled: int = 0
    stale: int = 0  # not after the previous frame (stream time is stamped strictly increasing)
    jobs: int = 0
    empty_windows: int = 0


class SampleGrid:
    """The sampling rule alone (see the module doc): which frames stand for the 1/fps buckets.

    The one definition of "which frame represents a moment": :class:`Sampler` keeps the frames this
    keeps, and capture (``[capture] decode = "sampled"``, :mod:`stream.decodeplan`) runs it on every
    frame it decodes to write only those. Offered the frames capture wrote, a sampler keeps them all:
    a kept frame t lies in ``[g - h, g + 1/fps - h)`` for its bucket's grid time g, and what it sees
    between written frames (gaps of about a bucket) only widens ``h`` up to half a bucket, which on
    an irregular stream can move a frame into the next bucket; so a sampler told its frames are
    already sampled (``presampled``) keeps every one, and the choice is capture's alone."""

    def __init__(self, fps: float) -> None:
        self.fps = float(fps)
        self._bucket_s = 1.0 / self.fps
        self._last_t: float | None = None
        self._last_gap: float | None = None
        self.next_bucket = 0

    def offer(self, t: float, *, keep: bool = False, gap: float | None = None) -> int | None:
        """The bucket the frame at stream time ``t`` is kept for, or None (taken, or not after the
        previous frame). ``keep``: the frame was chosen already; it takes the next free bucket if
        its own is taken. ``gap``: seconds since the frame before it in the source, where frames
        between the last one offered and this one were never decoded (default: since that one)."""
        if self._last_t is not None:
            if t <= self._last_t:
                return None
            self._last_gap = t - self._last_t if gap is None or not gap > 0 else gap
        self._last_t = t
        gap = self._last_gap
        half = self._bucket_s / 2 if gap is None else min(gap / 2, self._bucket_s / 2)
        bucket = math.floor((t + half) * self.fps)
        if bucket < self.next_bucket:
            if not keep:
                return None
            bucket = self.next_bucket
        self.next_bucket = bucket + 1
        return bucket

    @property
    def next_grid_time(self) -> float:
        """The grid time of the next bucket still to fill (seconds of stream time)."""
        return self.next_bucket * self._bucket_s


class Sampler:
    """Samples one stream at ``fps`` and cuts captioning jobs from a rolling window. See the module doc.

    Its settings are a stream's checked :class:`~stream.captioning.CaptionSettings` (the one validator,
    :func:`~stream.settings.check_settings`, has seen them): they are not checked again here."""

    def __init__(
        self,
        *,
        fps: float = 1.0,
        window: float = 16.0,
        stride: float = 4.0,
        max_frames: int = 64,
        stream: str | None = None,
        hold_last: bool = False,
        presampled: bool = False,
    ) -> None:
        self.fps = float(fps)
        self.window = float(window)
        self.stride = float(stride)
        self.max_frames = max_frames
        self.stream = stream
        self.hold_last = hold_last
        self.presampled = presampled  # every frame offered was chosen by a SampleGrid already (capture)
        self.counters = SamplerCounters()
        self._grid = SampleGrid(self.fps)
        self._last_t: float | None = None
        self._next_job = 1
        self._last_end = -math.inf  # t_end of the last job cut
        self._last_sample = -math.inf  # time of the newest sample
        self._held: Job | None = None  # hold_last: the newest job, until a sample after it comes
        self._samples: deque[SampledFrame] = deque()

    @property
    def window_capacity(self) -> int:
        """The most samples the window can hold at once (what bounds the caller's embedding cache)."""
        return math.ceil(self.window * self.fps) + 2

    @property
    def now(self) -> float:
        """Stream time of the newest frame accepted (0 before any)."""
        return 0.0 if self._last_t is None else self._last_t

    @property
    def window_frames(self) -> tuple[SampledFrame, ...]:
        """The samples a future job may still use, ascending."""
        return tuple(self._samples)

    def offer(self, seq: int, t: float, wall: float) -> tuple[SampledFrame | None, list[Job]]:
        """Offer a frame (its ring seq, stream time, wall-clock time). Returns the sample if this frame
        is kept (its pixels are wanted now) and the jobs this frame makes due, oldest first."""
        if not (math.isfinite(t) and math.isfinite(wall)):
            raise ValueError(f"Sampler: frame {seq} has a non-finite time (t {t!r}, wall {wall!r})")
        self.counters.offered += 1
        if self._last_t is not None and t <= self._last_t:
            self.counters.stale += 1
            return None, []
        self._last_t = t
        bucket = self._grid.offer(t, keep=self.presampled)
        sample = None
        if bucket is not None:
            sample = SampledFrame(seq, t, wall, bucket)
            self._samples.append(sample)
            self._last_sample = t
            self.counters.sampled += 1
        return sample, self._release(self._cut_jobs())

    def _release(self, jobs: list[Job]) -> list[Job]:
        """``hold_last``: the jobs to hand out now, holding back the newest while no sample follows it."""
        if not self.hold_last:
            return jobs
        if self._held is not None:
            jobs.insert(0, self._held)
            self._held = None
        if jobs and self._last_sample <= jobs[-1].t_end:
            self._held = jobs.pop()
        return jobs

    def _cut_jobs(self) -> list[Job]:
        now = self.now
        jobs: list[Job] = []
        while self._next_job * self.stride <= now:
            t_end = self._next_job * self.stride
            lo = self._lower(t_end)
            frames = [s for s in self._samples if lo < s.t <= t_end]
            if frames:
                jobs.append(self._job(max(lo, 0.0), t_end, frames))
                continue
            # Empty window: skip straight to the first job whose end reaches the next sample.
            later = next((s.t for s in self._samples if s.t > t_end), None)
            # (One short of the target when a sample is ahead: the loop re-checks, so rounding in the
            # division can never skip a window that holds a sample.)
            if later is not None:
                target = max(math.ceil(later / self.stride) - 1, self._next_job + 1)
            else:
                target = math.floor(now / self.stride) + 1
            self.counters.empty_windows += target - self._next_job
            self._next_job = target
        self._evict(self._lower(self._next_job * self.stride))
        return jobs

    def _lower(self, t_end: float) -> float:
        """A window's open lower bound; a window that reaches back before the first frame includes it."""
        lower = t_end - self.window
        return lower if lower >= 0 else -math.inf

    def _job(self, t_start: float, t_end: float, frames: list[SampledFrame]) -> Job:
        job = Job(
            self.stream, self._next_job, t_start, t_end, tuple(uniform_subsample(frames, self.max_frames))
        )
        self._next_job += 1
        self._last_end = t_end
        self.counters.jobs += 1
        return job

    def _evict(self, older_than: float) -> None:
        while self._samples and self._samples[0].t <= older_than:
            self._samples.popleft()

    def flush(self, end: float | None = None) -> list[Job]:
        """End of stream (``end``: where its last frame ends; default, and at least: that frame's
        time). If samples came after the last job's end, a last job: the next job's window cut short
        at ``end``, so a file's tail is captioned too. With ``hold_last``, the held job comes first,
        stretched to ``end``."""
        t_end = max(self.now, end if end is not None else self.now)
        jobs = []
        if self._held is not None:  # no sample came after it (else it was handed out then)
            jobs.append(replace(self._held, t_end=max(self._held.t_end, t_end)))
            self._held = None
        if any(s.t > self._last_end for s in self._samples):
            lo = self._lower(self._next_job * self.stride)
            frames = [s for s in self._samples if lo < s.t <= t_end]
            jobs.append(self._job(max(lo, 0.0), t_end, frames))
            self._evict(self._lower(self._next_job * self.stride))
        return jobs
