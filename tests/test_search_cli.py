"""``vidnarrate search`` and ``vidnarrate export`` through the installed command, on a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stream import messages
from stream.process import ExitCode
from stream.store import Record, Store

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")
NOW = time.time()


def vidnarrate(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XDG_DATA_HOME": str(home), "TZ": "UTC"}
    return subprocess.run([str(VIDNARRATE), *args], capture_output=True, text=True, timeout=60, env=env)


def caption(stream: str, seq: int, text: str, *, ago: float) -> Record:
    message = messages.Caption(
        stream=stream, seq=seq, t_start=seq * 8.0, t_end=seq * 8.0 + 16, frame_times=[seq * 8.0 + 15],
        wall_start=NOW - ago - 16, wall_end=NOW - ago, text=text, model="tiny", latency_ms=40.0,
    )  # fmt: skip
    return Record(run_id="run-a", message=message, body=message.to_json())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An XDG_DATA_HOME whose default store holds two streams over the last three hours."""
    with Store.open(tmp_path / "vidnarrate" / "vidnarrate.db") as store:
        store.add(
            [
                caption("door", 0, "a man in a red coat opens the door", ago=3 * 3600),
                caption("door", 1, "the door is closed\nnobody moves", ago=2 * 3600),
                caption("yard", 0, "a dog runs across the yard", ago=1800),
                caption("door", 2, "a woman in a red coat rings the bell", ago=600),
            ]
        )
    return tmp_path


def test_search_prints_ranked_lines_from_the_default_store(home: Path) -> None:
    done = vidnarrate("search", "red coat", home=home)
    assert done.returncode == ExitCode.OK, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    wall = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW - 600))
    assert lines[0] == f"{wall}  door  0:00:16-0:00:32  a woman in a red coat rings the bell"
    assert lines[1].endswith("door  0:00:00-0:00:16  a man in a red coat opens the door")


def test_search_filters_by_stream_and_span_and_writes_json_lines(home: Path) -> None:
    assert vidnarrate("search", "door", "--since", "150m", home=home).stdout.count("\n") == 1
    done = vidnarrate("search", "a", "--stream", "yard", "--json", home=home)
    (line,) = done.stdout.splitlines()
    hit = json.loads(line)
    assert hit["type"] == "caption" and hit["text"] == "a dog runs across the yard" and hit["score"] > 0
    assert messages.Caption.from_dict({k: v for k, v in hit.items() if k != "score"}).stream == "yard"
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 2 * 3600 - 60))
    later = vidnarrate("search", "door", "--from", iso, home=home).stdout.splitlines()
    assert [line.split("  ")[1:3] for line in later] == [["door", "0:00:08-0:00:24"]]  # newlines flattened
    nothing = vidnarrate("search", "elephant", home=home)
    assert (nothing.returncode, nothing.stdout) == (ExitCode.OK, "")
    assert "nothing stored matches 'elephant'" in nothing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (['"red coat'], "search query '\"red coat': a quote is not closed"),
        (["x" * 100_000], "search query 'xxxxx"),  # argv takes 128 KiB an argument; 10 MB: test_store
        (
            ["door", "--stream", "gate"],
            "--stream gate: nothing of that stream is stored (streams: door, yard)",
        ),
        (["door", "--since", "2 fortnights"], "--since '2 fortnights': not a duration"),
        (["door", "--from", "10:00", "--to", "09:00"], "--from '10:00' is after --to '09:00'"),
        (["door", "--since", "1h", "--to", "09:00"], "--since and --from/--to: give one or the other"),
        (["door", "--limit", "0"], "search limit 0: must be from 1 to"),
    ],
)
def test_bad_searches_are_one_line_and_exit_2(home: Path, args: list[str], message: str) -> None:
    done = vidnarrate("search", *args, home=home)
    assert done.returncode == ExitCode.USAGE
    assert done.stdout == "" and done.stderr.startswith(f"vidnarrate: {message}")
    assert done.stderr.count("\n") == 1 and len(done.stderr) < 300


def test_a_missing_store_is_said_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "store.db"
    done = vidnarrate("search", "door", "--store", str(missing), home=tmp_path)
    assert done.returncode == ExitCode.USAGE
    assert done.stderr == (
        f"vidnarrate: store {missing}: no such file "
        "(nothing recorded there yet; --store PATH names another)\n"
    )
    assert not missing.parent.exists() and list(tmp_path.iterdir()) == []


def test_a_corrupt_store_is_an_error_and_left_alone(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    done = vidnarrate("search", "door", "--store", str(bad), home=tmp_path)
    assert done.returncode == ExitCode.USAGE  # a bad --store, as for `run`
    assert done.stderr == f"vidnarrate: store {bad}: cannot read it: not a SQLite database\n"
    assert bad.read_bytes() == b"not a database at all" * 100


def test_export_writes_a_streams_captions_in_time_order(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = vidnarrate(
        "export",
        "--stream",
        "door",
        "--out",
        str(out / "door.jsonl"),
        "--out",
        str(out / "door.srt"),
        home=home,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    assert done.stdout.startswith("vidnarrate: 3 captions of door -> ")
    lines = [json.loads(line) for line in (out / "door.jsonl").read_text().splitlines()]
    assert [m["seq"] for m in lines] == [0, 1, 2]
    assert lines[0] == json.loads(caption("door", 0, "a man in a red coat opens the door", ago=0).body) | {
        "wall_start": lines[0]["wall_start"],
        "wall_end": lines[0]["wall_end"],
    }
    srt = (out / "door.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:16,000\na man in a red coat opens the door\n\n2\n")
    assert "the door is closed nobody moves" in srt
    done = vidnarrate(
        "export", "--stream", "door", "--since", "1h", "--out", str(out / "last.vtt"), home=home
    )
    assert done.returncode == ExitCode.OK
    assert (out / "last.vtt").read_text().count(" --> ") == 1


def test_export_refuses_bad_requests_before_writing_anything(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    for args, message, code in [
        (["--stream", "gate", "--out", str(out)], "--stream gate: nothing of that stream is stored", 2),
        (["--stream", "door", "--out", str(tmp_path / "x.txt")], "unknown caption format '.txt'", 2),
        (["--stream", "door", "--stream", "yard", "--out", str(out)], "export: give one --stream", 2),
        (["--stream", "door", "--since", "1s", "--out", str(out)], "no captions of door in that span", 1),
    ]:
        done = vidnarrate("export", *args, home=home)
        assert (done.returncode, done.stdout) == (code, ""), done.stderr
        assert message in done.stderr
        assert not out.exists()
