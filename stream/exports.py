"""Caption files: JSON Lines and subtitles (WebVTT, SRT), written as captions arrive.

Each writer appends and flushes one caption at a time, so an interrupted or failed run keeps every
caption produced before it. Dense captions overlap in time (a 16-s window every 8 s); as subtitles a
caption is shown from the end of the previous caption's window to the end of its own, so cues follow
each other without overlapping and the text on screen always describes the moments just shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Protocol


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

    def _header(self) -> None:
        pass

    def _cue(self, start: str, end: str, text: str) -> str:
        raise NotImplementedError

    def write(self, caption: dict[str, Any]) -> None:
        end = float(caption["t_end"])
        start = min(max(self._shown_until, float(caption["t_start"])), end)
        if end <= start:  # a window ending no later than the previous one: show it briefly
            end = start + 0.5
        self._shown_until = end
        self._count += 1
        text = " ".join(str(caption["text"]).split()) or "…"
        self._file.write(
            self._cue(timestamp(start, comma=self.comma), timestamp(end, comma=self.comma), text)
        )
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
    from .errors import ConfigError

    kind = WRITERS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"--out {path}: unknown caption format {path.suffix!r}; use .jsonl, .vtt or .srt")
    return kind
