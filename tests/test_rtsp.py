"""Capture from a real RTSP server (GStreamer's, started by the test on 127.0.0.1) into a real ring, while
the server is killed (SIGKILL: PyAV just sees the end of the stream), restarted, and hung (SIGSTOP:
nothing arrives and nothing fails; only the read timeout and the stall watchdog notice). The capture
tests run under decode = "all" and "sampled" (the server's GOP is 0.5 s: sampling at 10 fps decodes
up to each needed frame; at 2 fps only keyframes, so most packets are never decoded and the stall
watchdog must count them as signs of life).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from realparts import RtspServer, require_rtsp_server

from stream.bus import RunPaths, Subscriber
from stream.capture import Capture, CaptureState, capture_main
from stream.errors import SourceError, SourceTimeout
from stream.messages import CaptureStatus
from stream.ring import FrameRing, ring_name
from stream.sources import SourceOptions, open_source, parse_source

pytestmark = pytest.mark.integration
SHM = Path("/dev/shm")
OPTIONS = SourceOptions(open_timeout=3.0, read_timeout=1.0, max_side=320)


@pytest.fixture(scope="module", autouse=True)
def _rtsp_installed() -> None:
    require_rtsp_server()


@pytest.fixture
def server() -> Iterator[RtspServer]:
    with RtspServer("--size", "320x240", "--fps", "30", "--gop", "15") as srv:
        yield srv


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    ring = FrameRing.create(ring_name(uuid.uuid4().hex, "rtsp"), slots=8, max_height=320, max_width=320)
    try:
        yield ring
    finally:
        ring.close()
        ring.unlink()
    assert not (SHM / ring.name).exists()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for ``predicate`` to hold; fails the test after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


class RingWatcher:
    """Reads every frame it can from the ring in a thread (its own attachment), keeping (seq, pts, wall)."""

    def __init__(self, name: str) -> None:
        self.ring = FrameRing.attach(name)
        self.seen: list[tuple[int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq = -1
        while not self._stop.is_set():
            if self.ring.wait_for(seq, timeout=0.1):
                for frame in self.ring.since(seq):
                    self.seen.append((frame.seq, frame.pts, frame.wall))
                    seq = frame.seq

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.ring.close()


def test_rtsp_source_opens_fast_and_delivers_rgb(server: RtspServer) -> None:
    started = time.monotonic()
    with open_source(server.url, OPTIONS) as source:
        assert not source.finite
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 30:
                break
    took = time.monotonic() - started
    assert took < 5.0
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
    assert np.all(np.diff([f.pts for f in frames]) > 0)
    # videotestsrc's ball pattern: a black field with a white ball that moves.
    assert frames[0].image.mean() < 60 and frames[0].image.max() > 200
    assert not np.array_equal(frames[0].image, frames[-1].image)


def test_hung_server_raises_source_timeout(server: RtspServer) -> None:
    """Without any watchdog, the source itself turns PyAV's read timeout into SourceTimeout."""
    with open_source(server.url, OPTIONS) as source:
        frames = iter(source)
        for _ in range(5):
            next(frames)
        server.signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(SourceTimeout, match="read timeout") as info:
            for _ in frames:
                pass
        took = time.monotonic() - started
    server.signal(signal.SIGCONT)
    assert took < 3 * OPTIONS.read_timeout + 1.0, took  # PyAV notices after about twice the timeout
    assert str(info.value).count(server.url) == 1 and isinstance(info.value, TimeoutError)
    assert "[Errno" not in str(info.value)


def test_server_that_accepts_but_never_answers_is_an_open_timeout() -> None:
    """A camera whose RTSP service hangs still accepts TCP connections; FFmpeg then reports the
    interrupted wait as "Invalid data", which must read as the timeout it is."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam"
        options = SourceOptions(open_timeout=1.0, read_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(SourceTimeout, match=r"no answer within 1 s") as info:
            open_source(url, options)
        took = time.monotonic() - started
        listener.accept()[0].close()  # it did connect: this is not a refused connection
    assert took < 4.0, took
    assert str(info.value) == f"network source {url!r}: no answer within 1 s"
    assert isinstance(info.value, TimeoutError)


def test_a_path_the_server_does_not_have_is_said_in_words(server: RtspServer) -> None:
    """FFmpeg reports the RTSP server's 404 as an HTTP error whose message repeats the URL."""
    url = server.url.replace("/cam", "/nope")
    with pytest.raises(SourceError) as info:
        open_source(url, OPTIONS)
    assert (
        str(info.value) == f"network source {url!r}: the server answered 404 Not Found (nothing at that path)"
    )


