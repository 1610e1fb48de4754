"""Video sources: one way to open a file, a network stream, a webcam or the screen from a string.

``parse_source(text)`` turns what a user typed into a :class:`SourceSpec`; ``open_source(spec, options)``
opens it (raising a :class:`~stream.errors.SourceError` that names the source and the reason) and
returns a :class:`VideoSource`, a context manager whose iterator yields :class:`VideoFrame`: a
C-contiguous RGB ``uint8 (H, W, 3)`` image, the frame's ``pts`` on the source's own timeline
(seconds) and the wall-clock time it was decoded. Capture uses :meth:`VideoSource.pending` instead,
whose :class:`PendingFrame` converts straight into a ring slot (:class:`DirectRGB` explains why).

Accepted strings::

    clip.mp4, /path/x.mkv, file:///path/x.ts     a file PyAV can read (paced at real time by default)
    rtsp://..., rtsps://...                       RTSP camera, TCP transport by default
    http(s)://...                                 MJPEG over HTTP, HLS playlists, or a remote file
    webcam, webcam:N, /dev/videoN                 a camera through OpenCV (V4L2 on Linux)
    screen, screen:DISPLAY (screen::99, screen:99) the X screen through mss

What each source does at its end: a file iterator ends (the caller calls it *ended*); a network,
webcam or screen iterator ending means the connection dropped, and the capture loop reconnects.
An http(s) source with a known duration (a remote file, an HLS VOD playlist) is finite like a file:
see :attr:`VideoSource.finite`.

Downscaling: frames whose long side exceeds ``max_side`` are resized (aspect kept) right after the
RGB conversion, by OpenCV, into the target array. Measured on 1080p -> 1344x756 (2-core EPYC, 120
frames, decode included): full-size RGB 154 fps; RGB + ``cv2.resize`` INTER_LINEAR 105 fps;
PyAV/swscale scaling in the conversion (FAST_BILINEAR 92, BILINEAR 74, AREA 78 fps); RGB +
``cv2.resize`` INTER_AREA 51 fps. So OpenCV's bilinear is used while the factor is >= 1/2 (every
output pixel still sees its 2x2 neighbourhood, no aliasing to speak of) and INTER_AREA below that,
where bilinear would alias.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import av
import cv2
import numpy as np

from .errors import ConfigError, SourceError, SourceNotFound, SourceTimeout, UnsupportedSource

log = logging.getLogger(__name__)

SourceKind = Literal["file", "network", "webcam", "screen"]

ACCEPTED = (
    "a video file path (or file://PATH), rtsp://, rtsps://, http://, https:// (MJPEG, HLS), "
    "webcam:N, /dev/videoN, screen or screen:DISPLAY (e.g. screen::99)"
)
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")

# A corrupt file may fail to demux at the same spot forever; give up after this many errors in a row.
MAX_CONSECUTIVE_ERRORS = 200
# A file played at real time that falls this far behind re-anchors its clock instead of bursting.
MAX_PACING_LAG_S = 0.5
# A forward pts jump longer than this (a DVR file's recording gap, concatenated segments) is played on at
# once instead of waited out; shorter gaps (a 0.2-fps file, a VFR screen recording's idle seconds) are.
MAX_PACING_GAP_S = 10.0

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DEV_VIDEO = re.compile(r"^/dev/video\d+$")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string. ``target`` is the path, URL, camera index/device or X display."""

    kind: SourceKind
    target: str
    text: str = ""

    @property
    def live(self) -> bool:
        """Live sources reconnect when they end; files end."""
        return self.kind != "file"

    @property
    def label(self) -> str:
        """The source as shown in logs and errors: the user's string with any password hidden."""
        return redact(self.text or self.target)


