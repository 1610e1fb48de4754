"""``vidnarrate summarize`` and ``caption --summary`` through the installed command: a real SQLite
store filled through Store.add, a real clip, the tiny model (its text is gibberish: the tests check
the document's shape, spans and counts, which come from the captions, not from the model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from realparts import make_clip

from stream import messages
from stream.process import ExitCode
from stream.store import Record, Store

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")
NOW = time.time()
# Small prompts and short summaries: several chunks from 40 captions, quick on 2 cores.
SMALL = ["--model", "tiny", "--set", "model.max_inp_length=700", "--set", "summaries.max_new_tokens=12"]


def vidnarrate(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XDG_DATA_HOME": str(home), "TZ": "UTC"}
    return subprocess.run([str(VIDNARRATE), *args], capture_output=True, text=True, timeout=timeout, env=env)


def caption(stream: str, seq: int, text: str, *, wall_end: float) -> Record:
    message = messages.Caption(
        stream=stream, seq=seq, t_start=seq * 4.0, t_end=seq * 4.0 + 8, frame_times=[seq * 4.0 + 7],
        wall_start=wall_end - 8, wall_end=wall_end, text=text, model="tiny", latency_ms=40.0,
    )  # fmt: skip
    return Record(run_id="run-a", message=message, body=message.to_json())


START = NOW - 3600  # the door's captions: 40 of them, every 60 s over the last hour


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    with Store.open(home / "vidnarrate" / "vidnarrate.db") as store:
        store.add(
            [
                caption(
                    "door",
                    i,
                    f"step {i}: a person in a red coat walks to the door and waits there",
                    wall_end=START + 60 * i,
                )
                for i in range(40)
            ]
            + [caption("yard", 0, "a dog runs across the yard", wall_end=NOW - 7200)]
        )
    return home


# The door's span is dated when it is not of one day: run between 00:21 and 01:00 UTC, it crosses midnight.
DAY = time.gmtime(START)[:3] != time.gmtime(START + 60 * 39)[:3]
LABEL = r"(?:\d{4}-\d{2}-\d{2} )?\d{2}:\d{2}:\d{2}"  # a wall-clock label, dated or not


def utc(wall: float, day: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if day else "%H:%M:%S", time.gmtime(wall))


def test_summarize_writes_a_markdown_summary_of_the_span_with_its_parts_and_times(
    home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "door.md"
    done = vidnarrate("summarize", "--stream", "door", "--since", "2h", "--out", str(out), *SMALL, home=home)
    assert done.returncode == ExitCode.OK, done.stderr
    assert done.stdout == f"vidnarrate: summary of door -> {out}\n"
    assert "40/40" in done.stderr and "captions" in done.stderr, "the progress bar"
    text = out.read_text()
    first, last = START - 8, START + 60 * 39
    assert text.startswith(f"# door, {utc(first, DAY)}-{utc(last, DAY)}\n\n")
    parts = re.findall(rf"^### ({LABEL})-({LABEL})$", text, flags=re.MULTILINE)
    assert len(parts) >= 3, text
    # The parts tile the span in order: each starts where a caption starts and ends where one ends.
    assert parts[0][0] == utc(first, DAY) and parts[-1][1] == utc(last, DAY)
    assert [p[0] for p in parts] == sorted(p[0] for p in parts)
    footer = re.search(r"_40 captions summarised in (\d+) model calls \((\d+) parts\) by tiny._", text)
    assert footer is not None and int(footer[2]) == len(parts) and int(footer[1]) > len(parts)


def test_summarize_prints_to_stdout_and_covers_every_stream_when_none_is_named(home: Path) -> None:
    done = vidnarrate("summarize", "--no-progress", *SMALL, home=home)
    assert done.returncode == ExitCode.OK, done.stderr
    assert done.stdout.startswith("# door, ") and "\n# yard, " in done.stdout
    assert "_1 captions summarised in 1 model calls (1 parts) by tiny._" in done.stdout
    assert done.stderr == ""


def test_a_span_without_captions_is_said_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "nothing.md"
    done = vidnarrate("summarize", "--stream", "yard", "--since", "1h", "--out", str(out), *SMALL, home=home)
    assert done.returncode == ExitCode.FAILED
    assert done.stderr.startswith("vidnarrate: no captions of yard in the span from ")
    assert done.stderr.endswith(" to now: nothing to summarise\n")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stream", "gate"], "--stream gate: nothing of that stream is stored (streams: door, yard)"),
        (["--from", "10:00", "--to", "09:00"], "--from '10:00' is after --to '09:00'"),
        (["--since", "soon"], "--since 'soon': not a duration"),
        (["--out", "/no-such-dir/x.md"], "summary /no-such-dir/x.md: its folder /no-such-dir does not exist"),
        (["--prompt", "poem"], "command line: summaries.prompt: 'poem' is not a summary preset"),
    ],
)
def test_bad_requests_are_one_line_and_exit_2(home: Path, args: list[str], message: str) -> None:
    done = vidnarrate("summarize", *args, "--model", "tiny", home=home)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert done.stdout == "" and done.stderr.startswith(f"vidnarrate: {message}")
    assert done.stderr.count("\n") == 1


def test_an_unreadable_store_is_exit_2_like_a_bad_store_for_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    for command in (["summarize"], ["search", "door"]):
        done = vidnarrate(*command, "--store", str(bad), home=tmp_path)
        assert done.returncode == ExitCode.USAGE
        assert done.stderr == f"vidnarrate: store {bad}: cannot read it: not a SQLite database\n"
    assert bad.read_bytes() == b"not a database at all" * 100


@pytest.mark.integration
@pytest.mark.slow
def test_caption_with_summary_writes_the_recordings_summary_beside_its_captions(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "screen.mp4", size="320x240", fps=10.0, seconds=12.0)
    done = subprocess.run(
        [str(VIDNARRATE), "caption", str(clip), *SMALL, "--no-progress", "--prompt", "screen"]
        + ["--set", "captions.max_new_tokens=4", "--window", "4", "--stride", "2", "--summary"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = tmp_path / "screen.md"
    assert f"vidnarrate: summary of screen.mp4 -> {summary.name}" in done.stdout
    text = summary.read_text()
    captions = (tmp_path / "screen.jsonl").read_text().splitlines()
    # Stream times of the recording, from its first window to the end of its last.
    assert text.startswith("# screen.mp4, 0:00:00-0:00:12\n\n")
    assert f"_{len(captions)} captions summarised in " in text
    # A summary path that is also a caption output is refused before the model loads.
    clash = subprocess.run(
        [
            str(VIDNARRATE),
            "caption",
            str(clip),
            "--model",
            "tiny",
            "--out",
            "x.jsonl",
            "--summary",
            "x.jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert clash.returncode == ExitCode.USAGE and "is also a caption output" in clash.stderr
