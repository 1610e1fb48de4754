"""``vidnarrate events`` through the installed command, on a real store (as the recorder writes it:
the event messages' JSON, ``seq`` NULL), and the folding of an event's messages into one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT

from stream import messages
from stream.eventlist import summarize
from stream.messages import EventState
from stream.process import ExitCode
from stream.store import Record, Store

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")
NOW = time.time()


def vidnarrate(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XDG_DATA_HOME": str(home), "TZ": "UTC"}
    return subprocess.run([str(VIDNARRATE), *args], capture_output=True, text=True, timeout=60, env=env)


def event(
    stream: str, rule: str, n: int, state: str, *, t: tuple[float, float], ago: float, score: float, text: str
) -> messages.Event:
    return messages.Event(
        stream=stream, rule=rule, event_id=f"run-a-{stream}-{rule}-{n}", state=EventState(state),
        t_start=t[0], t_end=t[1], wall_start=NOW - ago - (t[1] - t[0]), wall_end=NOW - ago, score=score,
        text=text, thumbnail="/9j/AA==" if state == "start" else None,
    )  # fmt: skip


EVENTS = [
    event("door", "person", 1, "start", t=(4, 12), ago=7200, score=0.8, text="a man at the door"),
    event("door", "person", 1, "update", t=(4, 16), ago=7196, score=0.95, text="he rings the bell"),
    event("door", "person", 1, "end", t=(4, 16), ago=7188, score=0.1, text="the porch is empty"),
    event("yard", "dog", 1, "start", t=(100, 116), ago=1800, score=0.7, text="a dog in the yard"),
    event("door", "person", 2, "start", t=(900, 916), ago=60, score=0.6, text="a woman waits"),
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    with Store.open(tmp_path / "vidnarrate" / "vidnarrate.db") as store:
        store.add([Record(run_id="run-a", message=e, body=e.to_json()) for e in EVENTS])
    return tmp_path


def test_events_are_listed_one_line_each_newest_first(home: Path) -> None:
    done = vidnarrate("events", home=home)
    assert done.returncode == ExitCode.OK, done.stderr
    clock = lambda ago, length: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW - ago - length))  # noqa: E731
    assert done.stdout.splitlines() == [
        f"{clock(60, 16)}  door  person  0:15:00-0:15:16  open  0.60  a woman waits",
        f"{clock(1800, 16)}  yard  dog  0:01:40-0:01:56  open  0.70  a dog in the yard",
        f"{clock(7200, 8)}  door  person  0:00:04-0:00:16  ended  0.95  he rings the bell",
    ]


def test_json_filters_and_spans(home: Path) -> None:
    done = vidnarrate("events", "--json", "--rule", "person", "--stream", "door", home=home)
    assert done.returncode == ExitCode.OK, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["event_id"], r["state"], r["messages"], r["score"]) for r in rows] == [
        ("run-a-door-person-2", "open", 1, 0.6),
        ("run-a-door-person-1", "ended", 3, 0.95),
    ]
    first = rows[1]
    assert (first["t_start"], first["t_end"], first["text"]) == (4, 16, "he rings the bell")
    recent = vidnarrate("events", "--since", "1h", "--json", home=home)
    assert [json.loads(line)["rule"] for line in recent.stdout.splitlines()] == ["person", "dog"]
    none = vidnarrate("events", "--rule", "fire", home=home)
    assert none.returncode == ExitCode.OK and none.stdout == ""
    assert none.stderr == "vidnarrate: no events of fire stored in that span\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--stream", "gate"], "--stream gate: nothing of that stream is stored (streams: door, yard)"),
        (["--since", "soon"], "--since"),
        (["--limit", "0"], "--limit 0: must be from 1 to 10000"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(home: Path, args: list[str], needle: str) -> None:
    done = vidnarrate("events", *args, home=home)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_a_missing_store_is_said_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    done = vidnarrate("events", "--store", str(missing), home=tmp_path)
    assert done.returncode == ExitCode.USAGE and "no such file" in done.stderr, done.stderr
    assert not missing.exists()


def test_summarize_folds_an_event_and_keeps_the_end_s_own_score_when_alone() -> None:
    data: list[dict[str, Any]] = [e.to_dict() for e in EVENTS]
    only_end = summarize([data[2]])
    assert [(e.state, e.score, e.text) for e in only_end] == [("ended", 0.1, "the porch is empty")]
    folded = summarize(reversed(data), rules=["person"])
    assert [(e.event_id, e.messages) for e in folded] == [
        ("run-a-door-person-2", 1),
        ("run-a-door-person-1", 3),
    ]
