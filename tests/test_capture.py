"""stream/capture.py: the state machine, counters and the process entry, driven with real
clips into a real shared-memory ring, and capture_main as a real spawned process on a real zmq bus.

RTSP faults (kill, hang, restart) are in test_rtsp.py; the screen in test_screen.py. The key tests
run under both ``decode`` modes: "all" writes every frame, "sampled" (sampling at SAMPLE_FPS, so a
2-s clip still gives enough frames to check) only those the sampler's rule keeps, which are then
exactly the frames that rule keeps of every frame (:func:`written`). Skipped decoding, fidelity on
long GOPs and hardware decoding are in test_decodeplan.py.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from realparts import free_port, load_tool, make_clip

from stream.bus import RunPaths, Subscriber
from stream.capture import EXIT_BAD_SOURCE, Capture, CaptureState, capture_main
from stream.messages import BusMessage, CaptureStatus
from stream.process import child_entry
from stream.ring import SLOT_SPARE_BYTES, FrameRing, ring_name
from stream.sampler import SampleGrid
from stream.sources import RGB_OVERRUN_BYTES, PendingFrame, SourceOptions, SourceSpec, parse_source

msv = load_tool("make_sample_video")
SHM = Path("/dev/shm")
SAMPLE_FPS = 10.0  # what "sampled" samples at here: every third frame of the 30-fps clips


@pytest.fixture(params=["all", "sampled"])
def decode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def opts(decode: str, **kwargs: Any) -> SourceOptions:
    return SourceOptions(decode=decode, sample_fps=SAMPLE_FPS, **kwargs)


def written(decode: str, frames: int, fps: float = 30.0) -> list[float]:
    """The stream times capture writes of a clip of ``frames`` frames at ``fps``: every one, or
    those the sampler's rule keeps of every one."""
    times = [i / fps for i in range(frames)]
    if decode == "all":
        return times
    grid = SampleGrid(SAMPLE_FPS)
    return [t for t in times if grid.offer(t) is not None]


# -- in-process capture of real clips into a real ring -------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("capture-clips")


@pytest.fixture(scope="module")
def clip(clips: Path) -> Path:
    return make_clip(clips / "clip.mp4", size="320x180", fps=30, seconds=2.0)


def new_ring(lossless: bool = False, slots: int = 8, side: int = 320) -> FrameRing:
    return FrameRing.create(
        ring_name(uuid.uuid4().hex, "test"), slots=slots, max_height=side, max_width=side, lossless=lossless
    )


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    ring = new_ring()
    try:
        yield ring
    finally:
        ring.close()
        ring.unlink()
    assert not (SHM / ring.name).exists()


class Statuses(list[CaptureStatus]):
    """on_status callback that keeps every message."""

    def __call__(self, message: CaptureStatus) -> None:
        self.append(message)

    def states(self) -> list[str]:
        out: list[str] = []
        for message in self:
            if not out or out[-1] != message.state:
                out.append(message.state)
        return out


def capture(
    source: str | Path, ring: FrameRing, stop: threading.Event | None = None, **kwargs: Any
) -> tuple[Capture, Statuses]:
    options = kwargs.pop("options", SourceOptions(realtime=False, max_side=320))
    statuses = Statuses()
    cap = Capture("cam0", parse_source(str(source)), ring, options=options, on_status=statuses, **kwargs)
    assert cap.run(stop or threading.Event()) == CaptureState.ENDED
    return cap, statuses


STATUS_KEYS = {
    "type",
    "stream",
    "state",
    "frames",
    "fps",
    "decode_errors",
    "reconnects",
    "drops",
    "width",
    "height",
    "error",
    "wall",
}


def test_a_restarted_capture_continues_the_rings_timeline(clip: Path, ring: FrameRing, decode: str) -> None:
    """Stream time is stamped once, here: a second capture into the same ring (the supervisor
    restarting a capture process) goes on after the first one's newest frame, not from 0 again."""
    options = opts(decode, realtime=False, max_side=320)
    last = written(decode, 60)[-1]
    capture(clip, ring, options=options)
    first = ring.info(ring.head_seq)
    assert first is not None and first.pts == pytest.approx(last, abs=1e-3)
    capture(clip, ring, options=options)
    times = [
        info.pts
        for seq in range(ring.head_seq - ring.slots + 1, ring.head_seq + 1)
        if (info := ring.info(seq))
    ]
    assert times == sorted(times) and times[-1] > first.pts + last - 0.1 - 1e-3


