"""The scheduling core of captioning: frames and asks in, what the model should do next out.

No I/O, no threads, no locks, no model calls, no clock (times are arguments): the same core is driven by
the live inference process (:mod:`stream.inference`: frames from shared-memory rings, results
published on the bus) and by the offline ``caption`` command (:mod:`stream.offline`: frames from a
decoder, results written to files), so both caption the same way.

The protocol, one stream or many:

1. **Frames.** :meth:`Scheduler.offer` takes every frame's stream time (stamped once where it was
   read, see :mod:`stream.timeline`) and says whether it is kept (about one in 25 at 1-fps sampling).
   For a kept frame the caller then gives its pixels and their change signature
   (:meth:`Scheduler.add_pixels`, :mod:`stream.change`) or says they were lost
   (:meth:`Scheduler.pixels_lost`), before offering the next frame of that stream. A stream that
   ends is told with :meth:`Scheduler.end_stream` (its tail gets a last, shorter window).
2. **Asks.** :meth:`Scheduler.submit_ask` queues a question about a stream's last ``window`` seconds;
   :meth:`Scheduler.submit_past_ask` one over stored captions, and captions feed live summaries
   (both text-only: :mod:`stream.textwork`, handed out as :class:`~stream.textwork.AnswerPast` and
   :class:`~stream.textwork.Summarize`, reported with :meth:`Scheduler.past_answered` and
   :meth:`Scheduler.summarized`).
3. **Actions.** :meth:`Scheduler.next_action` answers what to do next, as a frozen value of
   :mod:`stream.actions`: :class:`Encode` these pixels (one batched vision call), :class:`Caption`
   this window with these cached embeddings, prompt and context, :class:`Extend` the last caption
   over this window (its scene did not change: no model call), :class:`Answer` this ask,
   :class:`Reply` with this message
   (an ask that cannot be answered), or None (nothing to do until more frames or asks come).
   With alert rules (an :class:`~stream.alerts.AlertCore`, kept by :mod:`stream.rulework`), each
   captioned window is then scored:
   :class:`EvaluateRules` (its question rules, one batched prefill over the same cached
   embeddings, handed out before anything else) and its pattern rules at once on the caption's text.
4. **Results.** The caller runs the action and reports back before asking for the next one (but
   see ``max_in_flight`` below):
   :meth:`Scheduler.encoded`, :meth:`Scheduler.captioned` (returns the ``caption`` message),
   :meth:`Scheduler.caption_failed`, :meth:`Scheduler.extended` (returns the ``unchanged`` caption),
   :meth:`Scheduler.answered` / :meth:`Scheduler.answer_failed` (return the ``answer`` message),
   :meth:`Scheduler.rules_evaluated` / :meth:`Scheduler.rules_failed`.
   The ``event`` messages alert rules make wait in an outbox: :meth:`Scheduler.take_events` after
   every step (a stream that ended and has nothing left to caption ends its open events there too;
   :meth:`Scheduler.stop_alerts` ends the rest when the run stops). A :class:`Reply` needs no report.
   The core never calls a model: the shells run an action with its ``run_on(backend)``, the one way
   each action meets the model.
   Frames and asks may keep coming while an action runs (the inference process does that from another
   thread, under its lock).

In flight: with ``max_in_flight`` above 1 (a remote server that serves many requests at once), the
model calls of :data:`IN_FLIGHT` (a :class:`Caption`, :class:`Answer`, :class:`EvaluateRules`,
:class:`~stream.textwork.Summarize` or :class:`~stream.textwork.AnswerPast`) handed out need not be
reported before the next action is asked for: up to ``max_in_flight`` of them run at once. A window,
an ask or a window's rule scoring keeps its stream *busy* (at most one per stream: its windows wait,
and in live mode only its newest is taken once it is free), so a stream's rules are scored in window
order while other streams' captions go on; text turns keep no stream busy, and one summary turn runs
at a time. An :class:`Encode` is still reported before anything else is handed out. With 1 (the
default, one local model) every action is reported before the next, as above. The local model uses
it to batch: the shell collects the Captions handed out (up to ``[model] max_batch``) and runs them
in one generation (:func:`~stream.actions.run_captions`) on another thread, asking meanwhile only
:meth:`Scheduler.next_encode` (the frames that came in; no window or ask until the batch is reported).

Order of work: asks first (a person is waiting; questions over the past with them), then a summary
turn when one is due (never two in a row while a window is due), then the next window, streams
taking turns (round robin from the one served longest ago), each giving its newest due window in
live mode (older ones skipped and counted) and every window in order offline. A window or ask
whose frames still wait as pixels gets them encoded first (with every other frame waiting for the
same vision settings, one batch), so encoding slower than real time never leaves a window captioned
from nothing. With nothing due, waiting frames are encoded as soon as ``min_batch`` of them wait.
The per-stream rules (encode once, the bounded cache, context captions, status figures) are in
:mod:`stream.captioning`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import messages
from .actions import Action, Answer, Caption, Encode, EncodeFrame, EvaluateRules, Extend, Reply
from .alerts import AlertCore
from .captioning import CaptionSettings, Reference, StreamCaptions
from .messages import AskId, ErrorCode
from .rulework import RuleWork
from .sampler import Job, SampledFrame
from .textwork import AnswerPast, Summarize, TextWork

log = logging.getLogger(__name__)

# The model calls that may run in flight together (``max_in_flight`` above 1: see the module doc).
IN_FLIGHT = (Caption, Answer, EvaluateRules, Summarize, AnswerPast)
InFlight = Caption | Answer | EvaluateRules | Summarize | AnswerPast


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
        alerts: AlertCore | None = None,
        text: TextWork | None = None,
        max_in_flight: int = 1,
        pipelined: bool = False,
    ) -> None:
        """``alerts``: the alert rules' core, when the run has rules (see :class:`EvaluateRules`);
        ``pipelined``: captions are run on another thread while encodes go on (the local model, see
        :meth:`next_encode`), so they are in flight even at one at a time."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.settings = settings
        self.max_in_flight = max_in_flight
        self._tracked = max_in_flight > 1 or pipelined  # IN_FLIGHT actions are in flight, not current
        self._in_flight: dict[int, InFlight] = {}  # id(action) -> action, when tracked
        self._rules = RuleWork(alerts) if alerts is not None else None  # stream.rulework
        self.text = text  # live summaries and questions over the past (stream.textwork)
        self._summary_waits = False  # a summary turn ran: a due window goes before the next one
        self._text_ended: set[str] = set()  # ended streams whose tail summary was started
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

    def add_pixels(self, stream: str, seq: int, pixels: Any, signature: Any = None) -> None:
        """The pixels of the frame just kept, and its :func:`stream.change.signature` (without one, no
        window holding the frame is ever taken for unchanged)."""
        self._stream(stream).add_pixels(seq, pixels, signature)

    def pixels_lost(self, stream: str, seq: int) -> None:
        self._stream(stream).pixels_lost(seq)

    def end_stream(self, stream: str, end: float | None = None) -> None:
        """The source is over; ``end``: where its last frame ends (default: that frame's time)."""
        self._stream(stream).end(end)

    def ended(self, stream: str) -> bool:
        return self._stream(stream).ended

    def drained(self) -> bool:
        """Every stream has ended and nothing of it is left to caption (no window due, taken or in
        flight) or to score (no alert rules waiting) or to summarise, and its open events were ended (by
        :meth:`next_action`)."""
        return (
            self._held is None
            and not self._in_flight
            and all(s.ended and not s.due for s in self.streams.values())
            and (self._rules is None or (not self._rules.due and self._rules.all_closed(len(self.streams))))
            and (self.text is None or (self.text.idle and self._text_ended >= self.streams.keys()))
        )

    def busy(self) -> set[str]:
        """Streams with a caption, answer or rule scoring in flight (only with ``max_in_flight`` above 1)."""
        return {a.stream for a in self._in_flight.values() if isinstance(a, Caption | Answer | EvaluateRules)}

    def _room(self) -> bool:
        return len(self._in_flight) < self.max_in_flight

    def submit_ask(self, id: AskId, stream: str, question: str, max_new_tokens: int | None = None) -> None:
        """Queue a question about what ``stream`` shows now (answered before any caption; the gateway
        bounds how many asks each client may have waiting)."""
        self._asks.append(_Ask(id, stream, question, max_new_tokens))

    def submit_past_ask(self, ask: messages.AskRequest) -> None:
        """Queue a question over the past: ``ask`` carries the stored captions to answer from (see
        :mod:`stream.textwork`; answered right after the asks about now)."""
        if self.text is None:
            raise RuntimeError("submit_past_ask: this scheduler has no text work")
        self.text.submit_past_ask(ask)

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
        if self._rules is not None:
            taken = set() if self._held is None else {self._held.stream.name}
            self._rules.close_ended(self.streams, taken | self.busy())
            if self._rules.due and self._room():  # the window just captioned: its alerts before anything else
                return self._start(self._rules.due.popleft())
        while True:
            if self._held is None:
                text = self._text_action(windows_first=True)
                if text is not None:
                    return text
                reply = self._take()
                if isinstance(reply, Extend):
                    return self._start(reply)
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
            idle = self._idle_encode(min_batch)
            return self._start(idle) if idle is not None else self._text_action(windows_first=False)

    def next_encode(self) -> Encode | None:
        """The frames waiting as pixels, encoded while a batch of captions is in flight (the local
        model's batched generation, :mod:`stream.inference`): no window, ask or text turn is handed
        out, so each waits for the batch and is then taken newest, its frames already encoded."""
        if self._current is not None:
            raise RuntimeError(
                f"next_encode: the result of {type(self._current).__name__} is not reported yet"
            )
        encode = self._idle_encode(1)
        self._start(encode)
        return encode

    def _start(self, action: Action | None) -> Action | None:
        if isinstance(action, Caption | Summarize):
            self._summary_waits = isinstance(action, Summarize)
        if self._tracked and isinstance(action, IN_FLIGHT):
            self._in_flight[id(action)] = action
        else:
            self._current = action
        return action

    def _text_action(self, *, windows_first: bool) -> Summarize | AnswerPast | Reply | None:
        """A question over the past (a person waits), else, once no ask about now waits, a summary
        turn, but never two in a row while a window may be due (``windows_first``): captions are not
        starved."""
        if self.text is None:
            return None
        busy = self.busy()
        for stream in self.streams.values():  # a stream's tail summary, once its last window is out
            if stream.ended and not stream.due and stream.name not in busy | self._text_ended:
                self._text_ended.add(stream.name)
                self.text.end_stream(stream.name)
        if not self._room():
            return None
        past = self.text.next_past_ask()
        if isinstance(past, messages.Answer):
            return Reply(past)
        turn: Summarize | AnswerPast | None = past
        summarizing = any(isinstance(a, Summarize) for a in self._in_flight.values())
        if (
            turn is None
            and not self._asks
            and not (windows_first and self._summary_waits)
            and not summarizing
        ):
            turn = self.text.next_summary()  # after the asks about now
        self._start(turn)
        return turn

    def _take(self) -> Reply | Extend | None:
        """Hold the next ask, else the next window (streams in turn, busy ones left waiting); a Reply
        for an unanswerable ask, an Extend for a window whose scene did not change (it needs no
        encode: it is not held)."""
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
                change = stream.unchanged_change(job)
                if change is not None:
                    return Extend(stream.name, job.index - 1, job, job.frames, change)
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
        stream.candidate = stream.signatures_for(frames)  # the reference, once captioned
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

    def encoded(self, action: Encode, embeddings: Sequence[Any | None], *, ms: float) -> None:
        """The embeddings of ``action.frames``, in order; ``ms``: how long the vision call took. None
        for a frame the model could not encode: it is lost, as if its pixels were (counted, left out
        of its windows)."""
        if len(embeddings) != len(action.frames):
            raise ValueError(f"encoded: {len(embeddings)} embeddings for {len(action.frames)} frames")
        self._finish(action)
        for frame, embedding in zip(action.frames, embeddings, strict=True):
            if embedding is None:
                self.streams[frame.stream].counters.missing_frames += 1
            else:
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
        # A window captioned without every signature (gating off, a frame without one) is no reference,
        # and neither is any older one: an unchanged caption must never repeat a superseded text.
        stream.reference = (
            None
            if stream.candidate is None
            else Reference(stream.candidate, action.job.t_start, frames[0].wall, text)
        )
        stream.candidate = None
        latency_ms = round((wall - frames[-1].wall) * 1000, 1)
        c = stream.counters
        c.captions += 1
        c.last_latency_ms = latency_ms
        c.last_model_ms = round(model_ms, 1)
        stream.sweep()
        caption = messages.Caption(
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
        if self.text is not None:
            self.text.caption(caption)
        if self._rules is not None:
            self._rules.window_out(caption, action.job, action.frames, action.embeddings)
        return caption

    def extended(self, action: Extend, *, wall: float) -> messages.Caption:
        """The ``caption`` message of an unchanged window, published at ``wall``: the last caption's
        text and start, this window's end and frames, ``unchanged`` set; counted in ``unchanged``."""
        self._finish(action)
        stream = self.streams[action.stream]
        reference = stream.reference
        assert reference is not None  # an Extend is only made against a reference
        frames = action.frames
        skipped = max(0, action.seq - stream.last_seq - 1)
        stream.last_seq = action.seq
        stream.last_t_end = action.job.t_end
        stream.counters.unchanged += 1
        caption = messages.Caption(
            stream=stream.name,
            seq=action.seq,
            t_start=round(reference.t_start, 3),
            t_end=round(action.job.t_end, 3),
            frame_times=[round(f.t, 3) for f in frames],
            wall_start=reference.wall_start,
            wall_end=frames[-1].wall,
            text=reference.text,
            model=self.model,
            latency_ms=round((wall - frames[-1].wall) * 1000, 1),
            skipped=skipped,
            frames=len(frames),
            unchanged=True,
        )
        if self._rules is not None:
            # Rules with on_unchanged: the scene is the one already captioned, so the window's frames
            # that are encoded by now stand for it (an Extend never waits for an encode).
            used, embeddings = stream.embeddings_for(frames)
            self._rules.window_out(caption, action.job, tuple(used), tuple(embeddings))
        if self.text is not None:
            self.text.caption(caption)
        stream.sweep()
        return caption

    def caption_failed(self, action: Caption, reason: str | None = None) -> int:
        """The model refused this window (e.g. a prompt over its input limit, a server's 400):
        counted in ``caption_errors`` (``reason`` shown as ``last_caption_error``), whose new value
        is returned (the caller logs the first loudly)."""
        self._finish(action)
        stream = self.streams[action.stream]
        stream.candidate = None
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

    def summarized(self, action: Summarize, text: str) -> messages.Summary | None:
        """A summary turn's text: the ``summary`` message once it was the last turn, else None."""
        self._finish(action)
        assert self.text is not None
        return self.text.summarized(action, text)

    def summary_failed(self, action: Summarize) -> None:
        """The model refused a summary turn (a prompt over its input): that summary is given up."""
        self._finish(action)
        assert self.text is not None
        self.text.summary_failed(action)

    def past_answered(self, action: AnswerPast, text: str) -> messages.Answer:
        """The ``answer`` (with ``from``, ``to``, ``captions``) of a question over the past."""
        self._finish(action)
        return TextWork.past_answered(action, text)

    def past_answer_failed(self, action: AnswerPast, reason: str) -> messages.Answer:
        self._finish(action)
        return TextWork.past_answer_failed(action, reason)

    @staticmethod
    def _error_answer(ask: _Ask, code: ErrorCode, reason: str) -> messages.Answer:
        return messages.Answer(id=ask.id, stream=ask.stream, text="", error=code, message=reason)

    def _no_frames(self, ask: _Ask) -> messages.Answer:
        return self._error_answer(
            ask, ErrorCode.NO_FRAMES, f"stream {ask.stream} has no frames to look at yet"
        )

    # -- alert rules (stream.rulework) -------------------------------------------------------------
    def add_thumbnail(self, stream: str, t: float, jpeg: str) -> None:
        """A base64 JPEG of ``stream``'s frame at stream time ``t``: an event's ``start`` carries the
        one of its window's newest frame (the last few per stream are kept)."""
        if self._rules is not None:
            self._rules.add_thumbnail(stream, t, jpeg)

    def rules_evaluated(self, action: EvaluateRules, scores: Sequence[float], *, model_ms: float) -> None:
        """P(yes) of each of ``action.rules``, in order, from one model call of ``model_ms``."""
        assert self._rules is not None
        if len(scores) != len(action.rules):
            raise ValueError(f"rules_evaluated: {len(scores)} scores for {len(action.rules)} rules")
        self._finish(action)
        self._rules.evaluated(action, scores, model_ms=model_ms)

    def rules_failed(self, action: EvaluateRules) -> int:
        """The model refused to score the window (e.g. over its input limit): the rules' state stays
        as it was. Returns the stream's ``rule_errors`` (the caller logs the first loudly)."""
        assert self._rules is not None
        self._finish(action)
        return self._rules.failed(action)

    def take_events(self) -> list[messages.Event]:
        """The ``event`` messages made since the last call, in order (to publish)."""
        return [] if self._rules is None else self._rules.take_events()

    def stop_alerts(self) -> list[messages.Event]:
        """The run stops: the ``end`` of every event still open (with what the outbox still held)."""
        return [] if self._rules is None else self._rules.stop()

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        """Per stream: the figures of the ``inference_status`` message (with alert rules: the
        ``rules_ms`` per rule and ``rules_model_ms`` of the last batched pass, ``rule_windows``
        scored, ``rule_errors``, and ``open_events``)."""
        figures = {name: stream.status() for name, stream in self.streams.items()}
        if self._rules is not None:
            self._rules.add_status(figures)
        return figures
