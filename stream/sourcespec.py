"""What to open and how: a source string parsed into a :class:`SourceSpec`, and :class:`SourceOptions`.

Plain values, no I/O.

Accepted strings::

    clip.mp4, /path/x.mkv, file:///path/x.ts     a file PyAV can read (paced at real time by default)
    rtsp://..., rtsps://...                       RTSP camera, TCP transport by default
    http(s)://...                                 MJPEG over HTTP, HLS playlists, or a remote file
    webcam, webcam:N, /dev/videoN                 a camera through OpenCV (V4L2 on Linux)
    screen, screen:DISPLAY (screen::99, screen:99) the X screen through mss
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from .config import DECODE_MODES, HWACCEL_CHOICES
from .errors import UnsupportedSource
from .settings import check_settings, setting

SourceKind = Literal["file", "network", "webcam", "screen"]

ACCEPTED = (
    "a video file path (or file://PATH), rtsp://, rtsps://, http://, https:// (MJPEG, HLS), "
    "webcam:N, /dev/videoN, screen or screen:DISPLAY (e.g. screen::99)"
)
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")

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


def _max_side_rule(side: int) -> str | None:
    return None if side == 0 or side >= 16 else f"{side!r} is not 0 (no limit) or at least 16"


@dataclass(frozen=True)
class SourceOptions:
    """How to open and read a source. Picklable, so it travels to the capture process as is.

    ``max_side``: long side limit in pixels (0 = keep the source size). ``realtime``: pace files by
    their pts (False = as fast as possible, for offline work). ``loop``: replay a file forever as if
    it were live (demos). ``open_timeout``/``read_timeout``: seconds for network sources (PyAV
    notices a hung server after about twice the read timeout; capture's watchdog bounds it too).
    ``fps_hint``: screen grabs per second. ``rtsp_transport``: ``tcp`` (default) or ``udp``.
    ``decode``/``sample_fps``: ``"sampled"`` makes capture decode and write only the frames a sampler
    at ``sample_fps`` keeps (:mod:`stream.decodeplan`; plain iteration of a source decodes every
    frame whatever it says). ``hwaccel``: the hardware decoder to try (:mod:`stream.hwdecode`); software
    unless asked, as for the checks and the offline command: ``[capture] hwaccel`` (default ``auto``)
    sets it for the capture processes.
    ``nice``: the capture process's CPU priority (Unix nice, set when it starts; 0 keeps it).
    The limits are checked by :func:`~stream.settings.check_settings`, the config's validator; the
    ``[capture]`` section sets most of these (``stream.pipeline.source_options``).
    """

    max_side: int = setting(1344, rule=_max_side_rule)
    realtime: bool = True
    loop: bool = False
    open_timeout: float = setting(10.0, above=0)
    read_timeout: float = setting(5.0, above=0)
    fps_hint: float = setting(5.0, above=0)
    rtsp_transport: Literal["tcp", "udp"] = setting("tcp", choices=("tcp", "udp"))
    decode: str = setting("sampled", choices=DECODE_MODES)
    sample_fps: float = setting(1.0, above=0)
    hwaccel: str = setting("none", choices=HWACCEL_CHOICES)
    nice: int = setting(0, low=0, high=19)

    def __post_init__(self) -> None:
        check_settings("source", self)
