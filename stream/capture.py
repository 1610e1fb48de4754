"""The capture process: read one source, stamp frames with stream time, write them into its ring.

:class:`Capture` is the I/O loop (usable in-process, which is how the tests drive it); :func:`capture_main`
is the process entry the supervisor spawns. States (published on every change, and about once a
second with counters)::

    connecting ──first frame──► live ──drop / error / stall──► lost ──backoff──► connecting ...
        │                        │
        └── file over, fatal first open, given up ──────────────────────────────► ended

* A **file** that ends -> ``ended`` (``SourceOptions.loop`` replays it as if live instead). A file
  that cannot be opened (missing, not a video, no decoder) -> ``ended`` with ``error``.
* A **live** source (network, webcam, screen) that ends, errors or stalls -> ``lost``, then reconnects
  with capped exponential backoff (``backoff_initial`` doubling to ``backoff_max``; reset once a
  connection delivered frames), forever unless ``max_reconnects``. PyAV sees a killed RTSP server as a
  plain end of stream, so for a live source the end *is* a drop. A connection refused is ``lost``
  too (the camera may come back); only an invalid source on the *first* attempt is fatal
  (:class:`~stream.errors.UnsupportedSource`: no decoder, no DISPLAY; :class:`~stream.errors.SourceNotFound`:
  no such /dev/videoN).
* **Stall watchdog**: a hung server (SIGSTOP, a cut cable) blocks inside PyAV until its read timeout
  fires, one to two ``read_timeout`` later; a webcam driver may block with no timeout at all. The
  reader therefore runs in its own thread; this loop
  watches it and declares ``lost`` when no frame arrived for ``stall_timeout`` seconds (default: the
  read timeout), abandons that reader (its late frames are discarded) and reconnects. The abandoned
  thread ends when PyAV's own timeout fires.

**Stream time.** The ring's ``pts`` is stream time, stamped here once by a
:class:`~stream.timeline.Timeline` (see its rules): seconds since the source's first frame, strictly
increasing across reconnects (a reconnect continues by the wall-clock gap) and across a restart of
this process (it resumes after the ring's newest frame). For live sources a pts jump of more than 10 s
beyond the wall-clock gap is a discontinuity too. ``wall`` is time.time() at decode.

**What is written** (``SourceOptions.decode``, ``[capture] decode``). ``"sampled"`` (the default):
only the frames the sampler keeps at ``sample_fps`` (``[sampler] fps``): the sampler's own rule
(:class:`~stream.sampler.SampleGrid`) runs here on every decoded frame's stream time, the others are
never converted, and a PyAV source skips decoding what the rule cannot keep (:mod:`stream.decodeplan`
says which, and how far a sample's time may move). ``"all"``: every frame, for other readers of the ring.

**Counters.** ``frames`` written to the ring; ``fps`` the source's frame rate over the last status
interval (what it sends, decoded or not: under ``"sampled"`` far more than what is written); ``decode_errors``
(corrupt packets skipped, over all connections); ``reconnects`` (attempts after a loss); ``drops``
(frames decoded but not written because they do not fit the ring's slots; a live ring's overwrites
are the readers' business, and a lossless ring makes capture wait instead).
"""

from __future__ import annotations

import logging
import multiprocessing.synchronize
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import zmq

from .bus import Publisher
from .decodeplan import Demand
from .errors import RingError, SourceError, SourceNotFound, SourceTimeout, UnsupportedSource
from .messages import CaptureStatus, StreamState
from .process import ExitCode
from .ring import SLOT_SPARE_BYTES, FrameRing
from .sources import (
    RGB_OVERRUN_BYTES,
    PendingFrame,
    SourceOptions,
    SourceSpec,
    VideoSource,
    open_source,
    parse_source,
)
from .timeline import Timeline

log = logging.getLogger(__name__)

# The supervisor does not restart a child that exits with it (the pipeline lists it in the capture
# child's fatal_codes): a source that cannot be opened will not open on the next try either.
EXIT_BAD_SOURCE = ExitCode.CONFIG
# How often the watchdog looks at the reader thread (a reader that ends wakes it at once). Each look
# costs the process CPU whether or not frames come: at 20 a second it was ~2 ms of CPU per second of
# stream, a tenth of what a sampled 1080p camera at a 1-s GOP costs in all; at 4 a second, ~0.8 ms.
POLL_S = 0.25
LOSSLESS_WAIT_S = 0.1  # a lossless write waits this long for readers before re-checking for a stop
ABANDON_JOIN_S = 1.0  # how long a stop waits for the reader to leave cleanly


