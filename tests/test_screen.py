"""Screen capture for real: an Xvfb display started by the test, painted with xsetroot, read through
``screen:DISPLAY`` (mss), directly and through Capture into a real ring."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from realparts import Xvfb

from stream.capture import Capture, CaptureState
from stream.errors import SourceError
from stream.ring import FrameRing, ring_name
from stream.sources import SourceOptions, VideoFrame, open_source, parse_source

pytestmark = pytest.mark.integration


@pytest.fixture
def xvfb() -> Iterator[Xvfb]:
    with Xvfb(640, 480) as screen:
        yield screen


def mean_rgb(image: np.ndarray) -> tuple[float, float, float]:
    r, g, b = image.reshape(-1, 3).mean(axis=0)
    return float(r), float(g), float(b)


def until_color(
    frames: Iterator[VideoFrame], check: Callable[[float, float, float], bool], timeout: float = 10.0
) -> VideoFrame:
    """The first frame whose mean colour passes ``check`` (the painter window takes a moment to map)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = next(frames)
        rgb = mean_rgb(frame.image)
        if check(*rgb):
            return frame
        assert time.monotonic() < deadline, f"screen never showed the colour; last mean RGB {rgb}"


def test_screen_frames_show_what_is_painted(xvfb: Xvfb) -> None:
    spec = parse_source(f"screen:{xvfb.display}")  # e.g. screen::99
    assert spec.kind == "screen" and spec.target == xvfb.display
    with open_source(spec, SourceOptions(fps_hint=20, max_side=0)) as source:
        frames = iter(source)
        xvfb.fill("red")
        red = until_color(frames, lambda r, g, b: r > 200 and g < 40 and b < 40)  # red, in RGB order
        assert red.image.shape == (480, 640, 3) and red.image.dtype == np.uint8
        assert red.image.flags.c_contiguous
        xvfb.fill("#0000ff")
        blue = until_color(frames, lambda r, g, b: b > 200 and r < 40 and g < 40)
        assert blue.pts > red.pts and blue.wall > red.wall


def test_screen_is_grabbed_at_fps_hint_and_downscaled(xvfb: Xvfb) -> None:
    xvfb.fill("green")
    with open_source(f"screen:{xvfb.display}", SourceOptions(fps_hint=10, max_side=320)) as source:
        frames = iter(source)
        first = until_color(frames, lambda r, g, b: g > 200 and r < 40 and b < 40)  # X11 green: (0,255,0)
        grabbed = [first] + [next(frames) for _ in range(10)]
    assert first.image.shape == (240, 320, 3)
    period = (grabbed[-1].pts - grabbed[0].pts) / 10
    assert period == pytest.approx(0.1, abs=0.02)


def test_screen_capture_into_ring(xvfb: Xvfb) -> None:
    xvfb.fill("yellow")
    statuses: list[dict[str, Any]] = []
    with FrameRing.create(
        ring_name(uuid.uuid4().hex, "screen"), slots=4, max_height=640, max_width=640
    ) as ring:
        cap = Capture(
            "desk",
            parse_source(f"screen:{xvfb.display}"),
            ring,
            options=SourceOptions(fps_hint=10),
            on_status=statuses.append,
        )
        stop = threading.Event()
        runner = threading.Thread(target=cap.run, args=(stop,))
        runner.start()
        try:
            deadline = time.monotonic() + 10
            while True:
                frame = ring.latest()
                if frame is not None and min(mean_rgb(frame.image)[:2]) > 200:  # yellow: (255, 255, 0)
                    break
                assert time.monotonic() < deadline, statuses[-1:]
                time.sleep(0.05)
        finally:
            stop.set()
            runner.join(5)
        assert frame.image.shape == (480, 640, 3)
        r, g, b = mean_rgb(frame.image)
        assert r > 200 and g > 200 and b < 40
    assert cap.state == CaptureState.ENDED and [m.state for m in statuses][:2] == ["connecting", "live"]


def test_screen_without_an_x_server(xvfb: Xvfb) -> None:
    display = xvfb.display
    xvfb.close()  # the display number is now free: nothing answers there
    with pytest.raises(SourceError) as info:
        open_source(f"screen:{display}")
    message = str(info.value)
    assert message.startswith(f"screen source 'screen:{display}': cannot open the X display: ")
    assert message.count(display) == 1 and "\n" not in message
