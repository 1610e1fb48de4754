"""``vidnarrate caption FILE``: the live pipeline's captioning, run over a file as fast as possible.

Frames are decoded straight from the file (no real-time pacing, no ring, no child processes) and go
through the same :class:`~stream.captioning.Captioner` as the live inference process, with the
offline settings (model card: ``max_slice_nums=2``) and **no window skipped**: every stride of the
file gets its caption, and the file's tail gets a last, shorter window. Captions are written as they
are made, so nothing produced is lost if the run is interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from .captioning import Captioner, CaptionSettings
from .errors import UnsupportedSource
from .exports import CaptionWriter, open_writer
from .sources import SourceOptions, open_source, parse_source

log = logging.getLogger(__name__)

# Frames encoded per vision batch while reading ahead (1 fps sampling: 16 s of video).
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
    backend: Any,
    settings: CaptionSettings,
    outputs: Sequence[Path],
    *,
    max_side: int = 1344,
    stream: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> OfflineResult:
    """Caption the whole file; write each caption to every output as it is made."""
    spec = parse_source(path)
    if spec.kind != "file":
        raise UnsupportedSource(
            f"caption: {spec.label!r} is not a file (use `vidnarrate run` for live sources)"
        )
    name = stream or Path(spec.target).stem
    captioner = Captioner(backend, settings)
    worker = captioner.add_stream(name)
    # Outputs are opened at the first caption: a file that fails before any caption is made leaves
    # whatever the output paths held (an earlier run's captions) untouched.
    writers: list[CaptionWriter] = []
    captions: list[dict[str, Any]] = []

    def open_outputs() -> None:
        if not writers:
            writers.extend(open_writer(Path(p)) for p in outputs)

    def drain() -> None:
        captioner.encode_pending()
        while (job := captioner.next_job()) is not None:
            message = captioner.caption(*job)
            if message is None:
                continue
            caption = message.to_dict()  # the caption files hold the JSON clients receive
            captions.append(caption)
            open_outputs()
            for writer in writers:
                writer.write(caption)

    frames = 0
    decode_errors = 0
    try:
        with open_source(spec, SourceOptions(max_side=max_side, realtime=False)) as source:
            for seq, frame in enumerate(source):
                frames += 1
                worker.offer(seq, frame.pts, frame.wall, lambda image=frame.image: image)
                if worker.due or len(worker.pending) >= ENCODE_BATCH:
                    drain()
                if progress is not None:
                    progress(worker.latest_t)
            decode_errors = source.decode_errors
        worker.finish()
        drain()
        open_outputs()  # a file with no caption still gets its (empty) outputs
    finally:
        for writer in writers:
            writer.close()
    return OfflineResult(
        captions=captions,
        duration=worker.latest_t,
        frames=frames,
        decode_errors=decode_errors,
        outputs=[Path(p) for p in outputs],
    )
