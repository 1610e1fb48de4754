"""``vidnarrate caption FILE``: the live pipeline's captioning, run over a file as fast as possible.

The shell that drives the scheduling core (:class:`~stream.scheduler.Scheduler`, the same as the live
inference process) from a decoder: frames are decoded straight from the file (no real-time pacing,
no ring, no child processes), stamped with stream time as capture stamps a file
(:class:`~stream.timeline.Timeline`), and converted to RGB only when the core keeps them. Offline
settings (model card: ``max_slice_nums=2``) and **no window skipped**: every stride of the file gets
its caption (or, where the scene did not change, an ``unchanged`` caption extending the last one),
and the last window ends where the file's video ends. Captions are written as they are
made, so nothing produced is lost if the run is interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av

if TYPE_CHECKING:
    from model.backends import CaptionBackend

from . import change
from .actions import Caption, Encode, Extend
from .captioning import CaptionSettings
from .errors import UnsupportedSource
from .exports import CaptionWriter, open_writer
from .scheduler import Scheduler
from .sources import SourceOptions, open_source, parse_source
from .timeline import Timeline

log = logging.getLogger(__name__)

# Frames encoded per vision batch while no window is due (1 fps sampling: 16 s of video).
ENCODE_BATCH = 16


@dataclass(frozen=True)
class OfflineResult:
    captions: list[dict[str, Any]]
    duration: float  # stream time of the last frame
    frames: int
    decode_errors: int
    outputs: list[Path]


def probe_duration(path: str) -> float | None:
    """The file's duration in seconds (of stream time, which starts at 0) when the container says,
    else None. Some muxers (Matroska with shifted timestamps) store the end time as the duration: a
    start time past half of it gives that away."""
    try:
        with av.open(path) as container:
            if not container.duration:
                return None
            duration = container.duration / av.time_base
            start = (container.start_time or 0) / av.time_base
            return duration - start if 0 < duration / 2 < start < duration else duration
    except (av.FFmpegError, OSError):
        return None


def check_video_file(path: str, max_side: int = 1344) -> None:
    """Open the file and decode its first frame, so that a file that is not a video (text, audio
    only, empty, unreadable) is refused in a second, before a model is loaded for it. Raises the
    source's own clear error (naming the file and the reason)."""
    with open_source(path, SourceOptions(max_side=max_side, realtime=False)) as source:
        if next(iter(source.pending()), None) is None:
            raise UnsupportedSource(f"file source {path!r}: no video frame could be decoded from it")


def caption_file(
    path: str,
    backend: CaptionBackend,
    settings: CaptionSettings,
    outputs: Sequence[Path],
    *,
    max_side: int = 1344,
    stream: str | None = None,
    progress: Callable[[float], None] | None = None,
    sinks: Sequence[CaptionWriter] = (),
) -> OfflineResult:
    """Caption the whole file; write each caption to every output, and to each of ``sinks`` (writers
    the caller opened and closes: the store), as it is made."""
    spec = parse_source(path)
    if spec.kind != "file":
        raise UnsupportedSource(
            f"caption: {spec.label!r} is not a file (use `vidnarrate run` for live sources)"
        )
    name = stream or Path(spec.target).stem
    for_user = getattr(backend, "for_user", None)  # a server's requests name the stream, as in `run`
    backend = for_user(name) if for_user is not None else backend
    core = Scheduler(settings, model=backend.name)
    core.add_stream(name, hold_last=True)  # the last window ends where the video ends
    timeline = Timeline(max_jump=None, name=name)  # stamped as capture stamps a file
    # Outputs are opened at the first caption: a file that fails before any caption is made leaves
    # whatever the output paths held (an earlier run's captions) untouched.
    writers: list[CaptionWriter] = []
    captions: list[dict[str, Any]] = []

    def run_actions(min_batch: int) -> None:
        while (action := core.next_action(min_batch=min_batch)) is not None:
            if isinstance(action, Encode):
                started = time.monotonic()
                embeddings = action.run_on(backend)
                core.encoded(action, embeddings, ms=(time.monotonic() - started) * 1000)
            elif isinstance(action, Caption):
                write(caption(action))
            elif isinstance(action, Extend):  # the scene did not change: no model call
                write(core.extended(action, wall=time.time()).to_dict())
            # No asks offline, so no Answer or Reply.

    def caption(action: Caption) -> dict[str, Any]:
        """The caption as the JSON clients receive (what the caption files hold)."""
        started = time.monotonic()
        text = action.run_on(backend)
        model_ms = (time.monotonic() - started) * 1000
        return core.captioned(action, text, model_ms=model_ms, wall=time.time()).to_dict()

    def write(message: dict[str, Any]) -> None:
        captions.append(message)
        if not writers:
            writers.extend(open_writer(Path(p)) for p in outputs)
        for writer in [*writers, *sinks]:
            writer.write(message)

    frames = 0
    decode_errors = 0
    try:
        with open_source(spec, SourceOptions(max_side=max_side, realtime=False)) as source:
            for seq, pending in enumerate(source.pending()):
                frames += 1
                t = timeline.stamp(pending.pts, pending.wall)
                if t is None:
                    continue
                if core.offer(name, seq, t, pending.wall):
                    # Only kept frames are converted to RGB (about 1 in 25 at 1-fps sampling).
                    image = pending.to_video_frame().image
                    signature = change.signature(image) if settings.unchanged_threshold > 0 else None
                    core.add_pixels(name, seq, image, signature)
                run_actions(ENCODE_BATCH)
                if progress is not None:
                    progress(t)
            decode_errors = source.decode_errors
        core.end_stream(name, timeline.end)
        run_actions(1)
        if not writers:  # a file with no caption still gets its (empty) outputs
            writers.extend(open_writer(Path(p)) for p in outputs)
    finally:
        for writer in writers:
            writer.close()
    return OfflineResult(
        captions=captions,
        duration=timeline.last or 0.0,
        frames=frames,
        decode_errors=decode_errors,
        outputs=[Path(p) for p in outputs],
    )
