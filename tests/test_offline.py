"""``vidnarrate caption FILE``: a whole file captioned offline, as fast as it goes, into JSONL and WebVTT."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
from liverun import VIDNARRATE
from realparts import load_tool, make_clip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_caption_covers_the_whole_file_faster_than_real_time(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "walk.mp4", size="640x360", fps=30.0, seconds=30.0)
    out = tmp_path / "out"  # does not exist yet: caption creates it
    started = time.monotonic()
    done = subprocess.run(
        [
            str(VIDNARRATE),
            "caption",
            str(clip),
            "--model",
            "tiny",
            "--set",
            "captions.max_new_tokens=4",
            "--out",
            str(out / "walk.jsonl"),
            "--out",
            str(out / "walk.vtt"),
            "--out",
            str(out / "walk.srt"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    captions = [json.loads(line) for line in (out / "walk.jsonl").read_text().splitlines()]
    # offline defaults: 16-s windows every 8 s, every window captioned (none skipped), tail included
    assert [c["seq"] for c in captions] == list(range(len(captions)))
    assert all(c["skipped"] == 0 for c in captions)
    assert captions[0]["t_start"] == 0.0 and captions[0]["frame_times"][0] == 0.0
    assert captions[-1]["t_end"] == 30.0  # where the last frame (29.967 s) ends: the whole clip
    covered = 0.0
    for c in captions:
        assert c["t_start"] <= covered + 1e-6, "no part of the file is left out"
        covered = max(covered, c["t_end"])
        times = c["frame_times"]
        assert times == sorted(times) and all(c["t_start"] <= t <= c["t_end"] for t in times)
        assert len(times) <= 16
    all_times = sorted({t for c in captions for t in c["frame_times"]})
    assert all_times == [float(i) for i in range(30)], "one frame per second of the file, each used"
    vtt = (out / "walk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:08.000\n")
    assert vtt.count(" --> ") == len(captions)
    assert (out / "walk.srt").read_text().count(" --> ") == len(captions)
    assert f"{len(captions)} captions over 30.0 s" in done.stdout
    assert elapsed < 60, "offline captioning reads the file as fast as it can"


def test_caption_refuses_a_missing_file_and_a_bad_output(tmp_path: Path) -> None:
    missing = subprocess.run(
        [str(VIDNARRATE), "caption", str(tmp_path / "nope.mp4"), "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr and "nope.mp4" in missing.stderr
    clip = make_clip(tmp_path / "c.mp4", seconds=2.0)
    bad = subprocess.run(
        [str(VIDNARRATE), "caption", str(clip), "--model", "tiny", "--out", str(tmp_path / "c.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown caption format '.txt'" in bad.stderr


def test_caption_refuses_what_is_not_video_and_keeps_earlier_outputs(tmp_path: Path) -> None:
    """A directory, a text file named .mp4, an audio-only file: one line naming it and why, exit 2,
    before the model loads; an earlier run's captions at the output path are left as they were."""
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    audio = tmp_path / "sound.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text('{"type": "caption", "text": "from an earlier run"}\n')
    cases = {tmp_path: "is a directory", text: "not a video file", audio: "has no video stream"}
    for path, reason in cases.items():
        refused = subprocess.run(
            [str(VIDNARRATE), "caption", str(path), "--model", "tiny", "--out", str(earlier)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and reason in refused.stderr and str(path) in refused.stderr
        assert "Traceback" not in refused.stderr and "loading" not in refused.stderr.lower()
    assert earlier.read_text() == '{"type": "caption", "text": "from an earlier run"}\n'


def _encode(path: Path, *, frames: int, fps: int = 10, first_pts_s: float = 0.0, **options: str) -> Path:
    """A real H.264 file of ``frames`` distinct frames whose timestamps start at ``first_pts_s``."""
    import fractions

    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, fps)
        rng = np.random.default_rng(1)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (96, 128, 3), np.uint8), format="rgb24")
            frame.pts = index + round(first_pts_s * fps)
            frame.time_base = fractions.Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_progress_total_is_stream_time_and_a_truncated_file_is_flagged(tmp_path: Path) -> None:
    from stream.offline import probe_duration

    shifted = _encode(tmp_path / "shifted.mkv", frames=60, first_pts_s=36000.0)  # a DVR's clock time
    assert probe_duration(str(shifted)) == pytest.approx(6.0, abs=0.3)  # not 36006 s
    whole = _encode(tmp_path / "whole.mp4", frames=120, movflags="faststart")  # index first, then data
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    done = subprocess.run(
        [
            str(VIDNARRATE),
            "caption",
            str(cut),
            "--model",
            "tiny",
            "--no-progress",
            "--out",
            str(tmp_path / "c.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "cut.mp4 ended at" in done.stderr and "of the 12.0 s its header declares" in done.stderr, (
        done.stderr
    )
    complete = subprocess.run(
        [
            str(VIDNARRATE),
            "caption",
            str(whole),
            "--model",
            "tiny",
            "--no-progress",
            "--out",
            str(tmp_path / "w.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert complete.returncode == 0 and "truncated" not in complete.stderr, complete.stderr


def test_a_still_camera_is_captioned_once_and_again_only_for_its_event(tmp_path: Path) -> None:
    """A real H.264 clip of a photo held still with sensor noise; a person-sized walker crosses it
    from 40 s to 45 s. Offline windows: 16 s every 8 s."""
    clip = tmp_path / "still.mp4"
    load_tool("make_still_clip").make_still_clip(clip, seconds=80, fps=5, event=(40.0, 5.0), noise=6.0)
    out = tmp_path / "still"
    done = subprocess.run(
        [
            str(VIDNARRATE),
            "caption",
            str(clip),
            "--model",
            "tiny",
            "--set",
            "captions.max_new_tokens=4",
            "--out",
            str(out.with_suffix(".jsonl")),
            "--out",
            str(out.with_suffix(".vtt")),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    captions = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [c["t_end"] for c in captions] == [8.0 * k for k in range(1, 11)]
    captioned = [c["t_end"] for c in captions if not c.get("unchanged")]
    event = [c["t_end"] for c in captions if any(40.0 <= t < 45.0 for t in c["frame_times"])]
    assert event == [40.0, 48.0, 56.0]
    assert set(event) <= set(captioned), "every window showing the walker went to the model"
    # the first window; the event's two; the first still one after it (compared with a window that
    # showed the walker); every other window extends the caption before it
    assert captioned == [8.0, 40.0, 48.0, 56.0, 64.0]
    for c in captions:
        if c.get("unchanged"):
            previous = next(p for p in reversed(captions[: captions.index(c)]) if not p.get("unchanged"))
            assert (c["text"], c["t_start"]) == (previous["text"], previous["t_start"])
    assert "10 captions over 79.8 s (5 of them unchanged: no model call;" in done.stdout
    # subtitles: one cue per captioned window, each extended over the unchanged ones after it
    vtt = out.with_suffix(".vtt").read_text()
    assert vtt.count(" --> ") == 5
    assert "\n00:00:00.000 --> 00:00:32.000\n" in vtt and "\n00:00:56.000 --> 00:01:20.000\n" in vtt


def test_threshold_0_captions_every_window_of_a_still_camera(tmp_path: Path) -> None:
    clip = tmp_path / "still.mp4"
    load_tool("make_still_clip").make_still_clip(clip, seconds=12, fps=5, event=None)
    out = tmp_path / "still.jsonl"
    done = subprocess.run(
        [
            str(VIDNARRATE),
            "caption",
            str(clip),
            "--model",
            "tiny",
            "--window",
            "4",
            "--stride",
            "4",
            "--set",
            "captions.max_new_tokens=4",
            "--set",
            "captions.unchanged_threshold=0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    captions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["t_end"] for c in captions] == [4.0, 8.0, 12.0]
    assert not any(c.get("unchanged") for c in captions), "gating off: every window went to the model"
    assert "(0 of them unchanged: no model call;" in done.stdout
