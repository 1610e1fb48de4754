"""The inference process: one per GPU, serving every source of the run.

Two threads share the per-stream :class:`~stream.captioning.StreamWorker` state:

* the **frame tap** polls every source's shared-memory ring (headers only: pixels are copied out
  only for the frames the 1-fps sampler keeps), queues kept frames for encoding, publishes their
  thumbnails, and notices a source that ended;
* the **model loop** (main thread) answers asks first (a person is waiting), then encodes every
  queued frame in one batched vision call, then captions the next window (streams in turn, newest
  window first, older ones skipped and counted), and publishes ``caption``/``partial``/``answer``
  and, at ~1 Hz, ``inference_status``.

The tap never waits for the model, so sampling stays on time while a caption is being generated.
A model that cannot be loaded (no weights, bad checkpoint) is a configuration error: the process
exits with :attr:`~stream.process.ExitCode.CONFIG` and the supervisor stops the run instead of
restarting it forever.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import messages
from .bus import AskReceiver, LockedPublisher, Publisher, RunPaths
from .captioning import Captioner, CaptionSettings, StreamWorker
from .process import ExitCode, signal_handled, write_ready_file
from .ring import FrameRing

log = logging.getLogger(__name__)

READY_FILE = "inference.ready"  # written in the run directory once the model is loaded
# Written in the run directory once every source has ended and its last window is captioned: a run
# of files without --loop stops then (stream.runwatch).
DRAINED_FILE = "inference.drained"

_TAP_IDLE_S = 0.01
_STATUS_EVERY_S = 1.0
_PARTIAL_EVERY_S = 0.1
_THUMBNAIL_EVERY_S = 1.0


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
    stream_captions: dict[str, CaptionSettings] = field(default_factory=dict)
    stream_tokens: bool = False
    thumbnails: bool = True
    thumbnail_side: int = 320
    max_inp_length: int = 8192


def thumbnail_jpeg(image: np.ndarray, side: int, quality: int = 70) -> str:
    """A small JPEG of an RGB frame, base64-encoded for a JSON message."""
    picture = Image.fromarray(image)
    picture.thumbnail((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return base64.b64encode(out.getvalue()).decode("ascii")


class FrameTap(threading.Thread):
    """Feeds ring frames to the stream workers (see the module docstring)."""

    def __init__(
        self,
        workers: dict[str, StreamWorker],
        ring_names: dict[str, str],
        bus: LockedPublisher,
        options: InferenceOptions,
        wake: threading.Event,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="frame-tap", daemon=True)
        self.workers = workers
        self.ring_names = ring_names
        self.bus = bus
        self.options = options
        self.wake = wake
        self.stop = stop
        self.rings: dict[str, FrameRing | None] = dict.fromkeys(ring_names)
        self.cursor: dict[str, int] = dict.fromkeys(ring_names, -1)
        self.last_thumbnail: dict[str, float] = dict.fromkeys(ring_names, 0.0)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not any([self._poll(name) for name in self.ring_names]):
                    self.stop.wait(_TAP_IDLE_S)
        except BaseException as exc:  # surfaced by the model loop, which exits with an error
            self.error = exc
            log.exception("frame tap failed")
            self.stop.set()
        finally:
            for ring in self.rings.values():
                if ring is not None:
                    ring.close()

    def _ring(self, name: str) -> FrameRing | None:
        ring = self.rings[name]
        if ring is None:
            try:
                ring = FrameRing.attach(self.ring_names[name])
            except FileNotFoundError:
                return None  # the supervisor creates rings first; tests may attach late
            self.rings[name] = ring
        return ring

    def _poll(self, name: str) -> bool:
        """Take the new frames of one stream; True if there were any."""
        ring = self._ring(name)
        if ring is None:
            return False
        worker = self.workers[name]
        head = ring.head_seq
        cursor = self.cursor[name]
        if head <= cursor:
            if ring.ended and not worker.ended and head == cursor:
                with worker.lock:
                    worker.finish()
                self.wake.set()
            return False
        first = max(cursor + 1, head - ring.slots + 1)
        for seq in range(first, head + 1):
            info = ring.info(seq)
            if info is None:
                continue  # overwritten before we looked: the sampler sees a gap
            pts, wall = info.pts, info.wall
            kept: dict[str, np.ndarray] = {}

            def read_pixels(seq: int = seq, kept: dict[str, np.ndarray] = kept) -> np.ndarray | None:
                frame = ring.read(seq)
                if frame is None:
                    return None
                kept["image"] = frame.image
                return frame.image

            with worker.lock:
                sample = worker.offer(seq, pts, wall, read_pixels)
            if sample is not None and "image" in kept:
                self.wake.set()
                self._thumbnail(name, sample.t, wall, kept["image"])
        self.cursor[name] = head
        with worker.lock:
            if worker.due:
                self.wake.set()
        return True

    def _thumbnail(self, name: str, t: float, wall: float, image: np.ndarray) -> None:
        if not self.options.thumbnails:
            return
        now = time.monotonic()
        if now - self.last_thumbnail[name] < _THUMBNAIL_EVERY_S:
            return
        self.last_thumbnail[name] = now
        jpeg = thumbnail_jpeg(image, self.options.thumbnail_side)
        self.bus.send(
            messages.Thumbnail(
                stream=name,
                t=round(t, 3),
                wall=wall,
                jpeg=jpeg,
                width=int(image.shape[1]),
                height=int(image.shape[0]),
            )
        )


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


def load_caption_backend(options: InferenceOptions) -> Any:
    from model.backends import load_backend  # heavy (torch): only the inference process pays for it

    device = None if options.device == "auto" else options.device
    dtype = None if options.dtype == "auto" else options.dtype
    return load_backend(options.model, device=device, dtype=dtype, max_inp_length=options.max_inp_length)


class _LoadAborted(BaseException):
    """SIGTERM (the supervisor stopping the run) arrived while the model was loading."""


def _abort_loading(_signum: int, _frame: Any) -> None:
    """Loading the real model takes minutes and checks no stop event: while it runs, SIGTERM aborts
    it at once instead of being noticed after the load (and the supervisor's kill after 5 s)."""
    raise _LoadAborted


def inference_main(
    options: InferenceOptions,
    stop_event: Any,
    backend_factory: Callable[[InferenceOptions], Any] = load_caption_backend,
) -> int:
    """Process entry (see the module docstring). Returns the exit code."""
    from model.errors import CheckpointError

    run = RunPaths(run_id=options.run_id, run_dir=Path(options.run_dir))
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    publisher.wait_for_subscriber(1.0)  # a model that fails at once must still be heard saying why
    bus = LockedPublisher(publisher)
    asks = AskReceiver(run.asks_endpoint)
    status_base = {"model": options.model, "device": options.device}
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
        write_ready_file(Path(options.run_dir) / READY_FILE, str(os.getpid()))
        return ModelLoop(options, backend, bus, asks, stop_event, status_base).run()
    finally:
        asks.close()
        bus.close()


class ModelLoop:
    """The main thread of the inference process (see the module docstring)."""

    def __init__(
        self,
        options: InferenceOptions,
        backend: Any,
        bus: LockedPublisher,
        asks: AskReceiver,
        stop_event: Any,
        status_base: dict[str, str],
    ) -> None:
        self.options = options
        self.bus = bus
        self.asks = asks
        self.stop_event = stop_event
        self.status_base = status_base
        backend.set_interrupt(stop_event.is_set)  # Ctrl-C ends a caption mid-generation
        self.captioner = Captioner(backend, options.captions)
        for name in options.streams:
            self.captioner.add_stream(name)
        self.wake = threading.Event()
        self.tap_stop = threading.Event()
        self.tap = FrameTap(self.captioner.workers, options.streams, bus, options, self.wake, self.tap_stop)
        self._last_status = 0.0

    def run(self) -> int:
        self.tap.start()
        drained = False
        try:
            self._publish_status(force=True)
            while not self.stop_event.is_set() and not self.tap_stop.is_set():
                did = self._answer_asks()
                did += self.captioner.encode_pending()
                job = self.captioner.next_job()
                if job is not None:
                    self._caption(*job)
                    did += 1
                self._publish_status()
                if not did and not drained and self._drained():
                    drained = True
                    write_ready_file(Path(self.options.run_dir) / DRAINED_FILE, str(os.getpid()))
                if not did:
                    self.wake.wait(0.05)
                    self.wake.clear()
        finally:
            self.tap_stop.set()
            self.tap.join(timeout=2.0)
        if self.tap.error is not None:
            return ExitCode.FAILED
        return ExitCode.OK

    def _drained(self) -> bool:
        """Every source ended and nothing of it is left to caption (captions are made in this thread:
        the last one is published by now)."""
        for worker in self.captioner.workers.values():
            with worker.lock:
                if not worker.ended or worker.due:
                    return False
        return True

    def _caption(self, worker: StreamWorker, job: Any) -> None:
        on_text = None
        if self.options.stream_tokens:
            on_text = PartialPublisher(self.bus, worker.name, job.index - 1)
        try:
            message = self.captioner.caption(worker, job, on_text=on_text)
        except ValueError as exc:
            # The model refused this window (e.g. a prompt over max_inp_length): the next window may
            # well work, and a restart would only reload the model to fail the same way.
            with worker.lock:
                worker.counters.caption_errors += 1
                first = worker.counters.caption_errors == 1
            (log.error if first else log.debug)(
                "stream %s: window %.1f-%.1f s not captioned: %s", worker.name, job.t_start, job.t_end, exc
            )
            return
        if message is not None and not self.stop_event.is_set():  # else cut short by shutdown
            self.bus.send(message)

    def _answer_asks(self) -> int:
        handled = 0
        for ask in self.asks.poll():
            handled += 1
            ask_id, stream = ask.id, ask.stream
            worker = self.captioner.workers.get(stream)
            if worker is None:
                self.bus.send(
                    messages.Answer(
                        id=ask_id,
                        stream=stream,
                        text="",
                        error=messages.ErrorCode.UNKNOWN_STREAM,
                        message=f"no stream named {stream!r} in this run",
                    )
                )
                continue
            self.captioner.encode_pending()  # the newest frames belong in the answer
            try:
                text, frames = self.captioner.answer(worker, ask.question)
            except LookupError as exc:
                self.bus.send(
                    messages.Answer(
                        id=ask_id,
                        stream=stream,
                        text="",
                        error=messages.ErrorCode.NO_FRAMES,
                        message=str(exc),
                    )
                )
                continue
            except ValueError as exc:  # the model refused this question: the asker hears why
                log.warning("stream %s: ask %r not answered: %s", stream, ask_id, exc)
                self.bus.send(
                    messages.Answer(
                        id=ask_id,
                        stream=stream,
                        text="",
                        error=messages.ErrorCode.MODEL_ERROR,
                        message=str(exc),
                    )
                )
                continue
            self.bus.send(
                messages.Answer(
                    id=ask_id,
                    stream=stream,
                    text=text,
                    t_start=round(frames[0].t, 3),
                    t_end=round(frames[-1].t, 3),
                    frame_times=[round(f.t, 3) for f in frames],
                )
            )
        return handled

    def _publish_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < _STATUS_EVERY_S:
            return
        self._last_status = now
        streams = {}
        for name, worker in self.captioner.workers.items():
            with worker.lock:
                streams[name] = worker.status()
        self.bus.send(
            messages.InferenceStatus(
                streams=streams, wall=time.time(), state=messages.ModelState.READY, **self.status_base
            )
        )