# The states are the bus schema's (connecting, live, lost, ended): one definition for both sides.
CaptureState = StreamState


@dataclass
class CaptureStats:
    frames: int = 0
    fps: float = 0.0
    decode_errors: int = 0
    reconnects: int = 0
    drops: int = 0
    width: int = 0
    height: int = 0


class FrameWriter(Protocol):
    """What capture needs of a ring (``stream.ring.FrameRing`` is the real one). ``write`` returns the
    frame's seq, or -1 when a lossless ring had no room within ``timeout``. A writer that also has
    ``write_with(height, width, fill, pts, wall, *, timeout)`` (FrameRing does) gets each frame
    converted straight into its slot instead of converted and then copied."""

    @property
    def lossless(self) -> bool: ...

    def write(self, image: np.ndarray, pts: float, wall: float, *, timeout: float | None = None) -> int: ...

    def mark_ended(self, end: float | None = None) -> None: ...


@dataclass
class _Attempt:
    """What one connection's reader thread reports back to the watchdog."""

    generation: int
    started: float
    opened: bool = False
    finished: bool = False  # the iterator ended by itself
    finite: bool = False
    error: SourceError | None = None
    crash: BaseException | None = None  # a bug: re-raised by the watchdog
    frames: int = 0
    last_frame: float = 0.0
    decode_errors: int = 0


