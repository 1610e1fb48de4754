"""Caption files: JSON Lines and subtitles written as captions arrive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.errors import ConfigError
from stream.exports import open_writer, timestamp


def caption(seq: int, t_start: float, t_end: float, text: str) -> dict:
    return {"type": "caption", "stream": "cam", "seq": seq, "t_start": t_start, "t_end": t_end, "text": text}


def test_timestamps() -> None:
    assert timestamp(0) == "00:00:00.000"
    assert timestamp(3723.4567) == "01:02:03.457"
    assert timestamp(59.9996, comma=True) == "00:01:00,000"


def test_overlapping_windows_become_consecutive_cues(tmp_path: Path) -> None:
    vtt, srt, jsonl = (open_writer(tmp_path / f"c.{ext}") for ext in ("vtt", "srt", "jsonl"))
    captions = [
        caption(0, 0, 8, "A man walks in."),
        caption(1, 0, 16, "He sits <down> --> & waits."),
        caption(2, 8, 19.5, "  Two\nlines "),
    ]
    for writer in (vtt, srt, jsonl):
        writer.write(captions[0])
    # written and flushed as they arrive: readable before the writer is closed
    assert "A man walks in." in (tmp_path / "c.vtt").read_text()
    for writer in (vtt, srt, jsonl):
        for c in captions[1:]:
            writer.write(c)
        writer.close()
    assert (tmp_path / "c.vtt").read_text() == (
        "WEBVTT\n\n"
        "1\n00:00:00.000 --> 00:00:08.000\nA man walks in.\n\n"
        "2\n00:00:08.000 --> 00:00:16.000\nHe sits &lt;down> -> &amp; waits.\n\n"
        "3\n00:00:16.000 --> 00:00:19.500\nTwo lines\n\n"
    )
    assert (
        "2\n00:00:08,000 --> 00:00:16,000\nHe sits <down> --> & waits.\n" in (tmp_path / "c.srt").read_text()
    )
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert lines == captions


def test_unknown_format_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown caption format '.txt'"):
        open_writer(tmp_path / "c.txt")
