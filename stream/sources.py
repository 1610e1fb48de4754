"""Opening a video source from a string: :func:`open_source` picks the decoder; callers import here.

``parse_source(text)`` turns what a user typed into a :class:`SourceSpec` (:mod:`stream.sourcespec`);
``open_source(spec, options)`` opens it, raising a :class:`~stream.errors.SourceError` in one line that
names the source once and the reason in words, and returns a :class:`VideoSource`
(:mod:`stream.videosource`). Where the rest lives: real-time pacing in :mod:`stream.pacing`, RGB
conversion and downscaling in :mod:`stream.rgb`, files and network streams (PyAV) in
:mod:`stream.decoders`, webcams and the screen in :mod:`stream.devices`.
"""

from __future__ import annotations

from .decoders import FileSource, NetworkSource
from .devices import ScreenSource, WebcamSource
from .rgb import RGB_OVERRUN_BYTES
from .sourcespec import SourceOptions, SourceSpec, parse_source
from .videosource import PendingFrame, VideoFrame, VideoSource

__all__ = [
    "RGB_OVERRUN_BYTES",
    "PendingFrame",
    "SourceOptions",
    "SourceSpec",
    "VideoFrame",
    "VideoSource",
    "open_source",
    "parse_source",
]

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