def redact(text: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``; other strings unchanged."""
    if not _SCHEME.match(text):
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = f"{parts.username}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def parse_source(text: str) -> SourceSpec:
    """Parse a user's source string; raises :class:`UnsupportedSource` naming it and what is accepted."""
    raw = text
    text = text.strip()
    if not text:
        raise UnsupportedSource(f"empty source string; expected {ACCEPTED}")
    if text == "screen" or text.startswith("screen:"):
        display = text[len("screen:") :] if text != "screen" else ""
        if display and not display.startswith(":") and display[:1].isdigit():
            display = ":" + display  # screen:99 means :99
        if display and not re.fullmatch(r"[A-Za-z0-9_.-]*:\d+(\.\d+)?", display):
            raise UnsupportedSource(f"source {raw!r}: {display!r} is not an X display like :0 or :99.0")
        return SourceSpec("screen", display, text)
    if text == "webcam" or text.startswith("webcam:"):
        index = text[len("webcam:") :] if text != "webcam" else "0"
        if _DEV_VIDEO.match(index):
            return SourceSpec("webcam", index, text)
        if not index.isdigit():
            raise UnsupportedSource(f"source {raw!r}: webcam index {index!r} is not a number like webcam:0")
        return SourceSpec("webcam", str(int(index)), text)
    if _DEV_VIDEO.match(text):
        return SourceSpec("webcam", text, text)
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme == "file":
            path = urlsplit(text).path
            if not path:
                raise UnsupportedSource(f"source {raw!r}: file:// URL without a path")
            return SourceSpec("file", path, text)
        if scheme in NETWORK_SCHEMES:
            if not urlsplit(text).hostname:
                raise UnsupportedSource(f"source {redact(raw)!r}: {scheme}:// URL without a host")
            return SourceSpec("network", text, text)
        raise UnsupportedSource(
            f"source {redact(raw)!r}: unsupported scheme {scheme}://; expected {ACCEPTED}"
        )
    return SourceSpec("file", str(Path(text).expanduser()), text)


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: RGB uint8 (H, W, 3), C-contiguous; ``pts`` in seconds of the source's own
    timeline (not yet stream time: capture maps it); ``wall`` = time.time() at decode."""

    image: np.ndarray
    pts: float
    wall: float


class RealTimePacer:
    """Holds frames back until their pts is due on the monotonic clock, so a file (or a remote file)
    plays as live. A decoder that falls behind by more than MAX_PACING_LAG_S resumes pacing from
    where it is rather than rushing to catch up; a pts jump of more than MAX_PACING_GAP_S is not
    waited out (the stream would sit at 0 fps for the length of the gap, an hour for some files)."""

    def __init__(self, label: str = "source") -> None:
        self._label = label
        self._anchor: tuple[float, float] | None = None  # (monotonic, pts)
        self._last_pts: float | None = None

    def wait(self, pts: float, wall: float) -> float:
        """Sleep until ``pts`` is due; the frame's wall-clock time afterwards."""
        now = time.monotonic()
        jump = None if self._last_pts is None else pts - self._last_pts
        self._last_pts = pts
        if jump is not None and jump > MAX_PACING_GAP_S:
            log.info(
                "%s: pts jumps %.1f s ahead at %.1f s; playing on without waiting", self._label, jump, pts
            )
            self._anchor = None
        if self._anchor is None:
            self._anchor = (now, pts)
        due = self._anchor[0] + (pts - self._anchor[1])
        if due > now:
            time.sleep(due - now)
            return time.time()
        if now - due > MAX_PACING_LAG_S:
            self._anchor = (now, pts)
        return wall


@dataclass(frozen=True)
class SourceOptions:
    """How to open and read a source. Picklable, so it travels to the capture process as is.

    ``max_side``: long side limit in pixels (0 = keep the source size). ``realtime``: pace files by
    their pts (False = as fast as possible, for offline work). ``loop``: replay a file forever as if
    it were live (demos). ``open_timeout``/``read_timeout``: seconds for network sources (PyAV
    notices a hung server after about twice the read timeout; capture's watchdog bounds it too).
    ``fps_hint``: screen grabs per second. ``rtsp_transport``: ``tcp`` (default) or ``udp``.
    """

    max_side: int = 1344
    realtime: bool = True
    loop: bool = False
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    fps_hint: float = 5.0
    rtsp_transport: Literal["tcp", "udp"] = "tcp"

    def __post_init__(self) -> None:
        if self.max_side < 0 or 0 < self.max_side < 16:
            raise ConfigError(f"SourceOptions.max_side: {self.max_side} is not 0 (no limit) or >= 16")
        for name in ("open_timeout", "read_timeout", "fps_hint"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"SourceOptions.{name}: {getattr(self, name)} must be > 0")
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ConfigError(f"SourceOptions.rtsp_transport: {self.rtsp_transport!r} is not 'tcp' or 'udp'")


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the long side limited to ``max_side`` (0 = no limit), aspect kept."""
    long_side = max(width, height)
    if not max_side or long_side <= max_side:
        return width, height
    scale = max_side / long_side
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Resize to ``size`` = (width, height) (see the module doc for the method), into ``out`` when
    given; without ``out``, an image that already has that size is returned as is."""
    height, width = image.shape[:2]
    if (width, height) == size:
        if out is None:
            return image
        np.copyto(out, image, casting="no")
        return out
    factor = min(size[0] / width, size[1] / height)
    interpolation = cv2.INTER_LINEAR if factor >= 0.5 else cv2.INTER_AREA
    if out is None:
        return cv2.resize(image, size, interpolation=interpolation)
    result = cv2.resize(image, size, dst=out, interpolation=interpolation)
    if result is not out:  # pragma: no cover - OpenCV reallocates only on a shape/type mismatch
        raise ValueError(f"resize target has shape {out.shape}, expected {(size[1], size[0], 3)}")
    return out


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Apply a display rotation (counterclockwise degrees, as FFmpeg's display matrix gives it)."""
    quarter = round(degrees / 90.0) % 4
    if quarter == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=quarter))


