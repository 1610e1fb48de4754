"""Caption files: JSON Lines and subtitles written as captions arrive."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from stream.errors import ConfigError
from stream.exports import check_outputs, open_writer, timestamp


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


def test_unchanged_captions_extend_the_previous_cue_and_every_message_stays_in_jsonl(tmp_path: Path) -> None:
    vtt, srt, jsonl = (open_writer(tmp_path / f"c.{ext}") for ext in ("vtt", "srt", "jsonl"))
    still = "An empty platform."
    captions = [
        caption(0, 0, 8, still),
        caption(1, 0, 16, still) | {"unchanged": True},
        caption(2, 0, 24, still) | {"unchanged": True},
        caption(3, 16, 32, "A train arrives."),
        caption(4, 16, 40, "A train arrives.") | {"unchanged": True},
    ]
    for writer in (vtt, srt, jsonl):
        writer.write(captions[0])
        writer.write(captions[1])
    # the extended cue is on disk before the writer is closed (rewritten in place, not held back)
    assert (tmp_path / "c.vtt").read_text() == f"WEBVTT\n\n1\n00:00:00.000 --> 00:00:16.000\n{still}\n\n"
    for writer in (vtt, srt, jsonl):
        for c in captions[2:]:
            writer.write(c)
        writer.close()
    assert (tmp_path / "c.vtt").read_text() == (
        "WEBVTT\n\n"
        f"1\n00:00:00.000 --> 00:00:24.000\n{still}\n\n"
        "2\n00:00:24.000 --> 00:00:40.000\nA train arrives.\n\n"
    )
    assert (tmp_path / "c.srt").read_text() == (
        f"1\n00:00:00,000 --> 00:00:24,000\n{still}\n\n2\n00:00:24,000 --> 00:00:40,000\nA train arrives.\n\n"
    )
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert lines == captions


def test_an_unchanged_caption_first_or_ending_no_later_makes_no_stray_cue(tmp_path: Path) -> None:
    vtt = open_writer(tmp_path / "c.vtt")
    vtt.write(caption(4, 0, 16, "Still.") | {"unchanged": True})  # e.g. a file started mid-run
    vtt.write(caption(5, 0, 12, "Still.") | {"unchanged": True})  # ends before what is shown
    vtt.close()
    assert (tmp_path / "c.vtt").read_text() == "WEBVTT\n\n1\n00:00:00.000 --> 00:00:16.000\nStill.\n\n"


def test_unknown_format_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown caption format '.txt'"):
        open_writer(tmp_path / "c.txt")


def test_outputs_that_cannot_be_written_are_refused_naming_the_path_and_the_reason(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"video")
    (tmp_path / "out.vtt").mkdir()
    (tmp_path / "same.vtt").write_text("made by an earlier run")
    cases = {
        clip / "sub.vtt": f"{clip} is a file, not a folder",
        clip / "deeper" / "sub.vtt": f"{clip} is a file, not a folder",
        tmp_path / "out.vtt": "is a folder, not a file",
        tmp_path / "c.txt": "unknown caption format '.txt'",
    }
    for out, reason in cases.items():
        with pytest.raises(ConfigError) as refused:
            check_outputs([tmp_path / "fine.vtt", out], source=clip)
        assert str(refused.value).startswith(f"--out {out}: {reason}"), refused.value
    with pytest.raises(ConfigError, match="same.vtt: given twice"):
        check_outputs([tmp_path / "same.vtt", tmp_path / "sub" / ".." / "same.vtt"])
    with pytest.raises(ConfigError, match="same.vtt: that is the input file"):
        check_outputs([tmp_path / "same.vtt"], source=tmp_path / "same.vtt")
    link = tmp_path / "link.vtt"
    link.symlink_to(tmp_path / "same.vtt")
    with pytest.raises(ConfigError, match="link.vtt: that is the input file"):
        check_outputs([link], source=tmp_path / "same.vtt")
    assert (tmp_path / "same.vtt").read_text() == "made by an earlier run", "nothing is touched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "link.vtt", "out.vtt", "same.vtt"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_folder_where_nothing_can_be_created_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--out /proc/nope/x.vtt: nothing can be created in /proc \("):
        check_outputs([Path("/proc/nope/x.vtt")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_a_folder_without_write_permission_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match=r"nothing can be created in .*locked \(permission denied\)"):
            check_outputs([locked / "new" / "c.vtt"])
    finally:
        locked.chmod(0o700)


def test_missing_folders_are_fine_and_not_made_by_the_check(tmp_path: Path) -> None:
    check_outputs([tmp_path / "new" / "deeper" / "c.vtt", tmp_path / "c.srt"], source=tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []
