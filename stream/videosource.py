"""The interface every source implements: :class:`VideoSource` and the frames it yields.

A :class:`VideoSource` is a context manager whose iterator yields :class:`VideoFrame` (a C-contiguous
RGB ``uint8 (H, W, 3)`` image, the frame's ``pts`` on the source's own timeline in seconds, and the
wall-clock time it was decoded), and whose :meth:`~VideoSource.pending` yields :class:`PendingFrame`,
converted only where the caller says (capture converts straight into a ring slot:
:class:`~stream.rgb.DirectRGB` explains why).

What the iterator ending means: for a file, the end (the caller calls it *ended*); for a network,
webcam or screen source, the connection dropped, and the capture loop reconnects. An http(s) source
with a known duration (a remote file, an HLS VOD playlist) is finite like a file: see
:attr:`VideoSource.finite`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .decodeplan import Demand
from .rgb import padded_rgb
from .sourcespec import SourceOptions, SourceSpec


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: RGB uint8 (H, W, 3), C-contiguous; ``pts`` in seconds of the source's own
    timeline (not yet stream time: capture maps it); ``wall`` = time.time() at decode."""

    image: np.ndarray
    pts: float
    wall: float


@dataclass(frozen=True)
class PendingFrame:
    """A decoded frame before its RGB conversion. ``fill(out)`` writes it, converted (and scaled to
    ``max_side``), into ``out``: a C-contiguous uint8 ``(height, width, 3)`` array, such as a ring
    slot, so capture converts straight into shared memory instead of converting and then copying.
    ``fill_padded``, where a source has it, does the same faster for an ``out`` followed by
    :data:`~stream.rgb.RGB_OVERRUN_BYTES` spare bytes it may clobber (a ring slot,
    :func:`~stream.rgb.padded_rgb`).
    Call either before asking the source for the next frame (sources reuse scratch buffers)."""

    height: int
    width: int
    pts: float
    wall: float
    fill: Callable[[np.ndarray], None]
    fill_padded: Callable[[np.ndarray], None] | None = None
    # Seconds since the frame before it in the source, where the source skipped decoding frames in
    # between that the sampling rule must still count (stream.decodeplan); None: the previous frame.
    gap: float | None = None

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

    # Set by capture under ``[capture] decode = "sampled"``: sources that can skip decoding frames the
    # sampler will not keep (stream.decodeplan) read it; the others deliver every frame as before.
    demand: Demand | None = None

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
