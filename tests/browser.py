"""Machinery for the viewer tests: Debian's Chromium driven headless by Playwright, a gateway in its own
process, and a feed that plays the capture and inference processes on the real zmq bus.

Only the model is absent: the feed publishes what the capture processes (``capture_status``) and the
inference process (``inference_status``, ``thumbnail``, ``partial``, ``caption``, ``answer``) publish,
through real :class:`~stream.bus.Publisher` sockets, and answers asks that reach it through a real
:class:`~stream.bus.AskReceiver`. Thumbnails are real photos (``tests/data/photos``) encoded as JPEG.

Chromium is always ``/usr/bin/chromium`` (the Debian package), never a browser Playwright downloads.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from conftest import DATA_DIR, require_executable, require_real_part

from stream import messages
from stream.bus import AskReceiver, Publisher, RunPaths
from stream.messages import BusMessage

log = logging.getLogger(__name__)

# What MATERIALS.md found Chromium needs here: no sandbox as root, no GPU, and nothing that phones
# home (background networking, component updates, sync, QUIC probes). Playwright adds --headless and
# a fresh temporary --user-data-dir of its own for every launch (and deletes it at close).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

PHOTOS_DIR = DATA_DIR / "photos"


def chromium_executable() -> str:
    """Debian's Chromium; skips locally and fails in CI when it (or Playwright) is missing."""
    path = require_executable("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require_real_part(False, "Playwright's Python package (pip install playwright)")
    return path


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """A headless Debian Chromium under Playwright's sync API; closed (and its profile removed) at exit."""
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


def is_loopback_url(url: str) -> bool:
    """True for URLs that stay on this machine (or never leave the page: data:, blob:, about:)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class PageLog:
    """Everything a page asked the network for, and every script error it raised."""

    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("websocket", lambda ws: self.websockets.append(ws.url))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)

    def external(self) -> list[str]:
        return [url for url in self.requests + self.websockets if not is_loopback_url(url)]


def open_page(
    browser: Any,
    url: str | None = None,
    *,
    viewport: dict[str, int] = DESKTOP,
    init_config: dict[str, Any] | None = None,
) -> tuple[Any, PageLog]:
    """A new page in its own browser context (own storage), with its network and errors recorded.

    ``init_config`` becomes ``window.VIDNARRATE_CONFIG`` before the viewer's script runs (the viewer's
    documented hook for shorter heartbeat and reconnect timings).
    """
    context = browser.new_context(viewport=viewport, service_workers="block")
    page = context.new_page()
    record = PageLog()
    record.attach(page)
    if init_config:
        page.add_init_script(f"window.VIDNARRATE_CONFIG = {json.dumps(init_config)};")
    if url is not None:
        page.goto(url)
    return page, record


def save_screenshot(page: Any, directory: Path, name: str, *, full_page: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    log.info("screenshot saved: %s", path)
    return path


# -- the gateway, in its own process as `vidnarrate run` starts it --------------------------------


class GatewayProcess:
    """:func:`stream.gateway.gateway_main` in a "spawn" child on a fixed port, so a killed gateway can
    be started again at the same URL (what the page reconnects to)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        asks_endpoint: str | None,
        *,
        run_dir: Path,
        port: int | None = None,
        token: str = "",
        **options: Any,
    ) -> None:
        self.endpoints = list(endpoints)
        self.asks_endpoint = asks_endpoint
        self.run_dir = run_dir
        self.port = port or free_port()
        self.token = token
        self.options = options
        self.process: Any = None
        self._stop_event: Any = None
        self._starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def url(self) -> str:
        """The URL a user opens: with ``?token=`` when auth is on."""
        return self.base_url + (f"?token={self.token}" if self.token else "")

    def wait_for_replay(self, count: int, timeout: float = 10.0) -> None:
        """Block until a subscriber would get at least ``count`` captions replayed: the gateway has
        read and stored them."""
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        deadline = time.monotonic() + timeout
        with connect(f"ws://127.0.0.1:{self.port}/ws", additional_headers=headers) as ws:
            while True:
                ws.send(json.dumps({"type": "subscribe", "replay": messages.MAX_REPLAY}))
                while (reply := json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))[
                    "type"
                ] != "subscribed":
                    pass  # the previous subscribe's replay and status
                if reply["replayed"] >= count:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gateway stored {reply['replayed']} of {count} captions")
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.pid is not None
        return int(self.process.pid)

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        from stream.gateway import gateway_main
        from stream.gateway_options import GatewayOptions

        context = multiprocessing.get_context("spawn")
        deadline = time.monotonic() + timeout
        while True:  # right after a kill the port may still be held for a moment
            self._starts += 1
            ready_file = self.run_dir / f"gateway-{self.port}-{self._starts}.json"
            ready_file.unlink(missing_ok=True)
            self._stop_event = context.Event()
            self.process = context.Process(
                target=gateway_main,
                name="test-gateway",
                daemon=True,
                args=(self.endpoints, self.asks_endpoint),
                kwargs={
                    "options": GatewayOptions(
                        host="127.0.0.1", port=self.port, token=self.token, **self.options
                    ),
                    "ready_file": str(ready_file),
                    "stop_event": self._stop_event,
                },
            )
            self.process.start()
            while not ready_file.exists() and self.process.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if ready_file.exists():
                info = json.loads(ready_file.read_text())
                assert info["port"] == self.port, info
                return self
            self.process.join(5)
            if self.process.exitcode == 2 and time.monotonic() < deadline:  # cannot listen (yet)
                time.sleep(0.2)
                continue
            self.kill()
            raise RuntimeError(
                f"the gateway did not start on port {self.port} (exit code {self.process.exitcode})"
            )

    def kill(self) -> None:
        """SIGKILL: no close frames, no goodbye; the clients just lose the connection."""
        if self.process is not None and self.process.is_alive():
            os.kill(self.pid, signal.SIGCONT)  # a stopped process must be able to die
            self.process.kill()
        if self.process is not None:
            self.process.join(10)

    def pause(self) -> None:
        """SIGSTOP: the TCP connections stay open but nothing answers (a hung gateway)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGCONT)
            self._stop_event.set()
            self.process.join(10)
        self.kill()
        self.process.close()
        self.process = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- what the feed publishes ---------------------------------------------------------------------


def photo_thumbnails(width: int = 320, height: int = 180, quality: int = 80) -> list[bytes]:
    """Every committed photo, centre-cropped to ``width`` x ``height`` and encoded as JPEG, the way the
    inference process shrinks a sampled frame into a thumbnail."""
    from PIL import Image

    out = []
    for path in sorted(PHOTOS_DIR.glob("*.jpg")):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        scale = max(width / rgb.width, height / rgb.height)
        resized = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
        left = (resized.width - width) // 2
        top = (resized.height - height) // 2
        buffer = io.BytesIO()
        resized.crop((left, top, left + width, top + height)).save(buffer, "JPEG", quality=quality)
        out.append(buffer.getvalue())
    if not out:
        raise FileNotFoundError(f"no photos in {PHOTOS_DIR}")
    return out


@dataclass
class StreamPlay:
    """What the feed reports for one stream."""

    name: str
    state: str = "live"
    error: str | None = None  # what the capture process says went wrong
    fps: float = 25.0
    thumbnails: Sequence[bytes] = ()
    caption_every: float | None = None  # seconds between automatic captions, None: only on request
    caption_text: Callable[[int], str] = lambda seq: f"caption number {seq}"
    window: float = 16.0
    frames: int = 0
    seq: int = 0


class ViewerFeed:
    """Plays capture and inference processes on the real bus, from a thread of the test process.

    zmq sockets are not thread-safe, so the thread owns every socket; the test hands it messages through
    a queue (:meth:`publish`). Every ``period`` seconds it repeats what real processes repeat (capture
    and inference status, one thumbnail per stream), so a gateway that (re)starts later catches up,
    and it answers asks with ``answer(stream, question)`` (``None``: no answer at all).
    """

    def __init__(
        self,
        paths: RunPaths,
        streams: Sequence[StreamPlay],
        *,
        period: float = 0.5,
        answer: Callable[[str, str], str | None] | None = None,
        model: str = "feed",
    ) -> None:
        self.paths = paths
        self.streams = {s.name: s for s in streams}
        self.period = period
        self.answer = answer or (lambda stream, question: f"On {stream}: an answer to {question!r}.")
        self.model = model
        self.asks: list[messages.AskRequest] = []
        self.published: list[messages.Caption | messages.Partial] = []  # in order
        self.started_wall = time.time()
        self._queue: queue.Queue[tuple[str, BusMessage]] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="viewer-feed", daemon=True)
        self._error: BaseException | None = None
        self._thread_ready = threading.Event()

    # The endpoints a gateway subscribes to: one publisher per capture role, one for inference.
    def endpoints(self) -> list[str]:
        roles = ["inference"] + [f"capture:{name}" for name in self.streams]
        return [self.paths.publisher_endpoint(role) for role in roles]

    @property
    def asks_endpoint(self) -> str:
        return self.paths.asks_endpoint

    def start(self) -> ViewerFeed:
        self._thread.start()
        if not self._thread_ready.wait(10):
            raise RuntimeError("the viewer feed did not bind its sockets")
        if self._error is not None:
            raise RuntimeError("the viewer feed failed to start") from self._error
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> ViewerFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a test asks the feed to publish --------------------------------------------------------

    def stream_time(self) -> float:
        return time.time() - self.started_wall

    def publish(self, role: str, message: BusMessage) -> BusMessage:
        self._queue.put((role, message))
        return message

    def caption(
        self,
        stream: str,
        text: str | None = None,
        *,
        partials: Sequence[str] = (),
        partial_delay: float = 0.0,
        unchanged: bool | None = None,
    ) -> messages.Caption:
        """Publish the next caption of ``stream`` (after its ``partials``); returns the caption."""
        play = self.streams[stream]
        with self._lock:
            seq = play.seq
            play.seq += 1
        now = time.time()
        t_end = now - self.started_wall
        t_start = max(0.0, t_end - play.window)
        for chunk in partials:
            self.publish("inference", messages.Partial(stream=stream, seq=seq, text=chunk))
            if partial_delay:
                time.sleep(partial_delay)
        message = messages.Caption(
            stream=stream,
            seq=seq,
            t_start=round(t_start, 3),
            t_end=round(t_end, 3),
            frame_times=[round(t, 3) for t in _frame_times(t_start, t_end)],
            wall_start=now - (t_end - t_start),
            wall_end=now,
            text=text if text is not None else play.caption_text(seq),
            model=self.model,
            latency_ms=850.0,
            unchanged=unchanged,
        )
        self.publish("inference", message)
        return message

    def partial(self, stream: str, text: str) -> messages.Partial:
        """Publish a partial of the stream's *next* caption (its seq is not consumed)."""
        play = self.streams[stream]
        message = messages.Partial(stream=stream, seq=play.seq, text=text)
        self.publish("inference", message)
        return message

    def set_state(self, stream: str, state: str) -> None:
        with self._lock:
            self.streams[stream].state = state

    # -- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        publishers: dict[str, Publisher] = {}
        receiver: AskReceiver | None = None
        try:
            for role in ["inference"] + [f"capture:{name}" for name in self.streams]:
                publishers[role] = Publisher(self.paths.publisher_endpoint(role))
            receiver = AskReceiver(self.paths.asks_endpoint)
        except BaseException as exc:  # handed to start(), which raises it in the test's thread
            self._error = exc
            self._thread_ready.set()
            for pub in publishers.values():
                pub.close()
            return
        self._thread_ready.set()
        next_report = 0.0
        next_caption = {name: time.monotonic() + (s.caption_every or 0) for name, s in self.streams.items()}
        thumb_index = 0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_report:
                    self._report(publishers, thumb_index)
                    thumb_index += 1
                    next_report = now + self.period
                for name, play in self.streams.items():
                    if play.caption_every and now >= next_caption[name]:
                        next_caption[name] = now + play.caption_every
                        self.caption(name)
                for ask in receiver.poll():
                    self.asks.append(ask)
                    self._answer(publishers["inference"], ask)
                self._drain(publishers)
                self._stop.wait(0.02)
        finally:
            for pub in publishers.values():
                pub.close()
            receiver.close()

    def _drain(self, publishers: dict[str, Publisher]) -> None:
        while True:
            try:
                role, message = self._queue.get_nowait()
            except queue.Empty:
                return
            publishers[role].send(message)
            if isinstance(message, messages.Caption | messages.Partial):
                self.published.append(message)

    def _answer(self, publisher: Publisher, ask: messages.AskRequest) -> None:
        # The inference process echoes the gateway's id; the gateway routes the answer to the asker.
        text = self.answer(ask.stream, ask.question)
        if text is None:  # plays an inference process that never answers
            return
        publisher.send(messages.Answer(id=ask.id, stream=ask.stream, text=text))

    def _report(self, publishers: dict[str, Publisher], thumb_index: int) -> None:
        wall = time.time()
        t = wall - self.started_wall
        inference: dict[str, Any] = {}
        with self._lock:
            plays = [
                (s.name, s.state, s.error, s.fps, list(s.thumbnails), s.seq) for s in self.streams.values()
            ]
        for name, state, error, fps, thumbnails, seq in plays:
            play = self.streams[name]
            play.frames = int(t * fps)
            publishers[f"capture:{name}"].send(
                messages.CaptureStatus(
                    stream=name,
                    state=messages.StreamState(state),
                    frames=play.frames,
                    fps=fps if state == "live" else 0.0,
                    decode_errors=0,
                    reconnects=0,
                    drops=0,
                    width=1280,
                    height=720,
                    error=error,
                    wall=wall,
                )
            )
            inference[name] = {
                "lag_s": 0.4,
                "skipped": 0,
                "captions": seq,
                "encodes_per_frame": 1.0,
                "caption_latency_ms": 850.0,
            }
            if thumbnails and state == "live":
                jpeg = thumbnails[thumb_index % len(thumbnails)]
                publishers["inference"].send(
                    messages.Thumbnail(
                        stream=name, t=round(t, 3), wall=wall, jpeg=base64.b64encode(jpeg).decode()
                    )
                )
        publishers["inference"].send(
            messages.InferenceStatus(
                streams=inference, model=self.model, device="cpu", state=messages.ModelState.READY, wall=wall
            )
        )


def _frame_times(t_start: float, t_end: float) -> list[float]:
    """1 fps sample times in the window, as the sampler picks them."""
    first = int(t_start) + (1 if t_start > int(t_start) else 0)
    return [float(t) for t in range(first, int(t_end) + 1)]