class _Swscale:
    """ctypes bindings to the libswscale and libavutil that PyAV itself loaded (never another copy,
    such as OpenCV's bundled one). Only the long-stable public API: sws_getCachedContext,
    sws_setColorspaceDetails, sws_getCoefficients, sws_scale, sws_freeContext, av_get_pix_fmt."""

    def __init__(self, swscale: ctypes.CDLL, avutil: ctypes.CDLL) -> None:
        vp, i = ctypes.c_void_p, ctypes.c_int
        self.get_context = swscale.sws_getCachedContext
        self.get_context.restype = vp
        self.get_context.argtypes = [vp, i, i, i, i, i, i, i, vp, vp, vp]
        self.set_details = swscale.sws_setColorspaceDetails
        self.set_details.restype = i
        self.set_details.argtypes = [vp, vp, i, vp, i, i, i, i]
        self.coefficients = swscale.sws_getCoefficients
        self.coefficients.restype = vp
        self.coefficients.argtypes = [i]
        self.scale = swscale.sws_scale
        self.scale.restype = i
        self.scale.argtypes = [
            vp,
            ctypes.POINTER(vp),
            ctypes.POINTER(i),
            i,
            i,
            ctypes.POINTER(vp),
            ctypes.POINTER(i),
        ]
        self.free_context = swscale.sws_freeContext
        self.free_context.restype = None
        self.free_context.argtypes = [vp]
        self.pix_fmt = avutil.av_get_pix_fmt
        self.pix_fmt.restype = i
        self.pix_fmt.argtypes = [ctypes.c_char_p]

    @staticmethod
    def load() -> _Swscale | None:
        import av.video.reformatter  # noqa: F401 - makes sure PyAV's libswscale is mapped

        paths = {"libswscale": _mapped("libswscale"), "libavutil": _mapped("libavutil")}
        for name, short in (("libswscale", "swscale"), ("libavutil", "avutil")):
            paths[name] = paths[name] or ctypes.util.find_library(short)
        try:
            return _Swscale(ctypes.CDLL(paths["libswscale"]), ctypes.CDLL(paths["libavutil"]))
        except (OSError, AttributeError, TypeError) as exc:
            log.info("direct RGB conversion unavailable (%s); using PyAV's", exc)
            return None


