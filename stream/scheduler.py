"""The scheduling core of captioning: frames and asks in, what the model should do next out.

No I/O, no threads, no locks, no model calls, no clock (times are arguments): the same core is driven by
the live inference process (:mod:`stream.inference`: frames from shared-memory rings, results
published on the bus) and by the offline ``caption`` command (:mod:`stream.offline`: frames from a
decoder, results written to files), so both caption the same way.

The protocol, one stream or many:

1. **Frames.** :meth:`Scheduler.offer` takes every frame's stream time (stamped once where it was
   read, see :mod:`stream.timeline`) and says whether it is kept (about one in 25 at 1-fps sampling).
   For a kept frame the caller then gives its pixels (:meth:`Scheduler.add_pixels`) or says they were
   lost (:meth:`Scheduler.pixels_lost`), before offering the next frame of that stream. A stream
   that ends is told with :meth:`Scheduler.end_stream` (its tail gets a last, shorter window).
2. **Asks.** :meth:`Scheduler.submit_ask` queues a question about a stream's last ``window`` seconds.
3. **Actions.** :meth:`Scheduler.next_action` answers what to do next, as a frozen value:
   :class:`Encode` these pixels (one batched vision call), :class:`Caption` this window with these
   cached embeddings, prompt and context, :class:`Answer` this ask, :class:`Reply` with this message
   (an ask that cannot be answered), or None (nothing to do until more frames or asks come).
   :class:`EvaluateRules` is the slot for alert rules: defined, not produced yet.
4. **Results.** The caller runs the action and reports back before asking for the next one (but
   see ``max_in_flight`` below):
   :meth:`Scheduler.encoded`, :meth:`Scheduler.captioned` (returns the ``caption`` message),
   :meth:`Scheduler.caption_failed`, :meth:`Scheduler.answered` / :meth:`Scheduler.answer_failed`
   (return the ``answer`` message). A :class:`Reply` needs no report. The core never calls a model:
   the shells run an action with its ``run_on(backend)``, the one way each action meets the model.
   Frames and asks may keep coming while an action runs (the inference process does that from another
   thread, under its lock).

In flight: with ``max_in_flight`` above 1 (a remote server that serves many requests at once), a
:class:`Caption` or :class:`Answer` handed out need not be reported before the next action is asked
for: up to ``max_in_flight`` of them run at once, at most one per stream (its stream is *busy*
meanwhile: its windows wait, and in live mode only its newest is taken once it is free). An
:class:`Encode` is still reported before anything else is handed out. With 1 (the default, one local
model) every action is reported before the next, as above.

Order of work: asks first (a person is waiting), then the next window, streams taking turns (round
robin from the one served longest ago), each giving its newest due window in live mode (older ones
skipped and counted) and every window in order offline. A window or ask whose frames still wait as
pixels gets them encoded first (with every other frame waiting for the same vision settings, one
batch), so encoding slower than real time never leaves a window captioned from nothing. With nothing
due, waiting frames are encoded as soon as ``min_batch`` of them wait. The per-stream rules (encode
once, the bounded cache, context captions, status figures) are in :mod:`stream.captioning`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from . import messages
from .captioning import CaptionSettings, StreamCaptions
from .messages import AskId, ErrorCode
from .sampler import Job, SampledFrame

if TYPE_CHECKING:
    from model.backends import CaptionBackend

log = logging.getLogger(__name__)


# -- actions (what the caller should do next) ------------------------------------------------------
@dataclass(frozen=True)
class EncodeFrame:
    """One frame to encode: its stream, ring seq and pixels (an RGB uint8 array)."""

    stream: str
    seq: int
    pixels: Any


@dataclass(frozen=True)
class Encode:
    """Encode these frames in one vision call (:meth:`run_on`), then report the embeddings, in order,
    with :meth:`Scheduler.encoded`."""

    frames: tuple[EncodeFrame, ...]
    max_slice_nums: int

    @property
    def pixels(self) -> list[Any]:
        return [f.pixels for f in self.frames]

    def run_on(self, backend: CaptionBackend) -> list[Any]:
        return list(backend.encode_frames(self.pixels, max_slice_nums=self.max_slice_nums))


@dataclass(frozen=True)
class Caption:
    """Caption one window (:meth:`run_on`), then report the text with :meth:`Scheduler.captioned` (or
    the model's refusal with :meth:`Scheduler.caption_failed`). ``frames``: the window's frames that
    have embeddings (frames whose pixels were lost are left out); ``seq``: the caption's number (for
    ``partial`` messages); ``encode_ms``: the vision call that encoded its newest frame."""

    stream: str
    seq: int
    job: Job
    frames: tuple[SampledFrame, ...]
    embeddings: tuple[Any, ...]
    prompt: str
    context: str | None
    max_new_tokens: int
    decoding: str
    encode_ms: float

    def run_on(self, backend: CaptionBackend, on_text: Callable[[str], None] | None = None) -> str:
        """The caption's text (``on_text`` gets it piece by piece as it is generated)."""
        return backend.describe(
            list(self.embeddings),
            self.prompt,
            context=self.context,
            max_new_tokens=self.max_new_tokens,
            decoding=self.decoding,
            on_text=on_text,
        )


