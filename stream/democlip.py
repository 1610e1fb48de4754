"""The demo clip and the test clips: a slow pan and zoom over real photos, encoded with PyAV.

Why: no media ships with vidnarrate and tests run offline, so clips of any size, frame rate and
length are built from the three small real photos in ``stream/demo/`` (package data; real-world
content, unlike synthetic patterns, so codecs and the model see something realistic). Needs only
PyAV (its wheel has libx264), OpenCV and numpy. ``tools/make_sample_video.py`` is the command line.

Stamp (on by default): every frame carries its index twice, as text for humans and as a row of
black/white cells along the top edge (``CODE_BITS`` bits, least significant first) that survives
H.264 compression; :func:`read_stamp` decodes it so tests can tell exactly which frame they got.

:func:`demo_clip` builds the ``demo`` source's clip once into the user's cache folder
(``$XDG_CACHE_HOME/vidnarrate``, default ``~/.cache/vidnarrate``), never into the installation.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from importlib import resources
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import VidnarrateError

log = logging.getLogger(__name__)

CODE_BITS = 20  # up to ~1M frames: 9.7 h at 30 fps
SECONDS_PER_PHOTO = 4.0


def code_cell(width: int) -> int:
    """Side of one stamp cell in pixels at this frame width (big enough to survive compression)."""
    return max(4, min(32, width // (CODE_BITS + 4)))


def load_photos(paths: Sequence[Path] | None = None) -> list[np.ndarray]:
    """The photos as RGB uint8 arrays (default: the bundled ones, ``stream/demo/*.jpg``)."""
    if paths:
        files: list[tuple[str, bytes]] = [(str(path), Path(path).read_bytes()) for path in paths]
    else:
        folder = resources.files(__package__) / "demo"
        bundled = sorted((p for p in folder.iterdir() if p.name.endswith(".jpg")), key=lambda p: p.name)
        files = [(f"stream/demo/{p.name}", p.read_bytes()) for p in bundled]
        if not files:
            raise FileNotFoundError("no photos in stream/demo/: this vidnarrate installation is incomplete")
    photos = []
    for name, data in files:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{name}: not a readable image")
        photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return photos


def pan_zoom(photo: np.ndarray, width: int, height: int, phase: float) -> np.ndarray:
    """One view of ``photo`` at ``phase`` in [0, 1): a crop with the output's aspect that zooms in
    and out and drifts across the picture, resized to ``width`` x ``height``."""
    ph, pw = photo.shape[:2]
    aspect = width / height
    full_w, full_h = (pw, pw / aspect) if pw / ph < aspect else (ph * aspect, ph)
    zoom = 1.0 + 0.35 * (1.0 - math.cos(2.0 * math.pi * phase)) / 2.0  # 1.0 -> 1.35 -> 1.0
    crop_w, crop_h = full_w / zoom, full_h / zoom
    cx = pw / 2 + (pw - crop_w) / 2 * math.sin(2.0 * math.pi * phase)
    cy = ph / 2 + (ph - crop_h) / 2 * math.sin(4.0 * math.pi * phase) * 0.8
    x0 = min(max(cx - crop_w / 2, 0.0), pw - crop_w)
    y0 = min(max(cy - crop_h / 2, 0.0), ph - crop_h)
    # An affine warp does crop + resize with sub-pixel offsets, so the motion is smooth.
    sx, sy = width / crop_w, height / crop_h
    matrix = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], dtype=np.float64)
    interp = cv2.INTER_AREA if sx < 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(photo, matrix, (width, height), flags=interp, borderMode=cv2.BORDER_REFLECT)


def draw_stamp(image: np.ndarray, index: int, seconds: float) -> None:
    """Burn ``index`` (cells + text) and the time into ``image`` in place."""
    h, w = image.shape[:2]
    cell = code_cell(w)
    if index >= 1 << CODE_BITS:
        raise ValueError(f"frame index {index} does not fit in {CODE_BITS} stamp bits")
    image[: cell + 2 * (cell // 4), : (CODE_BITS + 2) * cell] = (0, 0, 255)  # blue band behind the cells
    for bit in range(CODE_BITS):
        value = 255 if (index >> bit) & 1 else 0
        x = (bit + 1) * cell
        image[cell // 4 : cell // 4 + cell, x : x + cell] = value
    text = f"#{index}  {seconds:.3f}s"
    scale = max(0.4, h / 400)
    org = (cell, min(h - 4, cell * 2 + int(28 * scale)))
    for color, weight in (((0, 0, 0), 4), ((255, 255, 255), 2)):  # white on a black outline
        thickness = max(1, int(weight * scale))
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def read_stamp(image: np.ndarray, made_width: int | None = None) -> int:
    """The frame index burnt in by :func:`draw_stamp`, from an RGB frame; ``made_width`` is the width
    the clip was made at when the frame was scaled since (e.g. by capture's ``max_side``)."""
    width = image.shape[1]
    cell = code_cell(made_width or width) * width / (made_width or width)
    y = round(cell / 4 + cell / 2)
    r = max(1, round(cell / 4))
    index = 0
    for bit in range(CODE_BITS):
        x = round((bit + 1.5) * cell)
        patch = image[y - r : y + r + 1, x - r : x + r + 1]
        if float(patch.mean()) > 127.5:
            index |= 1 << bit
    return index


def frames(
    photos: Sequence[np.ndarray], width: int, height: int, fps: float, count: int, stamp: bool = True
) -> Iterator[np.ndarray]:
    """``count`` RGB frames: each photo for SECONDS_PER_PHOTO seconds, panned and zoomed."""
    per_photo = max(1, round(SECONDS_PER_PHOTO * fps))
    for index in range(count):
        photo = photos[(index // per_photo) % len(photos)]
        image = pan_zoom(photo, width, height, (index % per_photo) / per_photo)
        if stamp:
            draw_stamp(image, index, index / fps)
        yield image


def make_video(
    out: Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: float = 30.0,
    seconds: float = 10.0,
    codec: str = "libx264",
    crf: int = 23,
    preset: str = "veryfast",
    gop: int | None = None,
    stamp: bool = True,
    photos: Sequence[Path] | None = None,
    pix_fmt: str | None = None,
    x264_params: str = "",
) -> int:
    """Encode the clip to ``out`` (container from the suffix); returns the number of frames.

    ``pix_fmt`` defaults to yuv420p (yuvj420p for mjpeg); ``x264_params`` passes libx264 settings
    such as ``colormatrix=bt709:fullrange=on`` (colour tags the decoder then reports)."""
    if width % 2 or height % 2:
        raise ValueError(f"size {width}x{height}: width and height must be even (yuv420p)")
    count = max(1, round(seconds * fps))
    rate = Fraction(fps).limit_denominator(1001)
    try:
        is_video = av.Codec(codec, "w").type == "video"
    except av.codec.codec.UnknownCodecError:
        is_video = False
    if not is_video:
        raise ValueError(f"codec {codec!r} is not a video encoder this PyAV build has")
    images = load_photos(photos)
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset, "g": str(gop or max(1, round(2 * fps)))}
            if x264_params:
                stream.options |= {"x264-params": x264_params}
        for index, image in enumerate(frames(images, width, height, fps, count, stamp)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return count


# Bump when the demo clip's content or encoding changes: clips of other versions are then rebuilt.
DEMO_VERSION = 1
DEMO_SIZE = (960, 540)
DEMO_FPS = 25.0
DEMO_SECONDS = 30.0  # looped when played
_ABANDONED_AFTER_S = 600.0  # a partial clip this old was left by a build that died


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vidnarrate``, or ``~/.cache/vidnarrate`` (a relative XDG path is ignored,
    as the XDG spec asks)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "vidnarrate"


def demo_clip(folder: Path | None = None) -> Path:
    """The ``demo`` source's clip in ``folder`` (default :func:`cache_dir`), built when it is missing
    or was made by another :data:`DEMO_VERSION`.

    The clip is written under a temporary name and renamed into place, so two runs starting at once
    may both build it, but neither ever opens a half-written clip."""
    folder = folder or cache_dir()
    clip = folder / f"demo-v{DEMO_VERSION}.mp4"
    if clip.is_file():
        return clip
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=".demo-", suffix=".partial.mp4", dir=folder)
        os.close(handle)
    except OSError as exc:
        raise VidnarrateError(
            f"demo source: cannot write its clip to {folder}: {exc.strerror} "
            "(set XDG_CACHE_HOME to a writable folder)"
        ) from None
    log.info("building the demo clip %s (once; about 10 s)", clip)
    try:
        width, height = DEMO_SIZE
        make_video(Path(partial), width=width, height=height, fps=DEMO_FPS, seconds=DEMO_SECONDS)
        os.chmod(partial, 0o644)  # mkstemp's 0600 is for the partial file, not the cached clip
        os.replace(partial, clip)
    finally:
        Path(partial).unlink(missing_ok=True)
    _remove_stale(folder, keep=clip)
    return clip


def _remove_stale(folder: Path, keep: Path) -> None:
    """Clips of other versions, and partial clips whose build died (a build in progress is young)."""
    for old in folder.glob("demo-v*.mp4"):
        if old != keep:
            old.unlink(missing_ok=True)
    now = time.time()
    for partial in folder.glob(".demo-*.partial.mp4"):
        try:
            if now - partial.stat().st_mtime > _ABANDONED_AFTER_S:
                partial.unlink()
        except FileNotFoundError:
            pass  # its build finished (renamed) or another run removed it meanwhile
