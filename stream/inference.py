"""The inference process: one per GPU, serving every source of the run (with ``[model] devices``,
one per entry, each serving the sources :mod:`stream.placement` gives it).

The shell around the scheduling core (:class:`~stream.scheduler.Scheduler`, which decides what to
do and keeps every per-stream figure): this module owns the threads, the ring reads, the model calls,
the one lock and the publishing.

* The **frame tap** (a thread, :mod:`stream.frametap`) polls every source's shared-memory ring
  (headers only: pixels are copied out only for the frames the core keeps), gives the core each
  frame's stream time and, for a kept frame, its pixels and change signature (:mod:`stream.change`),
  publishes thumbnails, and tells the core when a source ended.
* The **model loop** (main thread) hands the core the asks that came in, then asks it for the next
  action and runs it on the model (encode a batch, caption a window, answer an ask, a turn of a live
  summary, answer a question over the past from the stored captions its ask carries), outside the lock,
  so the tap never waits for the model and sampling stays on time while a caption is generated. It
  publishes ``caption``/``partial``/``answer``/``summary`` and, at ~1 Hz, ``inference_status``.

Both threads use the core only through :class:`~stream.frametap.SharedScheduler`, the one place its
lock is taken.
A backend that serves several requests at once (a remote server: ``max_concurrency`` above 1) gets
its model calls (captions, answers, alert-rule scoring, summary turns, questions over the past: the
core's :data:`~stream.scheduler.IN_FLIGHT`) run on a pool of that many threads, so a slow request holds
only its own stream (the core keeps one per stream) and never the model loop; encodes still run on the
model loop itself. The
local model instead captions the due windows of up to ``max_batch`` streams in one batched
generation (:meth:`ModelLoop._caption_batch`), on a thread of its own: meanwhile the model loop
encodes the frames that come in (:meth:`~stream.scheduler.Scheduler.next_encode`), so the vision
model runs beside the language model instead of between its batches; windows and asks wait for the
batch, and are then taken newest, their frames ready.
A model that cannot be loaded (no weights, bad checkpoint) is a configuration error: the process
exits with :attr:`~stream.process.ExitCode.CONFIG` and the supervisor stops the run instead of
restarting it forever.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.backends import CaptionBackend

from . import messages
from .actions import Action, Answer, Caption, Encode, EvaluateRules, Extend, run_captions
from .alertrules import AlertRule
from .alerts import AlertCore
from .bus import AskReceiver, LockedPublisher, Publisher, RunPaths
from .captioning import CaptionSettings
from .config import RemoteConfig, is_remote_model
from .frametap import FrameTap, SharedScheduler
from .placement import INFERENCE_ROLE, role_suffix
from .process import ExitCode, signal_handled, write_ready_file
from .scheduler import IN_FLIGHT, Scheduler
from .summaries import token_counter
from .textwork import AnswerPast, Summarize, TextSettings, TextWork

log = logging.getLogger(__name__)

READY_FILE = "inference.ready"  # written in the run directory once the model is loaded
# Written in the run directory once every source has ended and its last window is captioned: a run
# of files without --loop stops then (stream.runwatch).
DRAINED_FILE = "inference.drained"


def ready_file(role: str) -> str:
    """:data:`READY_FILE` of the inference process with this role (``inference-I.ready`` for
    ``inference:I`` when ``[model] devices`` starts several)."""
    return READY_FILE.replace("inference", f"inference{role_suffix(role)}", 1)


def drained_file(role: str) -> str:
    """:data:`DRAINED_FILE` of the inference process with this role."""
    return DRAINED_FILE.replace("inference", f"inference{role_suffix(role)}", 1)


_IDLE_WAIT_S = 0.05  # the model loop with nothing to do waits this long for the tap (or an ask)
_STATUS_EVERY_S = 1.0
_PARTIAL_EVERY_S = 0.1


@dataclass(frozen=True)
class InferenceOptions:
    """Everything the inference process needs; picklable for the ``spawn`` start method."""

    run_id: str
    run_dir: str
    streams: dict[str, str]  # stream name -> ring name
    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    captions: CaptionSettings = field(default_factory=lambda: CaptionSettings(prompt="Describe the video."))
    stream_captions: dict[str, CaptionSettings] = field(default_factory=dict)  # per stream; else captions
    stream_tokens: bool = False
    thumbnails: bool = True
    thumbnail_side: int = 320
    max_inp_length: int = 8192
    max_batch: int = 1  # due windows of different streams captioned in one generation (local model)
    alerts: tuple[AlertRule, ...] = ()  # alert rules, scored on every captioned window
    text: TextSettings = field(default_factory=TextSettings)  # live summaries, questions over the past
    remote: RemoteConfig = field(default_factory=RemoteConfig)  # when ``model`` is a server's URL
    # ``inference:I`` when ``[model] devices`` starts several: its endpoints, files and reports.
    role: str = INFERENCE_ROLE
    # CPU threads of the model (0: torch's default, every core); set when several processes share the CPU.
    threads: int = 0


class PartialPublisher:
    """Turns token pieces into throttled ``partial`` messages (at most one per 100 ms)."""

    def __init__(self, bus: LockedPublisher, stream: str, seq: int) -> None:
        self.bus, self.stream, self.seq = bus, stream, seq
        self.text = ""
        self._last = 0.0

    def __call__(self, piece: str) -> None:
        self.text += piece
        now = time.monotonic()
        if now - self._last >= _PARTIAL_EVERY_S:
            self._last = now
            self.bus.send(messages.Partial(stream=self.stream, seq=self.seq, text=self.text))


def load_caption_backend(options: InferenceOptions) -> CaptionBackend:
    if is_remote_model(options.model):
        return connect_remote(options.model, options.remote)
    from model.backends import load_backend  # heavy (torch): only the inference process pays for it

    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    device = None if options.device == "auto" else options.device
    dtype = None if options.dtype == "auto" else options.dtype
    return load_backend(options.model, device=device, dtype=dtype, max_inp_length=options.max_inp_length)


def connect_remote(url: str, remote: RemoteConfig) -> Any:
    """The :class:`~model.remote.RemoteBackend` for ``[model] name = URL`` and ``[model.remote]``;
    a ``ServerSetupError`` (a ValueError) in one line when the server cannot be used."""
    from model.remote import RemoteBackend

    return RemoteBackend.connect(
        url,
        model=remote.model,
        api_key=remote.resolved_api_key(),
        timeout=remote.timeout,
        max_concurrency=remote.max_concurrency,
        max_images=remote.max_images,
        image_side=remote.image_side,
        jpeg_quality=remote.jpeg_quality,
    )


class _LoadAborted(BaseException):
    """SIGTERM (the supervisor stopping the run) arrived while the model was loading."""


def _abort_loading(_signum: int, _frame: Any) -> None:
    """Loading the real model takes minutes and checks no stop event: while it runs, SIGTERM aborts
    it at once instead of being noticed after the load (and the supervisor's kill after 5 s)."""
    raise _LoadAborted


def inference_main(
    options: InferenceOptions,
    stop_event: Any,
    backend_factory: Callable[[InferenceOptions], CaptionBackend] = load_caption_backend,
) -> int:
    """Process entry (see the module docstring). Returns the exit code."""
    from model.errors import CheckpointError

    run = RunPaths(run_id=options.run_id, run_dir=Path(options.run_dir))
    publisher = Publisher(run.publisher_endpoint(options.role), own_context=True)
    publisher.wait_for_subscriber(1.0)  # a model that fails at once must still be heard saying why
    bus = LockedPublisher(publisher)
    asks = AskReceiver(run.asks_endpoint_for(options.role))
    status_base: dict[str, Any] = {"model": options.model, "device": options.device, "role": options.role}
    try:
        bus.send(
            messages.InferenceStatus(
                streams={}, wall=time.time(), state=messages.ModelState.LOADING, **status_base
            )
        )
        try:
            with signal_handled(signal.SIGTERM, _abort_loading):
                backend = backend_factory(options)
        except _LoadAborted:
            log.info("stopped while loading the model")
            return 0
        except (CheckpointError, FileNotFoundError, ValueError) as exc:  # ValueError: device or dtype
            log.error("cannot load model %s: %s", options.model, exc)
            bus.send(
                messages.InferenceStatus(
                    streams={},
                    wall=time.time(),
                    state=messages.ModelState.FAILED,
                    error=str(exc),
                    **status_base,
                )
            )
            return ExitCode.CONFIG
        status_base["device"] = str(getattr(getattr(backend, "model", None), "device", options.device))
        if is_remote_model(options.model):
            status_base["device"] = "remote"  # the server's devices are its own business
        write_ready_file(Path(options.run_dir) / ready_file(options.role), str(os.getpid()))
        return ModelLoop(options, backend, bus, asks, stop_event, status_base).run()
    finally:
        asks.close()
        bus.close()


class ModelLoop:
    """The main thread of the inference process (see the module docstring)."""

    def __init__(
        self,
        options: InferenceOptions,
        backend: CaptionBackend,
        bus: LockedPublisher,
        asks: AskReceiver,
        stop_event: Any,
        status_base: dict[str, Any],
    ) -> None:
        self.options = options
        self.backend = backend
        self.bus = bus
        self.asks = asks
        self.stop_event = stop_event
        self.status_base = status_base
        alerts = AlertCore(options.alerts, run_id=options.run_id) if options.alerts else None
        text = TextWork(options.text, token_counter(backend), options.max_inp_length)
        self.workers = max(1, int(getattr(backend, "max_concurrency", 1)))
        # A local model captions several streams' due windows in one batched generation (up to
        # max_batch; 1: one at a time) on a thread of its own, encoding beside it (see _caption_batch).
        local = hasattr(backend, "describe_batch") and self.workers == 1
        self.max_batch = options.max_batch if local else 1
        core = Scheduler(
            options.captions,
            stream_settings=options.stream_captions,
            model=backend.name,
            alerts=alerts,
            text=text,
            max_in_flight=max(self.workers, self.max_batch),
            pipelined=local,
        )
        for name in options.streams:
            core.add_stream(name)
        self.shared = SharedScheduler(core)
        self.wake = threading.Event()
        self.tap_stop = threading.Event()  # set as the model loop stops, for any reason
        backend.set_interrupt(self._stopping)  # Ctrl-C ends a caption mid-generation
        self.tap = FrameTap(self.shared, options.streams, bus, options, self.wake, self.tap_stop)
        self._last_status = 0.0
        self.pool = ThreadPoolExecutor(self.workers, "remote") if self.workers > 1 else None
        # The local model's batched generation runs on a thread of its own, so that the frames coming
        # in meanwhile are encoded beside it (see _caption_batch).
        self.generation = ThreadPoolExecutor(1, "batch") if local else None
        self.generating: Future[None] | None = None
        self.running: set[Future[None]] = set()  # pooled actions whose messages are not all sent yet
        self.error: BaseException | None = None

    def run(self) -> int:
        self.tap.start()
        drained = False
        try:
            self._publish_status(force=True)
            while not self.stop_event.is_set() and not self.tap_stop.is_set():
                self.wake.clear()
                asks = self.asks.poll()
                with self.shared.use() as core:
                    for ask in asks:
                        if ask.captions is not None:
                            core.submit_past_ask(ask)
                        else:
                            core.submit_ask(ask.id, ask.stream, ask.question)
                    # While a batch generates, only the frames that came in are encoded: windows and
                    # asks wait for it, and are then taken newest with their frames ready.
                    action = core.next_encode() if self.generating is not None else core.next_action()
                    events = core.take_events()
                    idle_and_drained = action is None and not drained and core.drained() and not self.running
                for event in events:
                    self.bus.send(event)
                if action is not None and self.pool is not None and isinstance(action, IN_FLIGHT):
                    future = self.pool.submit(self._perform, action)
                    self.running.add(future)
                    future.add_done_callback(self._done)
                elif isinstance(action, Caption) and self.generation is not None:
                    self._caption_batch(action)
                elif action is not None:
                    self._perform(action)
                self._publish_status()
                if idle_and_drained:  # the last caption is published: by this thread or a finished pooled one
                    drained = True
                    write_ready_file(
                        Path(self.options.run_dir) / drained_file(self.options.role), str(os.getpid())
                    )
                if action is None:
                    self.wake.wait(_IDLE_WAIT_S)
        finally:
            self.tap_stop.set()
            # No start is left without its end; published first thing, while the recorder still reads.
            with self.shared.use() as core:
                events = core.stop_alerts()
            for event in events:
                self.bus.send(event)
            self.tap.join(timeout=2.0)
            if self.pool is not None:
                # Not waited for: a request blocked reading a slow server cannot be woken (the stop
                # check runs between pieces), and its result is not published after a stop anyway;
                # the process leaves with os._exit, which waits for no thread.
                self.pool.shutdown(wait=False, cancel_futures=True)
            if self.generation is not None:  # a batch in progress ends at its next token: waited for
                self.generation.shutdown(wait=True, cancel_futures=True)
        if self.tap.error is not None or self.error is not None:
            return ExitCode.FAILED
        return ExitCode.OK

    def _done(self, future: Future[None]) -> None:
        """A pooled model call finished: the model loop may hand out the next (or, on a bug, stop
        the process as a failure of the model loop itself would)."""
        self.running.discard(future)
        error = future.exception() if not future.cancelled() else None
        if error is not None and not self.stop_event.is_set():
            log.error("a model call on the request pool failed", exc_info=error)
            self.error = error
            self.tap_stop.set()
        self.wake.set()

    def _stopping(self) -> bool:
        return self.stop_event.is_set() or self.tap_stop.is_set()

    def _generated(self, future: Future[None]) -> None:
        self.generating = None  # before the wake: the model loop may take windows again
        self._done(future)

    def _backend_for(self, stream: str) -> CaptionBackend:
        """The backend, sending ``stream`` as the request's ``user`` where it can (a remote server's
        router keeps a camera on one replica with it)."""
        for_user = getattr(self.backend, "for_user", None)
        return for_user(stream) if for_user is not None else self.backend

    def _perform(self, action: Action) -> None:
        """Run one action on the model, outside the lock, and report its result to the core."""
        if isinstance(action, Encode):
            started = time.monotonic()
            embeddings = action.run_each_on(self.backend)  # one bad frame loses only itself
            with self.shared.use() as core:
                core.encoded(action, embeddings, ms=(time.monotonic() - started) * 1000)
        elif isinstance(action, Caption):
            self._caption(action)
        elif isinstance(action, Extend):  # the scene did not change: no model call
            with self.shared.use() as core:
                message = core.extended(action, wall=time.time())
            self.bus.send(message)
        elif isinstance(action, Answer):
            self._answer(action)
        elif isinstance(action, EvaluateRules):
            self._evaluate(action)
        elif isinstance(action, Summarize):
            self._summarize(action)
        elif isinstance(action, AnswerPast):
            self._answer_past(action)
        else:
            self.bus.send(action.message)

    def _summarize(self, action: Summarize) -> None:
        try:
            text = action.run_on(self._backend_for(action.stream))
        except ValueError as exc:  # the model refused the turn: that summary is given up, not the run
            log.warning("stream %s: summary not made: %s", action.stream, exc)
            with self.shared.use() as core:
                core.summary_failed(action)
            return
        with self.shared.use() as core:
            message = core.summarized(action, text)
        if message is not None and not self.stop_event.is_set():
            self.bus.send(message)

    def _answer_past(self, action: AnswerPast) -> None:
        try:
            text = action.run_on(self._backend_for(action.stream))
        except ValueError as exc:
            log.warning("stream %s: ask %r over the past not answered: %s", action.stream, action.id, exc)
            with self.shared.use() as core:
                message = core.past_answer_failed(action, str(exc))
        else:
            with self.shared.use() as core:
                message = core.past_answered(action, text)
        self.bus.send(message)

    def _caption(self, action: Caption) -> None:
        on_text = (
            PartialPublisher(self.bus, action.stream, action.seq) if self.options.stream_tokens else None
        )
        started = time.monotonic()
        try:
            text = action.run_on(self._backend_for(action.stream), on_text)
        except ValueError as exc:
            # The model refused this window (e.g. a prompt over max_inp_length): the next window may
            # well work, and a restart would only reload the model to fail the same way.
            with self.shared.use() as core:
                errors = core.caption_failed(action, str(exc))
            job = action.job
            (log.error if errors == 1 else log.debug)(
                "stream %s: window %.1f-%.1f s not captioned: %s", action.stream, job.t_start, job.t_end, exc
            )
            return
        model_ms = (time.monotonic() - started) * 1000
        with self.shared.use() as core:
            message = core.captioned(action, text, model_ms=model_ms, wall=time.time())
        if not self._stopping():  # else cut short by shutdown
            self.bus.send(message)

    def _caption_batch(self, first: Caption) -> None:
        """``first`` and the other due windows the core hands out next (up to ``max_batch``, each of
        another stream), captioned in one generation per decoding setting. What the core hands out
        meanwhile is run at once (an encode a window waits for, an unchanged window, an ask), so the
        order of work stays the core's."""
        batch = [first]
        while len(batch) < self.max_batch:
            with self.shared.use() as core:
                action = core.next_action()
                events = core.take_events()
            for event in events:
                self.bus.send(event)
            if action is None:
                break
            if isinstance(action, Caption):
                batch.append(action)
            else:
                self._perform(action)
        assert self.generation is not None
        future = self.generation.submit(self._generate, batch)
        self.generating = future
        self.running.add(future)
        future.add_done_callback(self._generated)

    def _generate(self, batch: list[Caption]) -> None:
        """Caption ``batch`` (on the generation thread): one generation per decoding setting."""
        groups: dict[tuple[int, str], list[Caption]] = {}
        for action in batch:
            groups.setdefault((action.max_new_tokens, action.decoding), []).append(action)
        for group in groups.values():
            if len(group) == 1:
                self._caption(group[0])
                continue
            on_text = [
                PartialPublisher(self.bus, a.stream, a.seq) if self.options.stream_tokens else None
                for a in group
            ]
            started = time.monotonic()
            try:
                texts = run_captions(group, self.backend, on_text)
            except ValueError:  # a window the model refuses (before any text): each alone learns which
                for action in group:
                    self._caption(action)
                continue
            model_ms = (time.monotonic() - started) * 1000
            with self.shared.use() as core:
                done = [
                    core.captioned(a, t, model_ms=model_ms, wall=time.time())
                    for a, t in zip(group, texts, strict=True)
                ]
            if not self._stopping():  # else cut short
                for message in done:
                    self.bus.send(message)

    def _evaluate(self, action: EvaluateRules) -> None:
        started = time.monotonic()
        try:
            scores = action.run_on(self._backend_for(action.stream))
        except ValueError as exc:  # refused (e.g. over max_inp_length): the next window may work
            with self.shared.use() as core:
                errors = core.rules_failed(action)
            (log.error if errors == 1 else log.debug)(
                "stream %s: alert rules not scored on window %.1f-%.1f s: %s",
                action.stream,
                action.job.t_start,
                action.job.t_end,
                exc,
            )
            return
        with self.shared.use() as core:
            core.rules_evaluated(action, scores, model_ms=(time.monotonic() - started) * 1000)

    def _answer(self, action: Answer) -> None:
        try:
            text = action.run_on(self._backend_for(action.stream))
        except ValueError as exc:  # the model refused this question: the asker hears why
            log.warning("stream %s: ask %r not answered: %s", action.stream, action.id, exc)
            with self.shared.use() as core:
                message = core.answer_failed(action, str(exc))
        else:
            with self.shared.use() as core:
                message = core.answered(action, text)
        self.bus.send(message)

    def _publish_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < _STATUS_EVERY_S:
            return
        self._last_status = now
        with self.shared.use() as core:
            streams = core.status()
        backend_status = getattr(self.backend, "status", None)
        self.bus.send(
            messages.InferenceStatus(
                streams=streams,
                wall=time.time(),
                state=messages.ModelState.READY,
                backend=backend_status() if backend_status is not None else None,
                **self.status_base,
            )
        )
