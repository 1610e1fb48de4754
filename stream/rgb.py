"""Decoded pixels into RGB arrays of the wanted size.

libswscale converts PyAV frames straight into a caller's array (:class:`DirectRGB`); the downscale
(:func:`scaled_size`, :func:`resize`), the display rotation (:func:`rotate`) and OpenCV/mss BGR(A)
images into RGB (:func:`bgr_into`) are here too.

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
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Spare bytes a DirectRGB destination needs after its end: libswscale's vector stores overrun the
# last row by less than one vector (64 RGB pixels = 192 bytes with AVX-512); one page is ample.
RGB_OVERRUN_BYTES = 4096


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
_AVCOL_RANGE_JPEG = 2
_AV_PIX_FMT_RGB24 = 2


def _swscale() -> _Swscale | None:
    global _SWSCALE, _SWSCALE_LOADED
    with _SWSCALE_LOCK:
        if not _SWSCALE_LOADED:
            _SWSCALE = _Swscale.load()
            _SWSCALE_LOADED = True
        return _SWSCALE


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


def bgr_into(image: np.ndarray, size: tuple[int, int], code: int, out: np.ndarray) -> None:
    """Scale a BGR(A) OpenCV/mss image to ``size``, then convert it to RGB straight into ``out``
    (scaling first: the colour conversion then touches fewer pixels)."""
    height, width = image.shape[:2]
    if (width, height) != size:
        image = resize(image, size)
    if cv2.cvtColor(image, code, dst=out) is not out:  # pragma: no cover - only on a shape mismatch
        raise ValueError(f"conversion target has shape {out.shape}, expected {(size[1], size[0], 3)}")