def _mapped(library: str) -> str | None:
    """The file of ``library`` that this process has mapped, preferring the copy that PyAV's wheel
    ships next to its package (OpenCV's wheel maps its own libswscale too). Linux only."""
    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(maxsplit=1)[-1]
                if Path(path).name.startswith(library) and path not in candidates:
                    candidates.append(path)
    except OSError:
        return None
    ours = [path for path in candidates if Path(path).parent.name.endswith("av.libs")]  # the wheel's
    others = [path for path in candidates if "opencv" not in path]  # a system FFmpeg PyAV links to
    return (ours or others)[0] if ours or others else None


_SWSCALE: _Swscale | None = None
_SWSCALE_LOADED = False
_SWSCALE_LOCK = threading.Lock()

_SWS_BILINEAR = 2
_AVFMT_NOTIMESTAMPS = 0x0080  # libavformat: the format has no timestamps of its own
_AVCOL_RANGE_JPEG = 2
_AV_PIX_FMT_RGB24 = 2


def _swscale() -> _Swscale | None:
    global _SWSCALE, _SWSCALE_LOADED
    with _SWSCALE_LOCK:
        if not _SWSCALE_LOADED:
            _SWSCALE = _Swscale.load()
            _SWSCALE_LOADED = True
        return _SWSCALE


# Spare bytes a DirectRGB destination needs after its end: libswscale's vector stores overrun the
# last row by less than one vector (64 RGB pixels = 192 bytes with AVX-512); one page is ample.
RGB_OVERRUN_BYTES = 4096