@dataclass(frozen=True)
class Answer:
    """Answer an ask from these frames (:meth:`run_on`), then report with :meth:`Scheduler.answered`
    (or :meth:`Scheduler.answer_failed`)."""

    id: AskId
    stream: str
    question: str
    frames: tuple[SampledFrame, ...]
    embeddings: tuple[Any, ...]
    max_new_tokens: int
    decoding: str

    def run_on(self, backend: CaptionBackend) -> str:
        return backend.ask(
            list(self.embeddings), self.question, max_new_tokens=self.max_new_tokens, decoding=self.decoding
        )


@dataclass(frozen=True)
class Reply:
    """Publish this message (an ``answer`` with an error: no such stream, no frames yet, too many
    asks); nothing to report back."""

    message: messages.Answer


@dataclass(frozen=True)
class EvaluateRules:
    """Evaluate these alert rules (their names) on this window's frames, one ``event`` per match.

    The slot for alert rules: not produced yet. It joins :data:`Action` (and the shells learn to run
    it) when the rules land; until then no caller has to handle it."""

    stream: str
    job: Job
    frames: tuple[SampledFrame, ...]
    embeddings: tuple[Any, ...]
    rules: tuple[str, ...]


Action: TypeAlias = Encode | Caption | Answer | Reply


@dataclass(frozen=True)
class _Ask:
    id: AskId
    stream: str
    question: str
    max_new_tokens: int | None


@dataclass(frozen=True)
class _Held:
    """A window or ask taken, waiting for its frames' encode before it is handed out (its frames
    are the stream's ``held``, so their embeddings stay cached meanwhile)."""

    stream: StreamCaptions
    job: Job | None = None
    ask: _Ask | None = None

    @property
    def frames(self) -> tuple[SampledFrame, ...]:
        return self.stream.held