def test_file_into_ring_ends_cleanly(clip: Path, ring: FrameRing, decode: str) -> None:
    cap, statuses = capture(clip, ring, options=opts(decode, realtime=False, max_side=320))
    assert statuses.states() == ["connecting", "live", "ended"]
    final = statuses[-1]
    times = written(decode, 60)
    assert set(final.to_dict()) == STATUS_KEYS and final.TYPE == "capture_status" and final.stream == "cam0"
    assert (final.frames, final.width, final.height, final.error) == (len(times), 320, 180, None)
    assert final.decode_errors == 0 and final.reconnects == 0 and final.drops == 0
    assert ring.head_seq == len(times) - 1 and ring.ended
    last = ring.latest()
    assert last is not None and msv.read_stamp(last.image) == round(times[-1] * 30)  # its own pixels
    assert last.pts == pytest.approx(times[-1], abs=1e-3)  # stream time = seconds since the first frame


def test_ring_write_with_publishes_only_a_complete_fill(ring: FrameRing) -> None:
    """The ring API capture converts into: a fill that fails publishes nothing; the next write works."""

    def broken(view: np.ndarray) -> None:
        view[:2] = 7
        raise ValueError("decoder fell over mid-frame")

    assert ring.write_with(4, 6, lambda view: view.fill(1), 0.0, 1.0) == 0
    with pytest.raises(ValueError, match="mid-frame"):
        ring.write_with(4, 6, broken, 0.1, 1.1)
    assert ring.head_seq == 0 and ring.read(1) is None
    assert ring.write_with(4, 6, lambda view: view.fill(3), 0.2, 1.2) == 1
    frame = ring.read(1)
    assert frame is not None and frame.image.shape == (4, 6, 3) and (frame.image == 3).all()
    assert frame.pts == 0.2


def test_ring_slots_have_room_for_converters_that_overrun_the_last_row() -> None:
    """A full-size frame's view is followed by SLOT_SPARE_BYTES that are no other slot's pixels:
    clobbering them (as libswscale's vector stores do, through a raw pointer) leaves the others intact."""
    ring = FrameRing.create(ring_name(uuid.uuid4().hex, "spare"), slots=2, max_height=8, max_width=10)
    try:
        assert ring.write(np.full((8, 10, 3), 5, np.uint8), 0.0, 1.0) == 0

        def overrunning(view: np.ndarray) -> None:
            view[:] = 9
            ctypes.memset(view.ctypes.data + view.nbytes, 0xEE, SLOT_SPARE_BYTES)

        assert ring.write_with(8, 10, overrunning, 0.1, 1.1) == 1
        assert ring.write_with(8, 10, overrunning, 0.2, 1.2) == 2  # the last slot: the segment's end
        first, last = ring.read(1), ring.read(2)
        assert first is not None and (first.image == 9).all()
        assert last is not None and (last.image == 9).all()
        assert ring.write(np.full((8, 10, 3), 4, np.uint8), 0.3, 1.3) == 3
        assert (ring.read(2).image == 9).all() and (ring.read(3).image == 4).all()  # type: ignore[union-attr]
    finally:
        ring.close()
        ring.unlink()
    assert SLOT_SPARE_BYTES >= RGB_OVERRUN_BYTES


def test_lossless_ring_gets_every_frame_with_stream_time(clip: Path, decode: str) -> None:
    with new_ring(lossless=True, slots=4) as ring:
        reader_ring = FrameRing.attach(ring.name)
        got: list[tuple[int, float, int]] = []

        def read() -> None:
            rid = reader_ring.register_reader()
            seq = -1
            while not (reader_ring.ended and reader_ring.head_seq <= seq):
                reader_ring.wait_for(seq, timeout=0.5)
                for frame in reader_ring.since(seq):
                    got.append((frame.seq, frame.pts, msv.read_stamp(frame.image)))
                    seq = frame.seq
                    time.sleep(0.002)  # a slower reader than the decoder: the writer must wait
                reader_ring.release(rid, seq)

        thread = threading.Thread(target=read)
        thread.start()
        capture(clip, ring, options=opts(decode, realtime=False, max_side=320))
        thread.join(10)
        reader_ring.close()
    times = written(decode, 60)
    assert [s for s, _, _ in got] == list(range(len(times)))
    assert [stamp for _, _, stamp in got] == [round(t * 30) for t in times]  # each frame's own pixels
    assert np.allclose([p for _, p, _ in got], times, atol=1e-3)