class DirectRGB:
    """Converts decoded PyAV frames to RGB straight into a caller's array.

    Why: ``frame.to_ndarray(format="rgb24")`` makes swscale write a freshly allocated frame, which
    capture then copies into its ring slot. Pointing the same libswscale at the slot instead saves
    that copy and the allocation: 1080p, 2-core EPYC, CPU per frame: to_ndarray 1.3-2.6 ms,
    to_ndarray + copy 3.0-3.7 ms, direct 1.5-1.7 ms; in a decode loop at 720p 290 vs 210 frames/s.

    It must give exactly PyAV's pixels, so the first frame of every new (format, size, colour space,
    range) is converted both ways and compared; any difference (or no usable libswscale) turns
    the direct path off for that kind of frame and PyAV's conversion is used, as before.
    ``VIDNARRATE_NO_DIRECT_RGB=1`` (read when a source opens) turns it off.
    """

    def __init__(self, label: str) -> None:
        self._label = label
        self._sws = None if os.environ.get("VIDNARRATE_NO_DIRECT_RGB") else _swscale()
        self._context: int | None = None
        self._configured: tuple[int, tuple[str, int, int, int, int]] | None = None
        self._checked: dict[tuple[str, int, int, int, int], bool] = {}
        self._scratch: np.ndarray | None = None

    def convert(self, frame: Any, out: np.ndarray, spare_after: int) -> bool:
        """Write ``frame`` as RGB into ``out`` (C-contiguous uint8, frame's height x width x 3);
        False (``out`` untouched) when the direct path is not available for this frame.

        libswscale's SIMD converters store whole vectors, so for widths that are not a multiple of
        their step the last row runs up to a vector past the end (measured: 42 bytes at 360 px wide).
        PyAV's own frames are padded for that; ``out`` must be too: the caller promises that
        ``spare_after`` bytes after ``out`` are its own to clobber, and the direct path is taken only
        when that is at least :data:`RGB_OVERRUN_BYTES`.
        """
        sws = self._sws
        if (
            sws is None
            or spare_after < RGB_OVERRUN_BYTES
            or not out.flags.c_contiguous
            or out.shape != (frame.height, frame.width, 3)
        ):
            return False
        key = (frame.format.name, frame.width, frame.height, int(frame.colorspace), int(frame.color_range))
        verdict = self._checked.get(key)
        if verdict is False:
            return False
        if not self._scale(sws, frame, out, key):
            self._checked[key] = False
            return False
        if verdict is None:
            expected = frame.to_ndarray(format="rgb24")
            same = bool(np.array_equal(expected, out))
            self._checked[key] = same
            if not same:
                log.info(
                    "%s: direct RGB conversion differs from PyAV's for %s frames; using PyAV's",
                    self._label,
                    key[0],
                )
                np.copyto(out, expected)
        return True

    def scratch(self, frame: Any) -> np.ndarray | None:
        """``frame`` as a full-size RGB image in a buffer reused from frame to frame (valid until
        the next call), or None when the direct path is not available."""
        shape = (frame.height, frame.width, 3)
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = padded_rgb(frame.height, frame.width)
        return self._scratch if self.convert(frame, self._scratch, RGB_OVERRUN_BYTES) else None

    def _scale(self, sws: _Swscale, frame: Any, out: np.ndarray, key: tuple[str, int, int, int, int]) -> bool:
        name, width, height, colorspace, color_range = key
        src_format = sws.pix_fmt(name.encode())
        if src_format < 0:
            return False
        context = sws.get_context(
            self._context,
            width,
            height,
            src_format,
            width,
            height,
            _AV_PIX_FMT_RGB24,
            _SWS_BILINEAR,
            None,
            None,
            None,
        )
        if not context:
            self._context = None  # sws_getCachedContext freed the old one
            return False
        if (context, key) != self._configured:
            # As PyAV's reformat does: the frame's own colour space and range (unspecified ->
            # BT.601, limited range; yuvj formats are full range whatever the tag), to full-range RGB.
            full_range = int(color_range == _AVCOL_RANGE_JPEG or name.startswith("yuvj"))
            sws.set_details(
                context, sws.coefficients(colorspace), full_range, sws.coefficients(5), 1, 0, 1 << 16, 1 << 16
            )
            self._configured = (context, key)
        self._context = context
        planes = frame.planes
        pad = 4 - len(planes)
        src = (ctypes.c_void_p * 4)(*[plane.buffer_ptr for plane in planes], *[None] * pad)
        strides = (ctypes.c_int * 4)(*[plane.line_size for plane in planes], *[0] * pad)
        dst = (ctypes.c_void_p * 4)(out.ctypes.data, None, None, None)
        dst_strides = (ctypes.c_int * 4)(width * 3, 0, 0, 0)
        return bool(sws.scale(context, src, strides, 0, height, dst, dst_strides) == height)

    def __del__(self) -> None:
        if self._context and self._sws is not None:
            self._sws.free_context(self._context)
            self._context = None


def padded_rgb(height: int, width: int) -> np.ndarray:
    """An uninitialised ``(height, width, 3)`` uint8 image followed by :data:`RGB_OVERRUN_BYTES` of
    its own spare memory, so :class:`DirectRGB` may convert straight into it."""
    size = height * width * 3
    return np.empty(size + RGB_OVERRUN_BYTES, np.uint8)[:size].reshape(height, width, 3)


@dataclass(frozen=True)
class PendingFrame:
    """A decoded frame before its RGB conversion. ``fill(out)`` writes it, converted (and scaled to
    ``max_side``), into ``out``: a C-contiguous uint8 ``(height, width, 3)`` array, such as a ring
    slot, so capture converts straight into shared memory instead of converting and then copying.
    ``fill_padded``, where a source has it, does the same faster for an ``out`` followed by
    :data:`RGB_OVERRUN_BYTES` spare bytes it may clobber (a ring slot, :func:`padded_rgb`).
    Call either before asking the source for the next frame (sources reuse scratch buffers)."""

    height: int
    width: int
    pts: float
    wall: float
    fill: Callable[[np.ndarray], None]
    fill_padded: Callable[[np.ndarray], None] | None = None

    def to_video_frame(self) -> VideoFrame:
        image = padded_rgb(self.height, self.width)
        (self.fill_padded or self.fill)(image)
        return VideoFrame(image, self.pts, self.wall)


