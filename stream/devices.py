"""Local device sources: a camera through OpenCV and the X screen through mss.

Each frame is stamped with the monotonic clock at grab time (devices have no timeline of their own).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from functools import partial

import cv2
import numpy as np

from .errors import SourceError, SourceNotFound, UnsupportedSource
from .rgb import bgr_into, scaled_size
from .sourcespec import SourceOptions, SourceSpec
from .videosource import PendingFrame, VideoSource


class WebcamSource(VideoSource):
    """A camera through OpenCV (index or /dev/videoN). OpenCV is used because PyAV's wheel has no
    v4l2 input. Any string OpenCV can open works the same way (which is how the tests reach this
    code: there is no camera on the test machines). pts is the monotonic clock at grab time."""

    def __init__(self, spec: SourceSpec, options: SourceOptions) -> None:
        super().__init__(spec, options)
        target = spec.target
        if target.startswith("/") and not os.path.exists(target):
            raise SourceNotFound(self._error("no such device"))
        self._capture = cv2.VideoCapture(int(target) if target.isdigit() else target, cv2.CAP_ANY)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(self._error("OpenCV cannot open it (no such camera, busy, or no permission)"))
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of old ones
        self._t0 = time.monotonic()

    def pending(self) -> Iterator[PendingFrame]:
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                return  # unplugged or stream over: the capture loop decides (reconnect)
            wall = time.time()
            height, width = bgr.shape[:2]
            size = scaled_size(width, height, self.options.max_side)
            yield PendingFrame(
                size[1],
                size[0],
                time.monotonic() - self._t0,
                wall,
                partial(bgr_into, bgr, size, cv2.COLOR_BGR2RGB),
            )

    def close(self) -> None:
        self._capture.release()


class ScreenSource(VideoSource):
    """The X screen (first monitor) through mss, grabbed ``fps_hint`` times per second."""

    def __init__(self, spec: SourceSpec, options: SourceOptions) -> None:
        super().__init__(spec, options)
        import mss  # imported here: it needs nothing at import, but only screen sources use it
        import mss.exception

        self._display = spec.target or os.environ.get("DISPLAY", "")
        # The label names the display when the user did (screen::99); else say which one DISPLAY gave.
        self._which = "the X display" if spec.target else f"X display {self._display} (from DISPLAY)"
        if not self._display:
            reason = "no X display: DISPLAY is not set; use screen:DISPLAY (e.g. screen::0)"
            raise UnsupportedSource(self._error(reason))
        self._grab_error: type[Exception] = mss.exception.ScreenShotError
        try:
            self._mss = mss.MSS(display=self._display)
            self._monitor = self._mss.monitors[1] if len(self._mss.monitors) > 1 else self._mss.monitors[0]
        except mss.exception.ScreenShotError as exc:
            raise SourceError(self._error(f"cannot open {self._which}: {exc}")) from exc
        self._t0 = time.monotonic()

    def pending(self) -> Iterator[PendingFrame]:
        period = 1.0 / self.options.fps_hint
        due = time.monotonic()
        while True:
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            due = max(due + period, time.monotonic() - period)  # never owe more than one grab
            try:
                shot = self._mss.grab(self._monitor)
            except self._grab_error as exc:
                raise SourceError(self._error(f"grabbing {self._which} failed: {exc}")) from exc
            wall = time.time()
            bgra = np.frombuffer(shot.raw, dtype=np.uint8).reshape(shot.height, shot.width, 4)
            size = scaled_size(shot.width, shot.height, self.options.max_side)
            yield PendingFrame(
                size[1],
                size[0],
                time.monotonic() - self._t0,
                wall,
                partial(bgr_into, bgra, size, cv2.COLOR_BGRA2RGB),
            )

    def close(self) -> None:
        self._mss.close()
