"""Rolling captions for one or many streams: sampling, encode-once embedding cache, job choice, prompts.

This is the loop's logic without its I/O: the live inference process feeds it frames read from the
shared-memory rings and publishes what it returns on the bus; the offline ``caption`` command feeds
it frames decoded straight from a file and writes what it returns to files. Both therefore caption
the same way.

* **Encode once.** A frame the sampler keeps is queued as pixels; :meth:`Captioner.encode_pending`
  turns every queued frame of every stream into a frame embedding in one batched vision call, and the
  embedding is cached until no due window, no future window and no ask (the last ``window`` seconds)
  can use it. Every window containing the frame reuses it: ``encodes_per_frame`` (vision encodes /
  frames sampled) stays at 1.00. A window whose frames are still queued when it is taken (encoding
  slower than real time) has them encoded first, so it is never captioned from nothing.
* **Real time first.** :meth:`Captioner.next_job` hands out, per stream, only the newest due window;
  older due windows are dropped and counted as skipped (live mode). Streams take turns (round robin
  from the one served longest ago), so a busy source never starves another. Offline mode keeps every
  window instead.
* **Continuity.** The last ``context_captions`` captions of a stream go into the next prompt, so
  successive captions continue rather than repeat.

Not thread-safe by itself: the inference process guards a :class:`StreamWorker` with its lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import messages
from .sampler import Job, SampledFrame, Sampler

log = logging.getLogger(__name__)

# Frames waiting to be encoded, per stream. Sampled at 1 fps, so this only fills when the model
# cannot even keep up with encoding; then the oldest are dropped (and counted).
MAX_PENDING_FRAMES = 64


@dataclass(frozen=True)
class CaptionSettings:
    """How captions are made (from the ``[sampler]``, ``[model]`` and ``[captions]`` config)."""

    prompt: str  # the prompt text (a preset already resolved); ``{duration}`` is filled in
    context_template: str = "Earlier description: {previous}\nContinue from it: describe what is new."
    context_captions: int = 1
    max_new_tokens: int = 160
    decoding: str = "greedy"
    max_slice_nums: int = 1
    fps: float = 1.0
    window: float = 16.0
    stride: float = 4.0
    max_frames: int = 64
    skip_stale: bool = True  # live: caption only the newest due window; offline: every window
    time_origin: float | None = None  # live: 0.0 (frames carry capture's stream time); None: first frame is 0


@dataclass
class StreamCounters:
    sampled: int = 0
    encodes: int = 0
    pending_dropped: int = 0
    captions: int = 0
    skipped: int = 0
    caption_errors: int = 0
    missing_frames: int = 0
    last_latency_ms: float | None = None
    last_model_ms: float | None = None

    def encodes_per_frame(self, pending: int = 0) -> float | None:
        """Vision encodes per sampled frame that has left the queue (queued ones are not encoded yet,
        dropped ones never will be): 1.00 when every frame is encoded exactly once."""
        done = self.sampled - pending - self.pending_dropped
        return round(self.encodes / done, 3) if done > 0 else None


@dataclass
class StreamWorker:
    """One stream's sampler, queued frames, embedding cache and caption history."""

    name: str
    settings: CaptionSettings
    sampler: Sampler = field(init=False)
    pending: deque[tuple[SampledFrame, np.ndarray]] = field(init=False)
    cache: dict[int, Any] = field(init=False)  # seq -> FrameEmbedding
    encode_ms: dict[int, float] = field(init=False)  # seq -> time of the vision call that encoded it
    due: deque[Job] = field(init=False)
    history: deque[str] = field(init=False)
    recent: deque[SampledFrame] = field(init=False)  # the newest samples, for asks (see window_now)
    counters: StreamCounters = field(default_factory=StreamCounters)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_served: float = 0.0
    last_seq: int = -1  # caption seq (job index - 1) of the last caption published
    latest_t: float = 0.0
    last_t_end: float | None = None  # t_end of the last window captioned
    active: set[int] = field(default_factory=set)  # seqs of the job being captioned
    pinned: set[int] = field(default_factory=set)  # seqs an ask is about to look at
    ended: bool = False

    def __post_init__(self) -> None:
        s = self.settings
        self.sampler = Sampler(
            fps=s.fps,
            window=s.window,
            stride=s.stride,
            max_frames=s.max_frames,
            stream=self.name,
            origin=s.time_origin,
        )
        self.pending = deque()
        self.cache = {}
        self.encode_ms = {}
        self.due = deque(maxlen=self.sampler.max_pending)
        self.history = deque(maxlen=max(1, s.context_captions))
        self.recent = deque(maxlen=self.sampler.window_capacity)

    # -- frames in --------------------------------------------------------------------------------
    def offer(
        self, seq: int, t: float, wall: float, read_pixels: Callable[[], np.ndarray | None]
    ) -> SampledFrame | None:
        """Offer a frame's times; if the sampler keeps it, read its pixels (now) and queue them.

        ``read_pixels`` is called only for kept frames (the ring copies pixels only for those); it
        returns None when the frame is gone (overwritten), and the sample is then counted missing.
        """
        sample = self.sampler.offer(seq, t, wall)
        self.latest_t = self.sampler.now
        if sample is not None:
            image = read_pixels()
            if image is None:
                self.counters.missing_frames += 1
            else:
                if len(self.pending) >= MAX_PENDING_FRAMES:
                    self.pending.popleft()
                    self.counters.pending_dropped += 1
                self.pending.append((sample, image))
                self.recent.append(sample)
                self.counters.sampled += 1
        self._collect(self.sampler.due())
        return sample

    def finish(self) -> None:
        """The source ended: cut the last (short) window so the tail is captioned too."""
        self.ended = True
        self._collect(self.sampler.flush())

    def _collect(self, jobs: list[Job]) -> None:
        for job in jobs:
            if len(self.due) == self.due.maxlen:
                self.counters.skipped += 1
            self.due.append(job)
        self.sampler.drain_evicted()  # the sweep below decides from what is still needed
        self.sweep()

    def in_use(self) -> set[int]:
        """Seqs whose embeddings can still be used: by a future window, a due job, the job running or
        an ask (the last ``window`` seconds, or frames an ask has pinned)."""
        seqs = {f.seq for f in self.sampler.window_frames} | self.active | self.pinned
        seqs.update(f.seq for f in self.window_now())
        seqs.update(f.seq for job in self.due for f in job.frames)
        return seqs

    def needed(self, seq: int) -> bool:
        """Whether a frame's embedding can still be used (see :meth:`in_use`)."""
        return seq in self.in_use()

    def sweep(self) -> None:
        """Drop cached embeddings nothing can use any more (what keeps the cache bounded)."""
        keep = self.in_use()
        for seq in [s for s in self.cache if s not in keep]:
            del self.cache[seq]
            self.encode_ms.pop(seq, None)

    # -- jobs out ---------------------------------------------------------------------------------
    def take_job(self, skip_stale: bool) -> Job | None:
        if not self.due:
            return None
        if skip_stale:
            while len(self.due) > 1:
                self.due.popleft()
                self.counters.skipped += 1
        job = self.due.popleft()
        self.active = {f.seq for f in job.frames}  # keeps its embeddings until it is captioned
        return job

    def embeddings_for(self, frames: Sequence[SampledFrame]) -> tuple[list[SampledFrame], list[Any]]:
        """The cached embeddings of these samples (frames whose pixels were lost are left out)."""
        used, embeddings = [], []
        for frame in frames:
            embedding = self.cache.get(frame.seq)
            if embedding is not None:
                used.append(frame)
                embeddings.append(embedding)
        return used, embeddings

    def window_now(self) -> list[SampledFrame]:
        """The samples of the last ``window`` seconds (what an ask looks at), newest last, at most
        max_frames. Kept here rather than taken from the sampler, which lets go of samples as soon as
        no future window needs them: right after a cut when the stride equals the window."""
        frames = [f for f in self.recent if f.t > self.latest_t - self.settings.window]
        return frames[-self.settings.max_frames :]

    def context(self) -> str | None:
        if self.settings.context_captions <= 0 or not self.history:
            return None
        previous = " ".join(list(self.history)[-self.settings.context_captions :])
        return self.settings.context_template.format(previous=previous)

    def status(self) -> dict[str, Any]:
        c = self.counters
        last_end = self.last_t_end
        return {
            "captions": c.captions,
            "skipped": c.skipped,
            "caption_errors": c.caption_errors,
            "sampled": c.sampled,
            "vision_encodes": c.encodes,
            "encodes_per_frame": c.encodes_per_frame(len(self.pending)),
            "missing_frames": c.missing_frames,
            "pending_frames": len(self.pending),
            "cached_frames": len(self.cache),
            "lag_s": None if last_end is None else round(max(0.0, self.latest_t - last_end), 3),
            "caption_latency_ms": c.last_latency_ms,
            "model_ms": c.last_model_ms,
            "t": round(self.latest_t, 3),
        }