class Capture:
    """Runs one source into one ring until the source ends, a fatal error, or ``stop``.

    ``on_status`` receives every status message (see the module doc and :meth:`status`); it is
    called from the thread that called :meth:`run`, never from the reader thread.
    """

    def __init__(
        self,
        name: str,
        spec: SourceSpec,
        ring: FrameWriter,
        *,
        options: SourceOptions | None = None,
        on_status: Callable[[CaptureStatus], None] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        max_reconnects: int | None = None,
        stall_timeout: float | None = None,
        status_interval: float = 1.0,
        opener: Callable[[SourceSpec, SourceOptions], VideoSource] = open_source,
    ) -> None:
        self.name = name
        self.spec = spec
        self.options = options or SourceOptions()
        self._ring = ring
        self._lossless = bool(getattr(ring, "lossless", False))
        self._write_with: Callable[..., int] | None = getattr(ring, "write_with", None)
        # A FrameRing's slots are padded for converters that overrun the last row (DirectRGB).
        self._slots_padded = isinstance(ring, FrameRing) and SLOT_SPARE_BYTES >= RGB_OVERRUN_BYTES
        self._on_status = on_status
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_reconnects = max_reconnects
        default_stall = self.options.read_timeout
        if spec.kind == "screen":
            default_stall = max(default_stall, 3.0 / self.options.fps_hint)
        self.stall_timeout = stall_timeout if stall_timeout is not None else default_stall
        self.status_interval = status_interval
        self._opener = opener
        self.state = CaptureState.CONNECTING
        self.error: str | None = None
        self.retryable = False  # ended with an error that a later attempt might not hit (gave up)
        self.stats = CaptureStats()
        self._clock = Timeline(max_jump=10.0 if spec.live else None, resume=_newest(ring), name=name)
        # decode = "sampled": the sampling rule, run here on every decoded frame (stream.decodeplan)
        self._demand = Demand(self.options.sample_fps) if self.options.decode == "sampled" else None
        self._lock = threading.Lock()
        self._active: int | None = None  # generation whose frames are accepted
        self._generation = 0
        self._errors_done = 0  # decode errors of finished connections
        self._attempt: _Attempt | None = None
        self._last_status = 0.0
        self._fps_mark = (0.0, 0)  # (monotonic, frames) at the last fps measurement
        self._logged_drop = False

    # -- the watchdog loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event | multiprocessing.synchronize.Event) -> CaptureState:
        """Capture until the source ends or ``stop`` is set; returns the final state (``ended`` after
        a stop too). ``self.error`` then holds the reason if it ended because of an error (None
        after a stop or a source that ended normally)."""
        backoff = self.backoff_initial
        first = True
        outage = False  # an outage is logged as a warning once, its retries at INFO
        self._fps_mark = (time.monotonic(), 0)
        self._set_state(CaptureState.CONNECTING)
        try:
            while not stop.is_set():
                attempt = self._run_attempt(stop)
                if attempt is None:  # stopped
                    break
                if self._finished(attempt, first):
                    break
                first = False
                if self.max_reconnects is not None and self.stats.reconnects >= self.max_reconnects:
                    self._end(
                        f"gave up after {self.stats.reconnects} reconnects; last error: {self.error}",
                        retryable=True,
                    )
                    break
                if attempt.frames:
                    backoff = self.backoff_initial
                    outage = False
                level = logging.INFO if outage else logging.WARNING
                log.log(level, "%s: lost (%s); reconnecting in %.1f s", self.name, self.error, backoff)
                outage = True
                if self._wait(stop, backoff):
                    break
                backoff = min(backoff * 2.0, self.backoff_max)
                self.stats.reconnects += 1
                self._set_state(CaptureState.CONNECTING)
        finally:
            self._abandon()
        if self.state != CaptureState.ENDED:  # stopped: a clean end, whatever the last loss was
            self.state = CaptureState.ENDED
            self.error = None
            self._publish()
        return self.state

    def _finished(self, attempt: _Attempt, first: bool) -> bool:
        """Decide after a connection ended: True = state ended (stop), False = lost (reconnect)."""
        error = attempt.error
        if attempt.finished and (attempt.finite or not self.spec.live):
            self._end(None)
            return True
        if not self.spec.live:
            self._end(str(error) if error else f"{self.spec.label}: stopped delivering frames")
            return True
        if first and isinstance(error, (UnsupportedSource, SourceNotFound)):
            self._end(str(error))
            return True
        if error is None:
            label = f"{self.spec.kind} source {self.spec.label!r}"
            error = SourceError(f"{label}: stream ended (connection dropped)")
        self.error = str(error)
        self._set_state(CaptureState.LOST)
        return False

    def _run_attempt(self, stop: threading.Event | multiprocessing.synchronize.Event) -> _Attempt | None:
        """Start a reader thread for one connection and watch it; None if ``stop`` was set."""
        with self._lock:
            self._generation += 1
            attempt = _Attempt(self._generation, time.monotonic())
            self._attempt = attempt
            self._active = attempt.generation
            self._clock.new_segment()
            if self._demand is not None:
                self._demand.new_segment()
        reader = threading.Thread(
            target=self._read, args=(attempt,), name=f"capture-{self.name}", daemon=True
        )
        reader.start()
        while True:
            reader.join(POLL_S)
            now = time.monotonic()
            if attempt.crash is not None:
                self._abandon()
                raise attempt.crash
            if attempt.frames and self.state != CaptureState.LIVE:
                self.error = None
                self._set_state(CaptureState.LIVE)
            if not reader.is_alive():
                self._abandon()
                return attempt
            if stop.is_set():
                self._abandon()
                reader.join(ABANDON_JOIN_S)
                return None
            stalled = self._stalled(attempt, now)
            if stalled is not None:
                self._abandon()
                attempt.error = SourceTimeout(stalled)
                return attempt
            if now - self._last_status >= self.status_interval:
                self._publish()

    def _stalled(self, attempt: _Attempt, now: float) -> str | None:
        if not self.spec.live:
            return None  # a local file cannot hang like a network; real-time pacing sleeps on purpose
        label = f"{self.spec.kind} source {self.spec.label!r}"
        last = attempt.last_frame
        if self._demand is not None:  # a frame not decoded (decode = "sampled") is a sign of life too
            last = max(last, self._demand.last_arrival)
        if attempt.frames and now - last > self.stall_timeout:
            return f"{label}: no frame for {now - last:.1f} s (stalled)"
        limit = self.options.open_timeout + self.stall_timeout
        if not attempt.frames and now - attempt.started > limit:
            return f"{label}: no frame within {limit:.1f} s of connecting"
        return None

    def _abandon(self) -> None:
        """Stop accepting frames from the current reader (it may still be blocked in PyAV)."""
        with self._lock:
            self._active = None
            attempt = self._attempt
            if attempt is not None:
                self._errors_done += attempt.decode_errors
                self._attempt = None

    def _wait(self, stop: threading.Event | multiprocessing.synchronize.Event, seconds: float) -> bool:
        """Sleep ``seconds`` (sending status on time); True if ``stop`` was set meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return stop.is_set()
            if stop.wait(min(remaining, self.status_interval)):
                return True
            if time.monotonic() - self._last_status >= self.status_interval:
                self._publish()

    def _end(self, error: str | None, *, retryable: bool = False) -> None:
        self.error = error
        self.retryable = retryable
        if error:
            log.error("%s: %s", self.name, error)
        with self._lock:
            # The sampler downstream sees only the written frames: under decode = "sampled" the last of
            # them is a sample, short of where the file ends, so the end is said with the mark.
            self._ring.mark_ended(self._clock.end)
        self._set_state(CaptureState.ENDED)

    # -- the reader thread -----------------------------------------------------------------------
    def _read(self, attempt: _Attempt) -> None:
        source: VideoSource | None = None
        try:
            with self._opener(self.spec, self.options) as source:
                if self._demand is not None:
                    source.demand = self._demand
                attempt.opened = True
                attempt.finite = source.finite
                for frame in source.pending():
                    if not self._emit(attempt, frame, source.decode_errors):
                        return
                self._count_errors(attempt, source.decode_errors)
            attempt.finished = True
        except SourceError as exc:
            if source is not None:
                self._count_errors(attempt, source.decode_errors)
            attempt.error = exc
        except Exception as exc:  # a bug in a source: hand it to the watchdog thread, which re-raises
            attempt.crash = exc

    def _count_errors(self, attempt: _Attempt, decode_errors: int) -> None:
        with self._lock:
            if self._active == attempt.generation:
                attempt.decode_errors = decode_errors

    def _emit(self, attempt: _Attempt, frame: PendingFrame, decode_errors: int) -> bool:
        """Convert one frame into the ring; False when this reader has been abandoned.

        The lock makes "still the active reader?" and the write one step, so an abandoned reader
        never writes (and never touches a ring being closed). A lossless ring without room is
        retried in short waits with the lock released, so a stop is never held up by a slow reader.
        """
        t: float | None = None
        image = None
        timeout = LOSSLESS_WAIT_S if self._lossless else None
        while True:
            with self._lock:
                if self._active != attempt.generation:
                    return False
                attempt.decode_errors = decode_errors
                if t is None:
                    t = self._clock.stamp(frame.pts, frame.wall)
                    if t is None:
                        return True  # a repeated or reordered frame: not a new moment of the stream
                    if self._demand is not None and not self._demand.want(t, frame.pts, frame.gap):
                        attempt.last_frame = time.monotonic()
                        return True  # not a sample: never converted
                try:
                    if self._write_with is not None:  # converted straight into the slot
                        fill = (frame.fill_padded if self._slots_padded else None) or frame.fill
                        seq = self._write_with(
                            frame.height, frame.width, fill, t, frame.wall, timeout=timeout
                        )
                    else:
                        image = frame.to_video_frame().image if image is None else image
                        seq = self._ring.write(image, t, frame.wall, timeout=timeout)
                except RingError as exc:
                    self.stats.drops += 1
                    if not self._logged_drop:
                        self._logged_drop = True
                        log.warning("%s: frame dropped: %s", self.name, exc)
                    return True
                attempt.last_frame = time.monotonic()  # waiting on readers is not a stalled source
                if seq >= 0:
                    attempt.frames += 1
                    self.stats.frames += 1
                    self.stats.height, self.stats.width = frame.height, frame.width
                    return True

    # -- status ----------------------------------------------------------------------------------
    def _set_state(self, state: CaptureState) -> None:
        if state != self.state:
            log.info("%s: %s -> %s", self.name, self.state.value, state.value)
        self.state = state
        self._publish()

    def status(self) -> CaptureStatus:
        """The ``capture_status`` message for now (also refreshes ``stats.fps``)."""
        now = time.monotonic()
        with self._lock:
            attempt = self._attempt
            self.stats.decode_errors = self._errors_done + (attempt.decode_errors if attempt else 0)
            # The source's own rate, as under decode = "all": sampling changes what is written, not
            # what the camera sends.
            frames = self.stats.frames if self._demand is None else self._demand.source_frames
        mark_time, mark_frames = self._fps_mark
        if now - mark_time >= 0.5 * self.status_interval:
            self.stats.fps = round((frames - mark_frames) / (now - mark_time), 2)
            self._fps_mark = (now, frames)
        if self.state != CaptureState.LIVE and not (attempt and attempt.frames):
            self.stats.fps = 0.0
        return CaptureStatus(
            stream=self.name, state=self.state, **asdict(self.stats), error=self.error, wall=time.time()
        )

    def _publish(self) -> None:
        self._last_status = time.monotonic()
        message = self.status()
        if self._on_status is not None:
            self._on_status(message)


def _newest(ring: FrameWriter) -> tuple[float, float] | None:
    """(stream time, wall) of a ring's newest frame, for a restarted capture to continue after."""
    if not isinstance(ring, FrameRing) or ring.head_seq < 0:
        return None
    info = ring.info(ring.head_seq)
    return None if info is None else (info.pts, info.wall)