class Scheduler:
    """The scheduling core (see the module doc). ``settings`` apply to every stream not named in
    ``stream_settings``; ``model`` is the model name the caption messages carry."""

    def __init__(
        self,
        settings: CaptionSettings,
        *,
        stream_settings: Mapping[str, CaptionSettings] | None = None,
        model: str = "model",
        max_in_flight: int = 1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.settings = settings
        self.max_in_flight = max_in_flight
        self._in_flight: dict[int, Caption | Answer] = {}  # id(action) -> action, when max_in_flight > 1
        self.stream_settings = dict(stream_settings or {})
        self.model = model
        self.streams: dict[str, StreamCaptions] = {}
        self._asks: deque[_Ask] = deque()
        self._held: _Held | None = None
        self._current: Action | None = None
        self._turn = 0

    def add_stream(self, name: str, *, hold_last: bool = False) -> StreamCaptions:
        """A stream to caption; ``hold_last`` for a file read to its end (the offline command): its last
        window then ends where the file's video ends, at the cost of holding each window back until
        the next sample has been read."""
        stream = StreamCaptions(name, self.stream_settings.get(name, self.settings), hold_last=hold_last)
        self.streams[name] = stream
        return stream

    # -- frames and asks in -----------------------------------------------------------------------
    def offer(self, stream: str, seq: int, t: float, wall: float) -> bool:
        """A frame of ``stream`` (ring seq, stream time, wall-clock time); True when it is kept: give
        its pixels next (:meth:`add_pixels` or :meth:`pixels_lost`)."""
        return self._stream(stream).offer(seq, t, wall)

    def add_pixels(self, stream: str, seq: int, pixels: Any) -> None:
        self._stream(stream).add_pixels(seq, pixels)

    def pixels_lost(self, stream: str, seq: int) -> None:
        self._stream(stream).pixels_lost(seq)

    def end_stream(self, stream: str, end: float | None = None) -> None:
        """The source is over; ``end``: where its last frame ends (default: that frame's time)."""
        self._stream(stream).end(end)

    def ended(self, stream: str) -> bool:
        return self._stream(stream).ended

    def drained(self) -> bool:
        """Every stream has ended and nothing of it is left to caption (no window due or taken)."""
        return (
            self._held is None
            and not self._in_flight
            and all(s.ended and not s.due for s in self.streams.values())
        )

    def busy(self) -> set[str]:
        """Streams with a caption or answer in flight (only with ``max_in_flight`` above 1)."""
        return {action.stream for action in self._in_flight.values()}

    def submit_ask(self, id: AskId, stream: str, question: str, max_new_tokens: int | None = None) -> None:
        """Queue a question about what ``stream`` shows now (answered before any caption; the gateway
        bounds how many asks each client may have waiting)."""
        self._asks.append(_Ask(id, stream, question, max_new_tokens))

    def _stream(self, name: str) -> StreamCaptions:
        try:
            return self.streams[name]
        except KeyError:
            raise KeyError(f"no stream named {name!r} in this scheduler") from None

    # -- actions out ------------------------------------------------------------------------------
    def next_action(self, *, min_batch: int = 1) -> Action | None:
        """What to do next (see the module doc); None when there is nothing to do now."""
        if self._current is not None:
            raise RuntimeError(
                f"next_action: the result of {type(self._current).__name__} is not reported yet"
            )
        while True:
            if self._held is None:
                reply = self._take()
                if reply is not None:
                    return reply
            held = self._held
            if held is not None:
                if held.stream.waiting(held.frames):
                    return self._start(self._encode(held.stream.settings.max_slice_nums))
                self._held = None
                action = self._hand_out(held)
                if action is None:
                    continue  # a window none of whose frames survived: skipped, take the next
                return action if isinstance(action, Reply) else self._start(action)
            return self._start(self._idle_encode(min_batch))

    def _start(self, action: Action | None) -> Action | None:
        if self.max_in_flight > 1 and isinstance(action, Caption | Answer):
            self._in_flight[id(action)] = action
        else:
            self._current = action
        return action

    def _take(self) -> Reply | None:
        """Hold the next ask, else the next window (streams in turn, busy ones left waiting); a Reply
        for an unanswerable ask."""
        if len(self._in_flight) >= self.max_in_flight:
            return None
        busy = self.busy()
        for ask in list(self._asks):
            if ask.stream in busy:
                continue  # its stream's caption or answer is in flight: the next ask may go first
            self._asks.remove(ask)
            stream = self.streams.get(ask.stream)
            if stream is None:
                message = f"no stream named {ask.stream!r} in this run"
                return Reply(self._error_answer(ask, ErrorCode.UNKNOWN_STREAM, message))
            frames = stream.window_now()
            if not frames:
                return Reply(self._no_frames(ask))
            stream.held = tuple(frames)
            self._held = _Held(stream, ask=ask)
            return None
        for stream in sorted(self.streams.values(), key=lambda s: s.served):
            if stream.name in busy:
                continue
            job = stream.take_job()
            if job is not None:
                self._turn += 1
                stream.served = self._turn
                stream.held = job.frames
                self._held = _Held(stream, job=job)
                stream.sweep()  # skipped windows let go of their frames
                return None
        return None

    def _hand_out(self, held: _Held) -> Caption | Answer | Reply | None:
        stream = held.stream
        frames, embeddings = stream.embeddings_for(held.frames)
        stream.held = ()
        settings = stream.settings
        if held.ask is not None:
            ask = held.ask
            if not frames:
                return Reply(self._no_frames(ask))
            return Answer(
                ask.id,
                stream.name,
                ask.question,
                tuple(frames),
                tuple(embeddings),
                ask.max_new_tokens or settings.max_new_tokens,
                settings.decoding,
            )
        job = held.job
        assert job is not None
        if not frames:
            log.warning(
                "stream %s: window %.1f-%.1f s has no encoded frame; skipped",
                stream.name,
                job.t_start,
                job.t_end,
            )
            stream.counters.skipped += 1
            stream.sweep()
            return None
        return Caption(
            stream.name,
            job.index - 1,
            job,
            tuple(frames),
            tuple(embeddings),
            stream.prompt_for(job),
            stream.context(),
            settings.max_new_tokens,
            settings.decoding,
            stream.encode_ms.get(frames[-1].seq, 0.0),
        )

    def _encode(self, max_slice_nums: int) -> Encode:
        """Every frame waiting as pixels, of every stream encoded with these settings: one batch."""
        batch = []
        for stream in self.streams.values():
            if stream.settings.max_slice_nums != max_slice_nums:
                continue
            while stream.pending:
                sample, pixels = stream.pending.popleft()
                batch.append(EncodeFrame(stream.name, sample.seq, pixels))
        return Encode(tuple(batch), max_slice_nums)

    def _idle_encode(self, min_batch: int) -> Encode | None:
        waiting: dict[int, int] = {}
        for stream in self.streams.values():
            m = stream.settings.max_slice_nums
            waiting[m] = waiting.get(m, 0) + len(stream.pending)
        for m, count in waiting.items():
            if count and count >= min_batch:
                return self._encode(m)
        return None

    # -- results in -------------------------------------------------------------------------------
    def _finish(self, action: Action) -> None:
        if self._in_flight.get(id(action)) is action:
            del self._in_flight[id(action)]
            return
        if action is not self._current:
            raise RuntimeError(f"{type(action).__name__} reported, but it is not the action handed out")
        self._current = None

    def encoded(self, action: Encode, embeddings: Sequence[Any], *, ms: float) -> None:
        """The embeddings of ``action.frames``, in order; ``ms``: how long the vision call took."""
        if len(embeddings) != len(action.frames):
            raise ValueError(f"encoded: {len(embeddings)} embeddings for {len(action.frames)} frames")
        self._finish(action)
        for frame, embedding in zip(action.frames, embeddings, strict=True):
            self.streams[frame.stream].store(frame.seq, embedding, round(ms, 1))

    def captioned(self, action: Caption, text: str, *, model_ms: float, wall: float) -> messages.Caption:
        """The caption ``text`` of ``action``, made in ``model_ms`` and published at ``wall`` (Unix
        seconds): counted, remembered as context, and returned as the ``caption`` message."""
        self._finish(action)
        stream = self.streams[action.stream]
        frames = action.frames
        skipped = max(0, action.seq - stream.last_seq - 1)
        stream.last_seq = action.seq
        stream.last_t_end = action.job.t_end
        stream.history.append(text)
        latency_ms = round((wall - frames[-1].wall) * 1000, 1)
        c = stream.counters
        c.captions += 1
        c.last_latency_ms = latency_ms
        c.last_model_ms = round(model_ms, 1)
        stream.sweep()
        return messages.Caption(
            stream=stream.name,
            seq=action.seq,
            t_start=round(action.job.t_start, 3),
            t_end=round(action.job.t_end, 3),
            frame_times=[round(f.t, 3) for f in frames],
            wall_start=frames[0].wall,
            wall_end=frames[-1].wall,
            text=text,
            model=self.model,
            latency_ms=latency_ms,
            skipped=skipped,
            model_ms=round(model_ms, 1),
            encode_ms=action.encode_ms,
            frames=len(frames),
        )

    def caption_failed(self, action: Caption, reason: str | None = None) -> int:
        """The model refused this window (e.g. a prompt over its input limit, a server's 400):
        counted in ``caption_errors`` (``reason`` shown as ``last_caption_error``), whose new value
        is returned (the caller logs the first loudly)."""
        self._finish(action)
        stream = self.streams[action.stream]
        stream.counters.caption_errors += 1
        stream.counters.last_caption_error = reason
        stream.sweep()
        return stream.counters.caption_errors

    def answered(self, action: Answer, text: str) -> messages.Answer:
        """The ``answer`` message for ``action``."""
        self._finish(action)
        frames = action.frames
        return messages.Answer(
            id=action.id,
            stream=action.stream,
            text=text,
            t_start=round(frames[0].t, 3),
            t_end=round(frames[-1].t, 3),
            frame_times=[round(f.t, 3) for f in frames],
        )

    def answer_failed(self, action: Answer, reason: str) -> messages.Answer:
        """The model refused the question: the asker gets an ``answer`` with ``model_error``."""
        self._finish(action)
        ask = _Ask(action.id, action.stream, action.question, None)
        return self._error_answer(ask, ErrorCode.MODEL_ERROR, reason)

    @staticmethod
    def _error_answer(ask: _Ask, code: ErrorCode, reason: str) -> messages.Answer:
        return messages.Answer(id=ask.id, stream=ask.stream, text="", error=code, message=reason)

    def _no_frames(self, ask: _Ask) -> messages.Answer:
        return self._error_answer(
            ask, ErrorCode.NO_FRAMES, f"stream {ask.stream} has no frames to look at yet"
        )

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        """Per stream: the figures of the ``inference_status`` message."""
        return {name: stream.status() for name, stream in self.streams.items()}