def test_stop_while_a_lossless_writer_waits_for_readers(clip: Path, decode: str) -> None:
    """No reader ever registers, so the writer waits for one forever unless it sees the stop."""
    with new_ring(lossless=True, slots=2) as ring:
        stop = threading.Event()
        stopped_at: list[float] = []

        def stop_later() -> None:
            stopped_at.append(time.monotonic())
            stop.set()

        threading.Timer(0.5, stop_later).start()
        cap, statuses = capture(clip, ring, stop, options=opts(decode, realtime=False, max_side=320))
        # Counted from the stop, not from the start: opening the file takes what the machine's load
        # makes it; the writer checks the stop between waits of a fraction of a second.
        assert stopped_at and time.monotonic() - stopped_at[0] < 3.0
        assert cap.error is None and not ring.ended  # a stop is not the source ending


def test_realtime_status_reports_measured_fps(clips: Path, ring: FrameRing, decode: str) -> None:
    """``fps`` is the source's rate in both modes (what users saw before decoding was sampled), while
    ``frames`` counts what is written into the ring: every frame, or the sampler's rate."""
    clip = make_clip(clips / "clip3s.mp4", size="320x180", fps=30, seconds=3.0)
    written_rate = 30.0 if decode == "all" else SAMPLE_FPS
    cap, statuses = capture(clip, ring, options=opts(decode, realtime=True), status_interval=0.5)
    live = [m for m in statuses if m.state == "live" and m.frames > written_rate * 0.7]
    assert len(live) >= 3  # heartbeats while live
    assert all(30.0 * 0.66 < m.fps < 30.0 * 1.34 for m in live[1:]), [m.fps for m in live]
    assert statuses[-1].fps == 0.0 and statuses[-1].frames == len(written(decode, 90))