class VideoSource:
    """An open source. Iterate it for :class:`VideoFrame` (or :meth:`pending` for frames not yet
    converted); close it (or use ``with``) when done.

    ``decode_errors`` counts corrupt packets and frames skipped so far (never fatal on their own).
    ``finite`` is True when the iterator ending means the source is over (a file), False when it
    means the connection dropped (capture reconnects).
    """

    def __init__(self, spec: SourceSpec, options: SourceOptions) -> None:
        self.spec = spec
        self.options = options
        self.decode_errors = 0
        self.finite = not spec.live

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[VideoFrame]:
        for pending in self.pending():
            yield pending.to_video_frame()

    def pending(self) -> Iterator[PendingFrame]:
        """The frames, each converted only when its ``fill`` is called."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _error(self, reason: str) -> str:
        return f"{self.spec.kind} source {self.spec.label!r}: {reason}"


class _PyAVSource(VideoSource):
    """Shared PyAV decoding: demux the first video stream, skip and count corrupt packets."""

    _container: Any
    _stream: Any

    def __init__(self, spec: SourceSpec, options: SourceOptions) -> None:
        super().__init__(spec, options)
        self._container = None
        self._direct = DirectRGB(spec.label)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _pick_stream(self) -> None:
        container = self._container
        if not container.streams.video:
            self.close()
            raise UnsupportedSource(self._error("has no video stream"))
        stream = container.streams.video[0]
        if stream.codec_context is None:
            self.close()
            raise UnsupportedSource(self._error("its video codec is not one this FFmpeg build can decode"))
        self._stream = stream

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _decoded(self) -> Iterator[tuple[Any, float]]:
        """(frame, wall) pairs, skipping corrupt packets. Raises SourceTimeout/SourceError on I/O."""
        container, stream = self._container, self._stream
        demux = container.demux(stream)
        consecutive = 0
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.InvalidDataError as exc:
                consecutive = self._count_error(consecutive, "demux", exc)
                demux = container.demux(stream)  # continue reading after the bad spot
                continue
            except (av.ExitError, av.error.TimeoutError) as exc:
                raise SourceTimeout(self._error(f"no data within the read timeout ({exc})")) from exc
            except (av.FFmpegError, OSError) as exc:
                raise SourceError(self._error(f"read failed: {exc}")) from exc
            try:
                decoded = packet.decode()
            except (av.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError) as exc:
                consecutive = self._count_error(consecutive, "decode", exc)
                continue
            wall = time.time()
            for frame in decoded:
                consecutive = 0
                if frame.is_corrupt:
                    self.decode_errors += 1  # delivered anyway: a concealed frame beats a gap
                yield frame, wall

    def _count_error(self, consecutive: int, where: str, exc: Exception) -> int:
        self.decode_errors += 1
        consecutive += 1
        if self.decode_errors <= 3 or self.decode_errors % 100 == 0:
            log.warning("%s: %s error #%d skipped: %s", self.spec.label, where, self.decode_errors, exc)
        if consecutive >= MAX_CONSECUTIVE_ERRORS:
            raise SourceError(self._error(f"{consecutive} {where} errors in a row, giving up (last: {exc})"))
        return consecutive

    def _frame_step(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return 1.0 / float(rate) if rate else 1.0 / 30.0

    def _pts(self, frame: Any, last: float | None) -> float:
        """The frame's time in seconds; a frame without pts gets the previous one plus a frame."""
        if frame.time is not None:
            return float(frame.time)
        return 0.0 if last is None else last + self._frame_step()

    def _pending(self, frame: Any, pts: float, wall: float) -> PendingFrame:
        rotation = frame.rotation
        width, height = frame.width, frame.height
        if round(rotation / 90.0) % 2:
            width, height = height, width
        width, height = scaled_size(width, height, self.options.max_side)
        return PendingFrame(
            height,
            width,
            pts,
            wall,
            fill=lambda out: self._fill(frame, rotation, out, 0),
            fill_padded=lambda out: self._fill(frame, rotation, out, RGB_OVERRUN_BYTES),
        )

    def _fill(self, frame: Any, rotation: int, out: np.ndarray, spare_after: int) -> None:
        """Convert ``frame`` to RGB into ``out``: straight into it when no rotation or scaling is
        needed and ``out`` is padded, else through a full-size scratch image that is then rotated and
        resized (or copied) into it."""
        same_size = (frame.height, frame.width) == out.shape[:2]
        if not rotation and same_size and self._direct.convert(frame, out, spare_after):
            return
        image = self._direct.scratch(frame)
        if image is None:
            image = frame.to_ndarray(format="rgb24")
        if rotation:
            image = rotate(image, rotation)
        resize(image, (out.shape[1], out.shape[0]), out)