@dataclass(frozen=True)
class CaptionResult:
    message: dict[str, Any]
    job: Job


class Captioner:
    """Drives one caption backend for many streams (see the module docstring)."""

    def __init__(self, backend: Any, settings: CaptionSettings, *, model_name: str | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.model_name: str = model_name or str(getattr(backend, "name", "model"))
        self.workers: dict[str, StreamWorker] = {}

    def add_stream(self, name: str) -> StreamWorker:
        worker = StreamWorker(name, self.settings)
        self.workers[name] = worker
        return worker

    # -- encoding ---------------------------------------------------------------------------------
    def encode_pending(self) -> int:
        """Encode every queued frame of every stream in one batched call; returns how many."""
        batch: list[tuple[StreamWorker, SampledFrame, np.ndarray]] = []
        for worker in self.workers.values():
            with worker.lock:
                while worker.pending:
                    sample, image = worker.pending.popleft()
                    batch.append((worker, sample, image))
        if not batch:
            return 0
        started = time.monotonic()
        embeddings = self.backend.encode_frames(
            [image for _, _, image in batch], max_slice_nums=self.settings.max_slice_nums
        )
        batch_ms = round((time.monotonic() - started) * 1000, 1)
        for (worker, sample, _), embedding in zip(batch, embeddings, strict=True):
            with worker.lock:
                worker.counters.encodes += 1
                if worker.needed(sample.seq):
                    worker.cache[sample.seq] = embedding
                    worker.encode_ms[sample.seq] = batch_ms
        return len(batch)

    def embeddings_now(
        self, worker: StreamWorker, frames: Sequence[SampledFrame]
    ) -> tuple[list[SampledFrame], list[Any]]:
        """The embeddings of ``frames``, encoding first whichever of them still wait as pixels.

        While one slow batch is encoded, new frames keep arriving, so the window due next (or the one an
        ask looks at) may consist of frames nobody has encoded yet; looked up from the cache alone it
        would come out empty and be skipped, again and again, whenever encoding is slower than real
        time. The frames stay pinned until looked up, so the frame thread's sweep cannot drop them.
        """
        wanted = {f.seq for f in frames}
        with worker.lock:
            worker.pinned |= wanted
            waiting = any(sample.seq in wanted for sample, _ in worker.pending)
        try:
            if waiting:
                self.encode_pending()
            with worker.lock:
                return worker.embeddings_for(frames)
        finally:
            with worker.lock:
                worker.pinned -= wanted

    # -- choosing ---------------------------------------------------------------------------------
    def next_job(self) -> tuple[StreamWorker, Job] | None:
        """The next window to caption: streams in turn, each giving its newest due window (live)."""
        for worker in sorted(self.workers.values(), key=lambda w: w.last_served):
            with worker.lock:
                job = worker.take_job(self.settings.skip_stale)
            if job is not None:
                worker.last_served = time.monotonic()
                return worker, job
        return None

    def has_work(self) -> bool:
        return any(w.due or w.pending for w in self.workers.values())

    # -- captioning -------------------------------------------------------------------------------
    def prompt_for(self, job: Job) -> str:
        duration = max(job.t_end - job.t_start, 0.0)
        return self.settings.prompt.replace("{duration}", f"{duration:.0f}")

    def caption(
        self, worker: StreamWorker, job: Job, on_text: Callable[[str], None] | None = None
    ) -> messages.Caption | None:
        """Caption one window; returns the ``caption`` message (None when no frame of it survived)."""
        frames, embeddings = self.embeddings_now(worker, job.frames)
        with worker.lock:
            context = worker.context()
            worker.active = {f.seq for f in frames}
        try:
            return self._describe(worker, job, frames, embeddings, context, on_text)
        finally:
            with worker.lock:
                worker.active = set()
                worker.sweep()

    def _describe(
        self,
        worker: StreamWorker,
        job: Job,
        frames: list[SampledFrame],
        embeddings: list[Any],
        context: str | None,
        on_text: Callable[[str], None] | None,
    ) -> messages.Caption | None:
        if not frames:
            log.warning(
                "stream %s: window %.1f-%.1f s has no encoded frame; skipped",
                worker.name,
                job.t_start,
                job.t_end,
            )
            with worker.lock:
                worker.counters.skipped += 1
            return None
        started = time.monotonic()
        text = self.backend.describe(
            embeddings,
            self.prompt_for(job),
            context=context,
            max_new_tokens=self.settings.max_new_tokens,
            decoding=self.settings.decoding,
            on_text=on_text,
        )
        model_ms = (time.monotonic() - started) * 1000
        published = time.time()
        seq = job.index - 1
        with worker.lock:
            skipped = max(0, seq - worker.last_seq - 1)
            worker.last_seq = seq
            worker.last_t_end = job.t_end
            worker.history.append(text)
            worker.counters.captions += 1
            latency_ms = (published - frames[-1].wall) * 1000
            worker.counters.last_latency_ms = round(latency_ms, 1)
            worker.counters.last_model_ms = round(model_ms, 1)
        return messages.Caption(
            stream=worker.name,
            seq=seq,
            t_start=round(job.t_start, 3),
            t_end=round(job.t_end, 3),
            frame_times=[round(f.t, 3) for f in frames],
            wall_start=frames[0].wall,
            wall_end=frames[-1].wall,
            text=text,
            model=self.model_name,
            latency_ms=round(latency_ms, 1),
            skipped=skipped,
            model_ms=round(model_ms, 1),
            encode_ms=worker.encode_ms.get(frames[-1].seq, 0.0),
            frames=len(frames),
        )

    def answer(
        self, worker: StreamWorker, question: str, max_new_tokens: int | None = None
    ) -> tuple[str, list[SampledFrame]]:
        """Answer a question from the stream's current window (the model card's chat over video)."""
        with worker.lock:
            window = worker.window_now()
        frames, embeddings = self.embeddings_now(worker, window)
        if not frames:
            raise LookupError(f"stream {worker.name} has no frames to look at yet")
        text = self.backend.ask(
            embeddings,
            question,
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            decoding=self.settings.decoding,
        )
        return text, frames