@pytest.mark.parametrize(("decode", "sample_fps"), [("all", 1.0), ("sampled", 10.0), ("sampled", 2.0)])
def test_kill_restart_and_hang_are_survived(
    server: RtspServer, ring: FrameRing, decode: str, sample_fps: float
) -> None:
    statuses: list[CaptureStatus] = []
    stop = threading.Event()
    # The watchdog's stall timeout is set below PyAV's read timeout here, so that the watchdog (not
    # PyAV, whose timeout test_hung_server_raises_source_timeout covers) is what notices the hang.
    options = SourceOptions(
        open_timeout=3.0, read_timeout=2.0, max_side=320, decode=decode, sample_fps=sample_fps
    )
    some = 15 if decode == "all" else max(3, round(sample_fps / 2))  # half a second of frames
    cap = Capture(
        "cam0",
        parse_source(server.url),
        ring,
        options=options,
        on_status=statuses.append,
        backoff_initial=0.2,
        backoff_max=1.0,
        status_interval=0.25,
        stall_timeout=0.8,
    )
    result: list[CaptureState] = []
    runner = threading.Thread(target=lambda: result.append(cap.run(stop)))
    watcher = RingWatcher(ring.name)
    runner.start()
    try:

        def state() -> str:
            return statuses[-1].state if statuses else ""

        wait_until(lambda: state() == "live" and cap.stats.frames >= some, 15, "first frames")

        # 1. SIGKILL: PyAV sees a clean end of stream; capture must call that a loss and retry.
        server.kill()
        killed_at = time.time()
        assert wait_until(lambda: state() == "lost", 3, "lost after SIGKILL") < 2.0
        assert "stream ended" in (statuses[-1].error or "")
        wait_until(lambda: cap.stats.reconnects >= 2, 5, "reconnect attempts while the server is down")
        refused = f"network source {server.url!r}: connection refused"
        assert any(m.error == refused for m in statuses)

        # 2. Restart on the same port: frames flow again.
        frames_before = cap.stats.frames
        server.start()
        wait_until(lambda: state() == "live" and cap.stats.frames >= frames_before + some, 15, "frames again")
        back = [w for (_, _, w) in watcher.seen if w > killed_at]
        assert back, "no frame after the restart reached the ring"

        # 3. SIGSTOP: the connection stays open and silent. The watchdog must call it a stall.
        server.signal(signal.SIGSTOP)
        wait_until(lambda: state() == "lost", 6, "lost after SIGSTOP")
        lost = statuses[-1]
        # Counted from the last frame that arrived (the client may still be draining buffered data
        # when the server stops).
        last_frame = max(w for (_, _, w) in watcher.seen if w < lost.wall)
        assert lost.wall - last_frame < cap.stall_timeout + 0.5, lost.wall - last_frame
        assert "stalled" in (lost.error or "")

        # 4. SIGCONT: the server answers again; capture reconnects.
        time.sleep(1.0)
        frames_before = cap.stats.frames
        server.signal(signal.SIGCONT)
        wait_until(
            lambda: state() == "live" and cap.stats.frames >= frames_before + some, 20, "frames after SIGCONT"
        )
    finally:
        stop.set()
        runner.join(10)
        watcher.close()
    assert result == [CaptureState.ENDED], "capture.run did not return cleanly"
    assert not runner.is_alive()

    # Stream time in the ring: strictly increasing across both reconnects, and the gaps follow
    # the wall clock (the camera restarted its own pts at some arbitrary value each time).
    seqs = [s for s, _, _ in watcher.seen]
    pts = np.array([p for _, p, _ in watcher.seen])
    walls = np.array([w for _, _, w in watcher.seen])
    assert seqs == sorted(set(seqs))
    assert np.all(np.diff(pts) > 0)
    drift = (pts - pts[0]) - (walls - walls[0])
    assert np.abs(drift).max() < 1.0, np.abs(drift).max()
    assert statuses[-1].reconnects >= 3
    assert statuses[-1].state == "ended" and statuses[-1].error is None  # a stop, not a failure


def _exit_code_main(**kwargs: Any) -> None:
    raise SystemExit(capture_main(**kwargs))


@pytest.mark.parametrize(("decode", "sample_fps"), [("all", 1.0), ("sampled", 2.0)])
def test_capture_process_reconnects_after_server_restart(
    server: RtspServer, ring: FrameRing, tmp_path: Path, decode: str, sample_fps: float
) -> None:
    """The same through capture_main in a spawned process, watched only through the zmq bus."""
    run = RunPaths.create(root=tmp_path)
    endpoint = run.publisher_endpoint("capture:cam0")
    subscriber = Subscriber([endpoint])
    context = mp.get_context("spawn")
    stop = context.Event()
    proc = context.Process(
        target=_exit_code_main,
        kwargs={
            "name": "cam0",
            "source": server.url,
            "ring_name": ring.name,
            "status_endpoint": endpoint,
            "options": replace(OPTIONS, decode=decode, sample_fps=sample_fps),
            "stop_event": stop,
            "backoff_initial": 0.2,
            "backoff_max": 1.0,
        },
    )
    proc.start()
    states: list[str] = []
    last: dict[str, Any] = {}

    def pump_until(state: str, timeout: float, min_frames: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = subscriber.recv(0.2)
            if message is None:
                continue
            last.update(message.to_dict())
            if not states or states[-1] != message.state:
                states.append(message.state)
            if message.state == state and message.frames >= min_frames:
                return
        pytest.fail(f"no {state!r} status within {timeout} s; states so far: {states}")

    try:
        pump_until("live", 30)
        server.kill()
        pump_until("lost", 5)
        head = ring.head_seq
        server.start()
        pump_until("live", 20)
        more = 10 if decode == "all" else 3
        wait_until(lambda: ring.head_seq > head + more, 10, "frames in the ring after the restart")
        stop.set()
        pump_until("ended", 10)
        proc.join(10)
        assert proc.exitcode == 0
        assert last["state"] == "ended" and last["reconnects"] >= 1 and last["error"] is None
        assert states[:4] == ["connecting", "live", "lost", "connecting"]
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        subscriber.close()
        run.remove()