class FileSource(_PyAVSource):
    """A file PyAV can read, at real-time pace by pts (default) or as fast as it decodes."""

    def _open(self) -> None:
        path = Path(self.spec.target)
        if not path.exists():
            raise SourceNotFound(self._error("no such file"))
        if path.is_dir():
            raise UnsupportedSource(self._error("is a directory, not a video file"))
        try:
            self._container = av.open(str(path))
        except av.PermissionError as exc:
            raise SourceError(self._error(f"cannot read it: {exc.strerror}")) from exc
        except (av.FFmpegError, OSError) as exc:
            raise UnsupportedSource(self._error(f"not a video file PyAV can read ({exc})")) from exc
        self._pick_stream()
        self._stream.thread_type = "AUTO"

    def pending(self) -> Iterator[PendingFrame]:
        offset = 0.0  # added to pts when looping, so a looped file's pts keep increasing
        while True:
            first: float | None = None
            last: float | None = None
            pacer = RealTimePacer(self.spec.label) if self.options.realtime else None
            for frame, wall in self._decoded():
                raw = self._pts(frame, None if last is None else last - offset)
                first = raw if first is None else first
                pts = raw + offset
                if pacer is not None:
                    wall = pacer.wait(pts, wall)
                last = pts
                yield self._pending(frame, pts, wall)
            if not self.options.loop or last is None or first is None:
                return
            offset = last + self._frame_step() - first
            self.close()
            self._open()