def _install_signal_handlers(stop_event: Any) -> None:
    """SIGTERM/SIGINT set ``stop_event`` (clean stop). A signal already ignored (the supervisor's
    children ignore SIGINT on purpose, see ``stream.process``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        signal.signal(signum, lambda _sig, _frame: stop_event.set())


def _yield_cpu(nice: int) -> None:
    """Run the whole process at ``nice``. On Linux a thread's niceness is its own: the threads that
    exist already (the libraries' pools started at import) are set one by one, and the threads started
    later (the decoder's, the watchdog) inherit it from the thread that makes them."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread, and those it starts
        threads = [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:  # a thread that has just ended
            pass


def capture_main(
    name: str,
    source: str,
    ring_name: str,
    status_endpoint: str | None,
    options: SourceOptions,
    stop_event: Any,
    *,
    backoff_initial: float = 0.5,
    backoff_max: float = 10.0,
    max_reconnects: int | None = None,
    stall_timeout: float | None = None,
) -> int:
    """Process entry: capture ``source`` into the ring ``ring_name`` (created by the supervisor).

    Exit codes: 0 after a clean stop or a source that ended normally; :data:`EXIT_BAD_SOURCE` (78)
    when restarting cannot help (the source string, file, device or codec is invalid, a file broke
    off mid-way, the ring does not exist); 1 after giving up reconnecting (``max_reconnects``), where
    a restart later may succeed. The last status message's ``error`` says why.
    """
    _install_signal_handlers(stop_event)
    if options.nice:
        _yield_cpu(options.nice)
    publisher = Publisher(status_endpoint, own_context=True) if status_endpoint else None
    if publisher is not None:
        publisher.wait_for_subscriber(1.0)

    def send(message: CaptureStatus) -> None:
        if publisher is None:
            return
        try:
            publisher.send(message)
        except zmq.ZMQError as exc:
            log.warning("%s: status not sent: %s", name, exc)

    def fail(error: str) -> int:
        log.error("%s: %s", name, error)
        send(
            CaptureStatus(
                stream=name, state=CaptureState.ENDED, **asdict(CaptureStats()), error=error, wall=time.time()
            )
        )
        return EXIT_BAD_SOURCE

    try:
        try:
            spec = parse_source(source)
        except UnsupportedSource as exc:
            return fail(str(exc))
        try:
            ring = FrameRing.attach(ring_name)
        except RingError as exc:
            return fail(f"ring {ring_name!r}: {exc}")
        try:
            capture = Capture(
                name,
                spec,
                ring,
                options=options,
                on_status=send,
                backoff_initial=backoff_initial,
                backoff_max=backoff_max,
                max_reconnects=max_reconnects,
                stall_timeout=stall_timeout,
            )
            capture.run(stop_event)
        finally:
            ring.close()
        if capture.error is None:
            return 0
        return 1 if capture.retryable else EXIT_BAD_SOURCE
    finally:
        if publisher is not None:
            publisher.close(linger=1.0)  # the last status ("ended", final counts) must arrive
