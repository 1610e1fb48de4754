"""Which frames the model sees, and when it is asked: timestamps in, samples and captioning jobs out.

Pure logic (no I/O, no pixels): the inference process offers every frame's metadata as it reads the
ring, encodes the frames this returns as samples, and runs the jobs :meth:`Sampler.due` hands out.

Stream time. Every time this module returns is seconds since the source's first frame, the ``t_*``
of the caption messages: the first frame offered is t = 0 and later ones keep their pts distance
from it. Timestamps that misbehave are handled so that emitted times stay strictly increasing:

* repeat (pts equal to the previous one): the frame is ignored;
* small step back (less than one 1/fps bucket: reordering jitter): the frame is ignored;
* big step back (a camera or stream restart): re-anchored, so the frame continues the timeline
  after the previous one by the wall-clock time between them (at least one frame interval);
* jump forward (a gap): time jumps with it; empty windows are skipped, not emitted (below);
* not finite (NaN, inf): ``ValueError`` naming the frame: capture must not send those.

Sampling (at most one frame per 1/fps bucket). Bucket k stands for grid time g_k = k/fps; it takes
the frame nearest g_k, decided the moment a frame arrives (the caller must encode it promptly, so we
never wait to see a later frame): the first frame at or after g_k - h, where h is half the interval
since the previous frame, at most half a bucket. For frames at a steady interval that is exactly the
nearest one: the previous frame was more than half an interval before g_k, this one is at most half
an interval before it. So a 30-fps stream is sampled at (within 17 ms of) 0, 1, 2 ... s, and a 1-fps
camera with jitter keeps every frame instead of losing the ones that arrive a little early. A bucket
no frame reaches before the next bucket's frames arrive (a source slower than ``fps``, a gap) has no
sample; a frame is never repeated to fill one.

Jobs (every ``stride`` seconds of stream time). Job k has ``t_end = k * stride`` (k = 1, 2, ...) and
holds the samples in ``(t_end - window, t_end]``, ascending (``t_start = t_end - window``; a window
reaching back before the stream's start is ``[0, t_end]``). So at 1 fps a 16-s window holds 16
frames, the newest being the frame at ``t_end`` itself: no waiting for the next bucket. (With
``stride == window`` the windows tile the stream and the very first frame, t = 0, is in none.) More
than ``max_frames`` samples are subsampled uniformly, as the model card does. A job is due once a
frame at or after its ``t_end`` has arrived. A job whose window holds no sample is skipped (counted),
so a gap of an hour costs at most ``window / stride`` jobs carrying the frames from before it, not
900 empty ones; the job index jumps with it. At the end of a file, :meth:`Sampler.flush` emits a
last job for the samples after the last ``t_end``.

Bounded memory: the window keeps only the samples a future job can still use (at most about
``window * fps`` of them), pending jobs are capped at ``max_pending`` (oldest dropped, counted: the
caller fell behind), and so is the list of evicted seqs kept for :meth:`Sampler.drain_evicted`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# A restart with no usable wall-clock or frame interval still moves time forward by this much.
_MIN_STEP_S = 1e-3


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

    @property
    def seqs(self) -> list[int]:
        return [f.seq for f in self.frames]


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


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"Sampler: {name} must be a positive number (got {value!r})")
    return float(value)


@dataclass
class SamplerCounters:
    """What the sampler did with the frames it was offered (for status and tests)."""

    offered: int = 0
    sampled: int = 0
    repeats: int = 0
    reordered: int = 0
    restarts: int = 0
    jobs: int = 0
    empty_windows: int = 0
    jobs_dropped: int = 0


class Sampler:
    """Samples one stream at ``fps`` and cuts captioning jobs from a rolling window. See the module doc."""

    def __init__(
        self,
        *,
        fps: float = 1.0,
        window: float = 16.0,
        stride: float = 4.0,
        max_frames: int = 64,
        stream: str | None = None,
        max_pending: int = 64,
        origin: float | None = None,
    ) -> None:
        self.fps = _positive("fps", fps)
        self.window = _positive("window", window)
        self.stride = _positive("stride", stride)
        if not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"Sampler: max_frames must be an integer >= 1 (got {max_frames!r})")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"Sampler: max_pending must be an integer >= 1 (got {max_pending!r})")
        self.max_frames = max_frames
        self.stream = stream
        self.max_pending = max_pending
        # None: the first frame offered is t = 0. A number: stream time is pts - origin from the start
        # (the live pipeline passes 0.0: capture already stamps stream time, and a reader that attaches
        # late, e.g. a restarted inference process, must keep the capture's timeline).
        self.origin = origin
        self.counters = SamplerCounters()
        self._bucket_s = 1.0 / self.fps
        self._offset = 0.0  # stream time = pts + offset
        self._last_pts: float | None = None
        self._last_t = 0.0
        self._last_wall = 0.0
        self._last_gap: float | None = None
        self._next_bucket = 0
        self._next_job = 1
        self._last_end = -math.inf  # t_end of the last job cut
        self._samples: deque[SampledFrame] = deque()
        self._pending: deque[Job] = deque()
        self._evicted: deque[int] = deque(maxlen=4 * self.window_capacity)

    @property
    def window_capacity(self) -> int:
        """The most samples the window can hold at once (what bounds the caller's embedding cache)."""
        return math.ceil(self.window * self.fps) + 2

    @property
    def now(self) -> float:
        """Stream time of the newest frame accepted (0 before any)."""
        return self._last_t

    @property
    def window_frames(self) -> tuple[SampledFrame, ...]:
        """The samples a future job may still use, ascending."""
        return tuple(self._samples)

    def offer(self, seq: int, t: float, wall: float) -> SampledFrame | None:
        """Offer a frame (its ring seq, pts in seconds, wall-clock time). Returns the sample if this frame
        is kept (encode it now), else None. Jobs this frame makes due are queued for :meth:`due`."""
        if not (math.isfinite(t) and math.isfinite(wall)):
            raise ValueError(f"Sampler: frame {seq} has a non-finite time (pts {t!r}, wall {wall!r})")
        self.counters.offered += 1
        stream_t = self._stream_time(t, wall)
        if stream_t is None:
            return None
        gap = self._last_gap
        half = self._bucket_s / 2 if gap is None else min(gap / 2, self._bucket_s / 2)
        bucket = math.floor((stream_t + half) * self.fps)
        sample = None
        if bucket >= self._next_bucket:
            sample = SampledFrame(seq, stream_t, wall, bucket)
            self._next_bucket = bucket + 1
            self._samples.append(sample)
            self.counters.sampled += 1
        self._cut_jobs()
        return sample

    def _stream_time(self, pts: float, wall: float) -> float | None:
        """Map pts to strictly increasing stream time, or None for a frame to ignore."""
        if self._last_pts is None:
            self._offset = -pts if self.origin is None else -self.origin
            start = pts + self._offset
            self._last_pts, self._last_t, self._last_wall = pts, start, wall
            return start
        step = pts - self._last_pts
        if step == 0:
            self.counters.repeats += 1
            return None
        if step < 0:
            if -step < self._bucket_s:
                self.counters.reordered += 1
                return None
            forward = max(wall - self._last_wall, self._last_gap or 0.0, _MIN_STEP_S)
            self._offset = self._last_t + forward - pts
            self.counters.restarts += 1
            log.info(
                "stream %s: pts went back %.3f s (restart?); timeline continues at t=%.3f",
                self.stream,
                -step,
                self._last_t + forward,
            )
        stream_t = pts + self._offset
        if stream_t <= self._last_t:  # a step too small to survive rounding
            self.counters.repeats += 1
            return None
        self._last_gap = stream_t - self._last_t
        self._last_pts, self._last_t, self._last_wall = pts, stream_t, wall
        return stream_t

    def _cut_jobs(self) -> None:
        now = self._last_t
        while self._next_job * self.stride <= now:
            t_end = self._next_job * self.stride
            lo = self._lower(t_end)
            frames = [s for s in self._samples if lo < s.t <= t_end]
            if frames:
                self._push(
                    Job(
                        self.stream,
                        self._next_job,
                        max(lo, 0.0),
                        t_end,
                        tuple(uniform_subsample(frames, self.max_frames)),
                    )
                )
                self._next_job += 1
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

    def _lower(self, t_end: float) -> float:
        """A window's open lower bound; a window that reaches back before the first frame includes it."""
        lower = t_end - self.window
        return lower if lower >= 0 else -math.inf

    def _push(self, job: Job) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.counters.jobs_dropped += 1
        self._pending.append(job)
        self._last_end = job.t_end
        self.counters.jobs += 1

    def _evict(self, older_than: float) -> None:
        while self._samples and self._samples[0].t <= older_than:
            self._evicted.append(self._samples.popleft().seq)

    def due(self) -> list[Job]:
        """Jobs whose ``t_end`` stream time has been reached, oldest first; each is handed out once."""
        jobs = list(self._pending)
        self._pending.clear()
        return jobs

    def flush(self) -> list[Job]:
        """End of stream: :meth:`due` plus, if samples came after the last job's end, a last job: the
        next job's window cut short at the last frame (``t_end`` = its time), so a file's tail is
        captioned too."""
        if any(s.t > self._last_end for s in self._samples):
            t_end = self._last_t  # the next job's window, cut short where the stream ended
            lo = self._lower(self._next_job * self.stride)
            frames = [s for s in self._samples if lo < s.t <= t_end]
            self._push(
                Job(
                    self.stream,
                    self._next_job,
                    max(lo, 0.0),
                    t_end,
                    tuple(uniform_subsample(frames, self.max_frames)),
                )
            )
            self._next_job += 1
            self._evict(self._lower(self._next_job * self.stride))
        return self.due()

    def drain_evicted(self) -> list[int]:
        """Seqs of samples that left the window since the last call: drop their cached embeddings.

        Bounded: if the caller never drains, the oldest notices are dropped; :meth:`retains` is the
        self-healing check."""
        seqs = list(self._evicted)
        self._evicted.clear()
        return seqs

    def retains(self, seq: int) -> bool:
        """Whether a future job may still use sample ``seq``."""
        return any(s.seq == seq for s in self._samples)