def _unresolved_host(url: str) -> str | None:
    """FFmpeg reports a host name that does not resolve as a bare I/O error; say what it is."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return f"host {host!r} not found ({exc.strerror})"
    except OSError:
        return None
    return None


class NetworkSource(_PyAVSource):
    """RTSP/HTTP(S)/HLS through PyAV with low-latency options and (open, read) timeouts."""

    def _open(self) -> None:
        url = self.spec.target
        scheme = url.split("://", 1)[0].lower()
        options = {"flags": "low_delay"}
        if scheme.startswith("rtsp"):
            # Small probing: the open takes ~0.1 s instead of ~3 s (SDP already carries the format);
            # nobuffer hands out packets as they come (it drops those read while probing: fine live).
            options |= {
                "rtsp_transport": self.options.rtsp_transport,
                "fflags": "nobuffer",
                "analyzeduration": "0",
                "probesize": "32768",
            }
        else:
            # No nobuffer here: it would drop the first second of a remote file or HLS playlist.
            options |= {"analyzeduration": "1000000", "probesize": "1000000"}
        started = time.monotonic()
        try:
            self._container = av.open(
                url, options=options, timeout=(self.options.open_timeout, self.options.read_timeout)
            )
        except av.ProtocolNotFoundError as exc:
            reason = f"this FFmpeg build cannot speak {scheme}:// ({exc})"
            raise UnsupportedSource(self._error(reason)) from exc
        except (av.ExitError, av.error.TimeoutError) as exc:
            raise SourceTimeout(self._error(f"no answer within {self.options.open_timeout:g} s")) from exc
        except (av.FFmpegError, OSError) as exc:
            # FFmpeg's RTSP client reports the interrupted wait for a server that accepted the
            # connection but never answered as "Invalid data": the elapsed time tells the truth.
            if time.monotonic() - started >= self.options.open_timeout:
                reason = f"no answer within {self.options.open_timeout:g} s (FFmpeg: {exc})"
                raise SourceTimeout(self._error(reason)) from exc
            raise SourceError(self._error(f"cannot open: {_unresolved_host(url) or exc}")) from exc
        self._pick_stream()
        container = self._container
        # A remote file or an HLS VOD playlist ends; cameras, live playlists and live HTTP streams
        # don't. A remote file without a duration in its header (MPEG-TS) still has a known size.
        self.finite = not scheme.startswith("rtsp") and (
            container.duration is not None or (container.format.name != "hls" and container.size > 0)
        )
        # A format without timestamps (MJPEG over HTTP) gets made-up ones at an assumed 25 fps;
        # live, the clock since opening is the only true stream time.
        self._clock_pts = not self.finite and bool(container.format.flags & _AVFMT_NOTIMESTAMPS)
        self._opened_at = time.monotonic()
        # HTTP delivers a remote file or VOD playlist as fast as the network goes, and a live
        # playlist in segment-sized bursts: with ``realtime`` they are paced by pts, as a local file
        # is. RTSP already arrives at real time; pacing it would only add its start-up burst as delay.
        self._paced = self.options.realtime and not scheme.startswith("rtsp")

    def pending(self) -> Iterator[PendingFrame]:
        last: float | None = None
        pacer = RealTimePacer(self.spec.label) if self._paced else None
        for frame, wall in self._decoded():
            last = time.monotonic() - self._opened_at if self._clock_pts else self._pts(frame, last)
            if pacer is not None:
                wall = pacer.wait(last, wall)
            yield self._pending(frame, last, wall)


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
                partial(_bgr_into, bgr, size, cv2.COLOR_BGR2RGB),
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
        if not self._display:
            reason = "no X display: DISPLAY is not set; use screen:DISPLAY (e.g. screen::0)"
            raise UnsupportedSource(self._error(reason))
        self._grab_error: type[Exception] = mss.exception.ScreenShotError
        try:
            self._mss = mss.MSS(display=self._display)
            self._monitor = self._mss.monitors[1] if len(self._mss.monitors) > 1 else self._mss.monitors[0]
        except mss.exception.ScreenShotError as exc:
            raise SourceError(self._error(f"cannot open X display {self._display}: {exc}")) from exc
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
                raise SourceError(self._error(f"screen grab on {self._display} failed: {exc}")) from exc
            wall = time.time()
            bgra = np.frombuffer(shot.raw, dtype=np.uint8).reshape(shot.height, shot.width, 4)
            size = scaled_size(shot.width, shot.height, self.options.max_side)
            yield PendingFrame(
                size[1],
                size[0],
                time.monotonic() - self._t0,
                wall,
                partial(_bgr_into, bgra, size, cv2.COLOR_BGRA2RGB),
            )

    def close(self) -> None:
        self._mss.close()


def _bgr_into(image: np.ndarray, size: tuple[int, int], code: int, out: np.ndarray) -> None:
    """Scale a BGR(A) OpenCV/mss image to ``size``, then convert it to RGB straight into ``out``
    (scaling first: the colour conversion then touches fewer pixels)."""
    height, width = image.shape[:2]
    if (width, height) != size:
        image = resize(image, size)
    if cv2.cvtColor(image, code, dst=out) is not out:  # pragma: no cover - only on a shape mismatch
        raise ValueError(f"conversion target has shape {out.shape}, expected {(size[1], size[0], 3)}")


_KINDS: dict[str, type[VideoSource]] = {
    "file": FileSource,
    "network": NetworkSource,
    "webcam": WebcamSource,
    "screen": ScreenSource,
}


def open_source(spec: SourceSpec | str, options: SourceOptions | None = None) -> VideoSource:
    """Open a source now (errors name the source and the reason) and return it; use it with ``with``."""
    if isinstance(spec, str):
        spec = parse_source(spec)
    return _KINDS[spec.kind](spec, options or SourceOptions())
