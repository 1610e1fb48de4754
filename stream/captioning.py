"""One stream's captioning state: its sampler, queued pixels, embedding cache, due windows and history.

Pure state and rules (no I/O, no threads, no clock, no backend): :class:`StreamCaptions` is what the
scheduling core (:mod:`stream.scheduler`) keeps per stream, and the rules that are about one stream
live here:

* **Encode once.** A frame the sampler keeps is queued as pixels until the core hands it out to be
  encoded; its embedding is cached until no due window, no future window and no ask (the last
  ``window`` seconds) can use it (:meth:`StreamCaptions.in_use`). Every window containing the frame
  reuses it, so ``encodes_per_frame`` (vision encodes / frames sampled) stays at 1.00.
* **Bounded.** At most :data:`MAX_PENDING_FRAMES` frames wait as pixels (the oldest are dropped and
  counted when encoding cannot keep up) and :data:`MAX_DUE_WINDOWS` windows wait to be captioned (the
  oldest are skipped and counted).
* **Real time first.** :meth:`StreamCaptions.take_job` hands out, in live mode (``skip_stale``), only
  the newest due window; older ones are dropped and counted as skipped. Offline mode keeps every window.
* **Continuity.** The last ``context_captions`` captions go into the next prompt
  (:meth:`StreamCaptions.context`), so successive captions continue rather than repeat.
* **No caption for a scene that did not change.** Each sampled frame's thumbnail signature
  (:mod:`stream.change`, computed by the shell where the pixels arrive) is kept beside its embedding.
  A window whose frames all stayed within ``unchanged_threshold`` of the frames of the last window the
  model captioned (:attr:`StreamCaptions.reference`) is not captioned again
  (:meth:`StreamCaptions.unchanged_change`): the scheduler extends that caption instead. The
  reference moves only when the model captions, so a slow drift adds up until it is captioned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .change import window_change
from .config import CaptionsConfig, ModelConfig, SamplerConfig
from .sampler import Job, SampledFrame, Sampler
from .settings import check_settings, setting_like

# Frames waiting to be encoded, per stream. Sampled at 1 fps, so this only fills when the model
# cannot even keep up with encoding; then the oldest are dropped (and counted).
MAX_PENDING_FRAMES = 64
# Windows waiting to be captioned, per stream (offline keeps every window; live keeps the newest).
MAX_DUE_WINDOWS = 64


@dataclass(frozen=True)
class CaptionSettings:
    """How one stream is captioned (from the ``[sampler]``, ``[model]`` and ``[captions]`` config).
    Checked when made, with the limits of those config keys (:func:`~stream.settings.check_settings`):
    a bad value raises :class:`~stream.errors.ConfigError` naming ``captions.<field>``."""

    prompt: str  # the prompt text (a preset already resolved); ``{duration}`` is filled in
    context_template: str = "Earlier description: {previous}\nContinue from it: describe what is new."
    context_captions: int = setting_like(CaptionsConfig, "context_captions")
    max_new_tokens: int = setting_like(CaptionsConfig, "max_new_tokens")
    decoding: str = setting_like(CaptionsConfig, "decoding")
    max_slice_nums: int = setting_like(ModelConfig, "max_slice_nums")
    fps: float = setting_like(SamplerConfig, "fps")
    window: float = setting_like(SamplerConfig, "window")
    stride: float = setting_like(SamplerConfig, "stride")
    max_frames: int = setting_like(SamplerConfig, "max_frames")
    skip_stale: bool = True  # live: caption only the newest due window; offline: every window
    unchanged_threshold: float = setting_like(CaptionsConfig, "unchanged_threshold")  # 0: caption all
    presampled: bool = False  # live, [capture] decode = "sampled": capture chose the samples already

    def __post_init__(self) -> None:
        check_settings("captions", self)


@dataclass
class StreamCounters:
    sampled: int = 0
    encodes: int = 0
    pending_dropped: int = 0
    captions: int = 0
    skipped: int = 0
    caption_errors: int = 0
    unchanged: int = 0  # windows not captioned: the scene had not changed (stream.change)
    missing_frames: int = 0
    last_latency_ms: float | None = None
    last_model_ms: float | None = None
    last_caption_error: str | None = None

    def encodes_per_frame(self, pending: int = 0) -> float | None:
        """Vision encodes per sampled frame that has left the queue (queued ones are not encoded yet,
        dropped ones never will be): 1.00 when every frame is encoded exactly once."""
        done = self.sampled - pending - self.pending_dropped
        return round(self.encodes / done, 3) if done > 0 else None


@dataclass(frozen=True)
class Reference:
    """The last window the model captioned, what an unchanged window is compared with and extends."""

    signatures: tuple[Any, ...]  # of its frames (stream.change.signature)
    t_start: float
    wall_start: float
    text: str


class StreamCaptions:
    """One stream's sampler, queued pixels, embedding cache, due windows and caption history."""

    def __init__(self, name: str, settings: CaptionSettings, *, hold_last: bool = False) -> None:
        """``hold_last``: a file (see :class:`~stream.sampler.Sampler`): its last window is stretched
        to where the file ends."""
        self.name = name
        self.settings = settings
        self.sampler = Sampler(
            fps=settings.fps,
            window=settings.window,
            stride=settings.stride,
            max_frames=settings.max_frames,
            stream=name,
            hold_last=hold_last,
            presampled=settings.presampled,
        )
        self.counters = StreamCounters()
        self.pending: deque[tuple[SampledFrame, Any]] = deque()  # kept frames waiting as pixels
        self.cache: dict[int, Any] = {}  # seq -> frame embedding
        self.encode_ms: dict[int, float] = {}  # seq -> time of the vision call that encoded it
        self.signatures: dict[int, Any] = {}  # seq -> thumbnail signature (stream.change)
        self.reference: Reference | None = None  # the last window the model captioned
        self.candidate: tuple[Any, ...] | None = None  # signatures of the window being captioned
        self.due: deque[Job] = deque()
        self.history: deque[str] = deque(maxlen=max(1, settings.context_captions))
        self.recent: deque[SampledFrame] = deque(maxlen=self.sampler.window_capacity)  # for asks
        self.served = 0  # the scheduler's turn when this stream was last served (round robin)
        self.last_seq = -1  # caption seq (job index - 1) of the last caption made
        self.last_t_end: float | None = None  # t_end of the last window captioned
        self.latest_t = 0.0
        self.ended = False
        self.held: tuple[SampledFrame, ...] = ()  # the window or ask the scheduler has taken
        self._awaiting: SampledFrame | None = None  # kept by offer(), pixels not given yet

    # -- frames in --------------------------------------------------------------------------------
    def offer(self, seq: int, t: float, wall: float) -> bool:
        """Offer a frame's stream time; True when it is kept: give its pixels next (:meth:`add_pixels`
        or :meth:`pixels_lost`). A kept frame whose pixels never came is counted missing."""
        if self._awaiting is not None:
            self.pixels_lost(self._awaiting.seq)
        sample, jobs = self.sampler.offer(seq, t, wall)
        self.latest_t = self.sampler.now
        self._awaiting = sample
        self._queue(jobs)
        return sample is not None

    def add_pixels(self, seq: int, pixels: Any, signature: Any = None) -> None:
        """The pixels of the frame :meth:`offer` just kept: queued to be encoded. ``signature``: its
        :func:`stream.change.signature` (a window with a frame without one is always captioned)."""
        sample = self._take_awaiting(seq)
        if signature is not None and self.settings.unchanged_threshold > 0:
            self.signatures[seq] = signature
        if len(self.pending) >= MAX_PENDING_FRAMES:
            self.pending.popleft()
            self.counters.pending_dropped += 1
        self.pending.append((sample, pixels))
        self.recent.append(sample)
        self.counters.sampled += 1

    def pixels_lost(self, seq: int) -> None:
        """The frame :meth:`offer` just kept is gone (overwritten in the ring before it was read)."""
        self._take_awaiting(seq)
        self.counters.missing_frames += 1

    def _take_awaiting(self, seq: int) -> SampledFrame:
        sample = self._awaiting
        if sample is None or sample.seq != seq:
            raise ValueError(f"stream {self.name}: frame {seq} is not the frame just kept")
        self._awaiting = None
        return sample

    def end(self, at: float | None = None) -> None:
        """The source ended (``at``: where its last frame ends): cut the last, shorter window so the
        tail is captioned too."""
        self.ended = True
        self._queue(self.sampler.flush(at))

    def _queue(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            if len(self.due) >= MAX_DUE_WINDOWS:
                self.due.popleft()
                self.counters.skipped += 1
            self.due.append(job)
        self.sweep()

    # -- the cache --------------------------------------------------------------------------------
    def in_use(self) -> set[int]:
        """Seqs whose embeddings can still be used: by a future window, a due window, the window or
        ask the scheduler has taken (:attr:`held`), or an ask to come (the last ``window`` seconds)."""
        seqs = {f.seq for f in self.sampler.window_frames}
        seqs.update(f.seq for f in self.held)
        seqs.update(f.seq for f in self.window_now())
        seqs.update(f.seq for job in self.due for f in job.frames)
        return seqs

    def sweep(self) -> None:
        """Drop cached embeddings and signatures nothing can use any more (what keeps them bounded)."""
        if not self.cache and not self.signatures:
            return
        keep = self.in_use()
        for seq in [s for s in self.cache if s not in keep]:
            del self.cache[seq]
            self.encode_ms.pop(seq, None)
        for seq in [s for s in self.signatures if s not in keep]:
            del self.signatures[seq]

    def store(self, seq: int, embedding: Any, ms: float) -> None:
        """An embedding came back from the vision model: counted, and cached if still of use."""
        self.counters.encodes += 1
        if seq in self.in_use():
            self.cache[seq] = embedding
            self.encode_ms[seq] = ms

    def waiting(self, frames: Sequence[SampledFrame]) -> bool:
        """Whether any of these frames still waits as pixels (then encode before using them)."""
        wanted = {f.seq for f in frames}
        return any(sample.seq in wanted for sample, _ in self.pending)

    def embeddings_for(self, frames: Sequence[SampledFrame]) -> tuple[list[SampledFrame], list[Any]]:
        """The cached embeddings of these samples (frames whose pixels were lost are left out)."""
        used, embeddings = [], []
        for frame in frames:
            embedding = self.cache.get(frame.seq)
            if embedding is not None:
                used.append(frame)
                embeddings.append(embedding)
        return used, embeddings

    # -- unchanged scenes ---------------------------------------------------------------------------
    def signatures_for(self, frames: Sequence[SampledFrame]) -> tuple[Any, ...] | None:
        """The signatures of these frames; None unless every one has a signature."""
        found = tuple(self.signatures.get(f.seq) for f in frames)
        return found if found and all(s is not None for s in found) else None

    def unchanged_change(self, job: Job) -> float | None:
        """How much of the picture changed (stream.change.window_change) between ``job``'s frames and
        the reference, when that is below ``unchanged_threshold``: the window need not be captioned.
        None when it must be: it changed, gating is off, nothing was captioned yet, or a frame of
        either has no signature."""
        threshold = self.settings.unchanged_threshold
        signatures = self.signatures_for(job.frames)
        if threshold <= 0 or self.reference is None or signatures is None:
            return None
        change = window_change(signatures, self.reference.signatures)
        return change if change < threshold else None

    # -- windows out ------------------------------------------------------------------------------
    def take_job(self) -> Job | None:
        """The window to caption next: the oldest due (offline), or the newest with the older ones
        skipped and counted (live)."""
        if not self.due:
            return None
        if self.settings.skip_stale:
            while len(self.due) > 1:
                self.due.popleft()
                self.counters.skipped += 1
        return self.due.popleft()

    def window_now(self) -> list[SampledFrame]:
        """The samples of the last ``window`` seconds (what an ask looks at), newest last, at most
        max_frames. Kept here rather than taken from the sampler, which lets go of samples as soon as
        no future window needs them: right after a cut when the stride equals the window."""
        frames = [f for f in self.recent if f.t > self.latest_t - self.settings.window]
        return frames[-self.settings.max_frames :]

    def prompt_for(self, job: Job) -> str:
        duration = max(job.t_end - job.t_start, 0.0)
        return self.settings.prompt.replace("{duration}", f"{duration:.0f}")

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
            "unchanged": c.unchanged,
            "last_caption_error": c.last_caption_error,
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
