"""Caption files: JSON Lines and subtitles (WebVTT, SRT), written as captions arrive.

Each writer appends and flushes one caption at a time, so an interrupted or failed run keeps every
caption produced before it. Dense captions overlap in time (a 16-s window every 8 s); as subtitles a
caption is shown from the end of the previous caption's window to the end of its own, so cues follow
each other without overlapping and the text on screen always describes the moments just shown.

A caption marked ``unchanged`` (the scene did not change, so the model was not called: same text,
later ``t_end``) does not make a cue of its own in subtitles: the previous cue is extended to its end
(rewritten in place, so the file is complete after every caption). JSON Lines keeps every message.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from .errors import ConfigError


class CaptionWriter(Protocol):
    path: Path

    def write(self, caption: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def timestamp(seconds: float, *, comma: bool = False) -> str:
    """``HH:MM:SS.mmm`` (WebVTT) or ``HH:MM:SS,mmm`` (SRT)."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    sep = "," if comma else "."
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


class JsonLinesWriter:
    """One ``caption`` message per line, exactly as the websocket clients receive it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def write(self, caption: dict[str, Any]) -> None:
        self._file.write(json.dumps(caption, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _SubtitleWriter:
    comma = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("w", encoding="utf-8")
        self._shown_until = 0.0
        self._count = 0
        self._header()
        self._last_at = 0  # file position of the last cue (what an unchanged caption rewrites)
        self._last_start = ""

    def _header(self) -> None:
        pass

    def _cue(self, start: str, end: str, text: str) -> str:
        raise NotImplementedError

    def write(self, caption: dict[str, Any]) -> None:
        text = " ".join(str(caption["text"]).split()) or "…"
        end = float(caption["t_end"])
        if caption.get("unchanged") and self._count:
            if end > self._shown_until:  # (a window ending no later is already covered)
                self._file.seek(self._last_at)
                self._file.truncate()
                self._file.write(self._cue(self._last_start, timestamp(end, comma=self.comma), text))
                self._file.flush()
                self._shown_until = end
            return
        start = min(max(self._shown_until, float(caption["t_start"])), end)
        if end <= start:  # a window ending no later than the previous one: show it briefly
            end = start + 0.5
        self._shown_until = end
        self._count += 1
        self._last_at = self._file.tell()
        self._last_start = timestamp(start, comma=self.comma)
        self._file.write(self._cue(self._last_start, timestamp(end, comma=self.comma), text))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class WebVttWriter(_SubtitleWriter):
    def _header(self) -> None:
        self._file.write("WEBVTT\n\n")
        self._file.flush()

    def _cue(self, start: str, end: str, text: str) -> str:
        # "-->" inside a cue's text would end it early; WebVTT has no escape for it.
        text = text.replace("-->", "->").replace("&", "&amp;").replace("<", "&lt;")
        return f"{self._count}\n{start} --> {end}\n{text}\n\n"


class SrtWriter(_SubtitleWriter):
    comma = True

    def _cue(self, start: str, end: str, text: str) -> str:
        return f"{self._count}\n{start} --> {end}\n{text}\n\n"


WRITERS: dict[str, type] = {".jsonl": JsonLinesWriter, ".vtt": WebVttWriter, ".srt": SrtWriter}


def open_writer(path: Path) -> CaptionWriter:
    """A writer chosen by the file's extension (.jsonl, .vtt, .srt); missing folders are created."""
    kind = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return kind(path)


def check_output(path: Path) -> type:
    """The writer class for ``path``'s extension; ConfigError naming the file if there is none."""
    kind = WRITERS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"--out {path}: unknown caption format {path.suffix!r}; use .jsonl, .vtt or .srt")
    return kind


def check_outputs(paths: Sequence[Path], *, source: Path | None = None) -> None:
    """Refuse, before a model loads, outputs that could not be written: an unknown format, a path
    given twice or equal to ``source`` (the input), a folder, a parent that is a file, a folder
    where nothing can be created. ConfigError naming the path and the reason. Creates and changes
    nothing: missing folders are made when the first caption is written."""
    seen: set[Path] = set()
    for path in paths:
        check_output(path)
        where = Path(os.path.abspath(path))
        if where in seen:
            raise ConfigError(f"--out {path}: given twice")
        seen.add(where)
        if source is not None and (where == Path(os.path.abspath(source)) or _same_file(path, source)):
            raise ConfigError(f"--out {path}: that is the input file")
        if where.is_dir():
            raise ConfigError(f"--out {path}: is a folder, not a file")
        if where.exists():
            if not os.access(where, os.W_OK):
                raise ConfigError(f"--out {path}: not writable (permission denied)")
            continue
        folder = path.parent
        while not folder.exists():  # ends: "." or "/" exists
            folder = folder.parent
        if not folder.is_dir():
            raise ConfigError(f"--out {path}: {folder} is a file, not a folder")
        _check_creatable(path, folder)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_creatable(path: Path, folder: Path) -> None:
    """Create and remove a scratch entry in ``folder``: what can be created there is the file
    system's answer (permission bits, read-only mounts, /proc), which ``os.access`` is not."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vidnarrate-check-", dir=folder))
    except OSError as exc:
        reason = {
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "a read-only file system",
            errno.ENOENT: "this file system does not hold files",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise ConfigError(f"--out {path}: nothing can be created in {folder} ({reason})") from None