def test_corrupt_file_counts_errors_and_reaches_the_end(
    clip: Path, ring: FrameRing, tmp_path: Path, decode: str
) -> None:
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(3)
    for spot in (0.35, 0.6):
        offset = int(len(data) * spot)
        data[offset : offset + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    cap, statuses = capture(bad, ring, options=opts(decode, realtime=False, max_side=320))
    final = statuses[-1]
    times = written(decode, 60)
    assert final.state == "ended" and final.error is None
    assert final.decode_errors > 0 and len(times) / 2 < final.frames <= len(times)
    if decode == "all":  # frames were lost (sampled: a lost frame's neighbour may stand in for it)
        assert final.frames < len(times)
    last = ring.latest()  # its pixels may be concealment garbage (damaged references): check its time
    assert last is not None and last.pts == pytest.approx(times[-1], abs=1e-3)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [("missing.mp4", None, "no such file"), ("text.mp4", b"hello\n" * 100, "not a video file")],
)
def test_unopenable_file_ends_at_once_with_the_reason(
    tmp_path: Path, ring: FrameRing, name: str, content: bytes | None, reason: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    started = time.monotonic()
    cap, statuses = capture(path, ring)
    assert time.monotonic() - started < 2.0
    assert statuses.states() == ["connecting", "ended"]
    assert name in statuses[-1].error and reason in statuses[-1].error
    assert statuses[-1].reconnects == 0 and ring.ended and not cap.retryable


def test_network_source_retries_with_capped_exponential_backoff(
    ring: FrameRing, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens: every attempt is refused at once
    with caplog.at_level(logging.INFO, logger="stream.capture"):
        cap, statuses = capture(
            url,
            ring,
            backoff_initial=0.1,
            backoff_max=0.4,
            max_reconnects=5,
            options=SourceOptions(open_timeout=2, read_timeout=1),
        )
    # The outage is a warning once (seen at --log-level WARNING); its retries are INFO.
    losses = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert [r.levelno for r in losses] == [logging.WARNING] + [logging.INFO] * 4
    connecting = [m.wall for m in statuses if m.state == "connecting"]
    connecting = [t for i, t in enumerate(connecting) if i == 0 or t - connecting[i - 1] > 0.05]
    gaps = np.diff(connecting)
    assert len(gaps) == 5
    waits = [float(r.getMessage().rsplit("reconnecting in ", 1)[1].split()[0]) for r in losses]
    assert waits == [0.1, 0.2, 0.4, 0.4, 0.4], "doubling from backoff_initial, capped at backoff_max"
    # Each gap is that wait plus a refused attempt (milliseconds on a quiet machine, more under load):
    # never shorter than the wait, and not much longer.
    assert all(w - 0.02 <= g < w + 1.0 for w, g in zip(waits, gaps, strict=True)), gaps
    assert "lost" in statuses.states()
    final = statuses[-1]
    assert final.state == "ended" and final.reconnects == 5
    assert "gave up after 5 reconnects" in final.error and "connection refused" in final.error
    assert url in final.error and cap.retryable  # a later process may well connect


def test_invalid_live_source_on_first_attempt_is_fatal(ring: FrameRing) -> None:
    cap, statuses = capture("/dev/video98", ring)
    assert statuses.states() == ["connecting", "ended"]
    assert "/dev/video98" in statuses[-1].error and statuses[-1].reconnects == 0


class HangingSource:
    """Test double for the one hang we cannot produce here: a camera driver whose read blocks forever,
    with no timeout of its own (RTSP hangs are real in test_rtsp.py, but PyAV's read timeout would
    catch those too). Yields ``count`` frames filled with ``value``, then blocks until ``release``
    is set, then yields one late frame."""

    finite = False

    def __init__(self, value: int, count: int) -> None:
        self.value, self.count = value, count
        self.decode_errors = 0
        self.release = threading.Event()

    def __enter__(self) -> HangingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()

    def pending(self) -> Iterator[PendingFrame]:
        def fill(out: np.ndarray) -> None:
            out[:] = self.value

        for i in range(self.count):
            yield PendingFrame(16, 16, 100.0 + i / 30, time.time(), fill)
            time.sleep(1 / 30)
        self.release.wait()
        yield PendingFrame(16, 16, 999.0, time.time(), fill)


def test_watchdog_abandons_a_hung_reader_and_reconnects(ring: FrameRing, decode: str) -> None:
    sources: list[HangingSource] = []

    def opener(spec: SourceSpec, options: SourceOptions) -> HangingSource:
        sources.append(HangingSource(value=len(sources) + 1, count=10))
        return sources[-1]

    statuses = Statuses()
    cap = Capture(
        "cam0",
        parse_source("webcam:0"),
        ring,
        options=opts(decode),
        on_status=statuses,
        opener=opener,  # type: ignore[arg-type]
        stall_timeout=0.3,
        backoff_initial=0.1,
    )
    enough = 15 if decode == "all" else 5  # 10 frames a reader at 30 fps, of which 4 are samples
    stop = threading.Event()
    runner = threading.Thread(target=cap.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while len(sources) < 2 or cap.stats.frames < enough:
            assert time.monotonic() < deadline, statuses.states()
            time.sleep(0.02)
        sources[0].release.set()  # the abandoned first reader wakes up with a late frame
        time.sleep(0.2)
        started = time.monotonic()
        stop.set()
        runner.join(5)
        assert not runner.is_alive() and time.monotonic() - started < 1.5  # while the reader is blocked
    finally:
        stop.set()
        for source in sources:
            source.release.set()
    assert statuses.states()[:5] == ["connecting", "live", "lost", "connecting", "live"]
    assert "no frame for" in statuses[2].error and "stalled" in statuses[2].error
    values = [int(f.image[0, 0, 0]) for f in ring.since(-1)]
    assert values and values[-1] == 2 and values == sorted(values)  # reader 1's late frame never landed
    assert cap.stats.reconnects == 1


def test_stop_ends_a_real_time_file_promptly(clips: Path, ring: FrameRing, decode: str) -> None:
    clip = make_clip(clips / "long.mp4", size="320x180", fps=30, seconds=8.0)
    stop = threading.Event()
    threading.Timer(0.7, stop.set).start()
    started = time.monotonic()
    cap, statuses = capture(clip, ring, stop, options=opts(decode, realtime=True))
    assert time.monotonic() - started < 2.0
    share = 1.0 if decode == "all" else SAMPLE_FPS / 30
    assert 10 * share < statuses[-1].frames < 60 * share
    assert statuses[-1].state == "ended" and statuses[-1].error is None


def test_looped_file_keeps_stream_time_increasing(clips: Path, ring: FrameRing, decode: str) -> None:
    clip = make_clip(clips / "half.mkv", size="160x90", fps=30, seconds=0.5)
    rate = 30.0 if decode == "all" else SAMPLE_FPS
    reader = FrameRing.attach(ring.name)
    seen: list[tuple[int, float]] = []
    stop = threading.Event()

    def watch() -> None:
        seq = -1
        while not stop.is_set():
            if reader.wait_for(seq, timeout=0.2):
                for frame in reader.since(seq):
                    seen.append((frame.seq, frame.pts))
                    seq = frame.seq
            if seq >= 3 * rate / 2 - 1:  # three loops
                stop.set()

    thread = threading.Thread(target=watch)
    thread.start()
    capture(clip, ring, stop, options=opts(decode, realtime=True, loop=True))
    thread.join(5)
    reader.close()
    pts = [p for _, p in seen]
    assert len(pts) >= 1.3 * rate and all(b > a for a, b in zip(pts, pts[1:], strict=False))
    # 15 frames a loop (5 samples), no gap at the seams
    assert pts[-1] == pytest.approx(seen[-1][0] / rate, abs=0.01)


# -- capture_main as a real process --------------------------------------------------------------------
_spawn = mp.get_context("spawn")


def _exit_code_main(**kwargs: Any) -> None:
    """Child entry that turns capture_main's return value into the exit code (as stream.process does)."""
    raise SystemExit(capture_main(**kwargs))


def run_capture_process(
    source: str,
    ring: str,
    endpoint: str | None,
    options: SourceOptions,
    stop_when_live: Subscriber | None = None,
    use_sigterm: bool = False,
) -> tuple[int, float, list[BusMessage]]:
    """Run capture_main in a spawned process; with ``stop_when_live``, stop it (stop event or SIGTERM)
    once its status says live. Returns (exit code, seconds from the stop (or start) to exit, messages
    seen before the stop)."""
    stop = _spawn.Event()
    proc = _spawn.Process(
        target=_exit_code_main,
        kwargs={
            "name": "cam0",
            "source": source,
            "ring_name": ring,
            "status_endpoint": endpoint,
            "options": options,
            "stop_event": stop,
        },
    )
    started = time.monotonic()
    proc.start()
    seen: list[BusMessage] = []
    try:
        if stop_when_live is not None:
            while not seen or seen[-1].state != "live":
                message = stop_when_live.recv(30)
                assert message is not None, f"no live status; got {seen}"
                seen.append(message)
            time.sleep(0.5)
            started = time.monotonic()
            if use_sigterm:
                os.kill(proc.pid, signal.SIGTERM)
            else:
                stop.set()
        proc.join(30)
        assert proc.exitcode is not None, "capture process did not exit"
        return proc.exitcode, time.monotonic() - started, seen
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[str, Subscriber]]:
    run = RunPaths.create(root=tmp_path)
    endpoint = run.publisher_endpoint("capture:cam0")
    subscriber = Subscriber([endpoint])
    try:
        yield endpoint, subscriber
    finally:
        subscriber.close()
        run.remove()


def drain(subscriber: Subscriber, timeout: float = 1.0) -> list[BusMessage]:
    messages = []
    while (message := subscriber.recv(timeout)) is not None:
        messages.append(message)
    return messages


def test_capture_process_file_end_exit_zero(
    clip: Path, ring: FrameRing, bus: tuple[str, Subscriber], decode: str
) -> None:
    endpoint, subscriber = bus
    code, _, _ = run_capture_process(str(clip), ring.name, endpoint, opts(decode, realtime=True))
    messages = drain(subscriber)
    assert code == 0
    states = [m.state for m in messages]
    assert states[0] == "connecting" and states[-1] == "ended" and "live" in states
    count = len(written(decode, 60))
    assert messages[-1].frames == count and messages[-1].error is None
    assert ring.ended and ring.head_seq == count - 1


@pytest.mark.parametrize("frames", [1, 10, 90])
def test_last_status_arrives_through_the_production_child_entry(
    clips: Path, ring: FrameRing, bus: tuple[str, Subscriber], frames: int, decode: str
) -> None:
    """The supervisor's children leave through os._exit (no interpreter teardown, which would flush zmq
    on its own): the final "ended" report with the full count must still reach the bus, or a file
    that played through shows up as a dead, lost capture with the wrong frame count."""
    endpoint, subscriber = bus
    clip = make_clip(clips / f"short{frames}.mp4", size="320x180", fps=30, seconds=frames / 30)
    kwargs = {
        "name": "cam0",
        "source": str(clip),
        "ring_name": ring.name,
        "status_endpoint": endpoint,
        "options": opts(decode, realtime=False),
    }
    for attempt in range(3):  # the loss was intermittent: a race between the last send and exit
        head = ring.head_seq
        proc = _spawn.Process(target=child_entry, args=("capture:cam0", capture_main, kwargs))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        messages = drain(subscriber)
        assert messages, f"attempt {attempt}: no status at all"
        assert messages[-1].state == "ended", f"attempt {attempt}: {messages[-1]}"
        assert messages[-1].frames == ring.head_seq - head and messages[-1].error is None
        if attempt == 0:  # later ones resume the ring's timeline, a wall-clock gap on: a shifted grid
            assert messages[-1].frames == len(written(decode, frames))


def test_capture_process_sigterm_is_a_clean_stop(
    clips: Path, ring: FrameRing, bus: tuple[str, Subscriber]
) -> None:
    endpoint, subscriber = bus
    clip = make_clip(clips / "long.mp4", size="320x180", fps=30, seconds=8.0)
    code, took, _ = run_capture_process(
        str(clip),
        ring.name,
        endpoint,
        SourceOptions(realtime=True),
        stop_when_live=subscriber,
        use_sigterm=True,
    )
    assert code == 0 and took < 2.0
    messages = drain(subscriber)
    assert messages[-1].state == "ended" and messages[-1].error is None
    assert 0 < messages[-1].frames < 240 and not ring.ended


def test_a_capture_process_runs_every_thread_at_its_nice(
    clips: Path, ring: FrameRing, bus: tuple[str, Subscriber]
) -> None:
    """``[capture] nice``: the whole capture process yields the CPU to the rest of the run, its
    decoder's and watchdog's threads included (on Linux a thread's niceness is its own)."""
    endpoint, subscriber = bus
    clip = make_clip(clips / "long.mp4", size="320x180", fps=30, seconds=8.0)
    stop = _spawn.Event()
    proc = _spawn.Process(
        target=_exit_code_main,
        kwargs={
            "name": "cam0",
            "source": str(clip),
            "ring_name": ring.name,
            "status_endpoint": endpoint,
            "options": SourceOptions(realtime=True, nice=7),
            "stop_event": stop,
        },
    )
    proc.start()
    try:
        message = subscriber.recv(30)
        while message is not None and message.state != "live":
            message = subscriber.recv(30)
        assert message is not None, "no live status"
        threads = [int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(threads) > 1, "the reader and watchdog threads run beside the main one"
        assert {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in threads} == dict.fromkeys(threads, 7)
        assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == 0, "the test's own process is untouched"
    finally:
        stop.set()
        proc.join(30)
    assert proc.exitcode == 0


def capture_main_in_thread(source: str, ring: str, endpoint: str, **kwargs: Any) -> int:
    """capture_main called directly (in a thread, so it installs no signal handlers in pytest): the
    error paths need no new process; the spawned-process tests above cover what spawning adds."""
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            capture_main("cam0", source, ring, endpoint, SourceOptions(), threading.Event(), **kwargs)
        )
    )
    thread.start()
    thread.join(20)
    assert result, "capture_main did not return"
    return result[0]


@pytest.mark.parametrize(
    ("source", "reason"),
    [("missing-file.mp4", "no such file"), ("gopher://cam/1", "unsupported scheme gopher://")],
)
def test_capture_main_bad_source_exits_not_to_be_restarted(
    ring: FrameRing, bus: tuple[str, Subscriber], source: str, reason: str
) -> None:
    endpoint, subscriber = bus
    assert capture_main_in_thread(source, ring.name, endpoint) == EXIT_BAD_SOURCE == 78
    messages = drain(subscriber, 0.3)
    assert messages[-1].state == "ended"
    assert source in messages[-1].error and reason in messages[-1].error


def test_capture_main_giving_up_reconnecting_exits_one(ring: FrameRing, bus: tuple[str, Subscriber]) -> None:
    endpoint, subscriber = bus
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    assert capture_main_in_thread(url, ring.name, endpoint, backoff_initial=0.05, max_reconnects=1) == 1
    assert "gave up after 1 reconnects" in drain(subscriber, 0.3)[-1].error


def test_capture_main_without_a_ring_says_so(bus: tuple[str, Subscriber], clip: Path) -> None:
    endpoint, subscriber = bus
    assert capture_main_in_thread(str(clip), "vn-none-0000000000", endpoint) == EXIT_BAD_SOURCE
    assert "no ring named vn-none-0000000000" in drain(subscriber, 0.3)[-1].error
