"""The recorder: the bus into the store. In-process with a real zmq publisher and a real SQLite file
(a slow or failing disk stands in as a store whose writes wait or fail), then through real
``vidnarrate run`` and ``vidnarrate caption`` processes: every caption a websocket client received
is in the file, a SIGKILLed recorder is restarted without losing what it committed, a Ctrl-C loses
nothing published before it, ``--no-store`` records nothing, a store that cannot be used is refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import websockets
from liverun import VIDNARRATE, LiveRun, collect, of_type, short_run_root, wait_for
from realparts import make_clip

from stream.bus import Publisher, RunPaths, Subscriber
from stream.errors import StoreError
from stream.messages import Answer, Caption, Event, EventState, RecorderStatus, Thumbnail
from stream.recorder import Recorder, RecorderOptions, recorder_main
from stream.store import Record, Store


def caption(seq: int, stream: str = "cam0", t_end: float | None = None) -> Caption:
    end = float(4 * seq + 8) if t_end is None else t_end
    return Caption(
        stream=stream,
        seq=seq,
        t_start=end - 8.0,
        t_end=end,
        frame_times=[end - 1.0],
        wall_start=time.time() - 8.0,
        wall_end=time.time(),
        text=f"caption number {seq}",
        model="tiny",
        latency_ms=5.0,
    )


def rows(
    path: Path, sql: str = "SELECT kind, stream, seq FROM messages ORDER BY id"
) -> list[tuple[Any, ...]]:
    """Read the file as any SQLite client would (a second connection, while the recorder writes)."""
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


class Bus:
    """A run directory with an ``inference`` publisher, the recorder's status read from its own."""

    def __init__(self, run: RunPaths) -> None:
        self.run = run
        self.publisher = Publisher(run.publisher_endpoint("inference"))
        self.status = Subscriber([run.publisher_endpoint("recorder")])

    def options(self, store: Path, **changes: Any) -> RecorderOptions:
        return RecorderOptions(
            run_id=self.run.run_id,
            store=str(store),
            events_endpoints=(self.run.publisher_endpoint("inference"),),
            status_endpoint=self.run.publisher_endpoint("recorder"),
            **changes,
        )

    def last_status(self, until: Callable[[RecorderStatus], bool], timeout: float = 10.0) -> RecorderStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.status.recv(0.2)
            if isinstance(message, RecorderStatus) and until(message):
                return message
        raise AssertionError(f"no recorder_status as expected within {timeout} s")

    def close(self) -> None:
        self.publisher.close()
        self.status.close()


@pytest.fixture
def bus() -> Iterator[Bus]:
    with short_run_root() as root:
        b = Bus(RunPaths.create(root=root))
        yield b
        b.close()


def start(target: Callable[..., Any], *args: Any) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(*args,), kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    return thread, stop


def test_captions_events_and_answers_are_kept_with_thumbnails_and_nothing_is_lost_on_stop(
    bus: Bus, tmp_path: Path
) -> None:
    store = tmp_path / "deep" / "folder" / "v.db"
    thread, stop = start(recorder_main, bus.options(store))
    assert bus.publisher.wait_for_subscriber(10.0)
    jpeg = b"\xff\xd8 a jpeg \xff\xd9"
    bus.publisher.send(Thumbnail(stream="cam0", t=7.0, wall=1.0, jpeg=base64.b64encode(jpeg).decode()))
    bus.publisher.send(Thumbnail(stream="cam0", t=9.5, wall=1.0, jpeg=base64.b64encode(b"later").decode()))
    first = caption(0)  # its window ends at 8 s: the 7-s thumbnail is its newest
    bus.publisher.send(first)
    event = Event(
        stream="cam0",
        rule="person",
        event_id="e1",
        state=EventState.START,
        t_start=1.0,
        t_end=8.0,
        wall_start=1.0,
        wall_end=2.0,
        score=0.5,
        text="a person",
    )
    bus.publisher.send(event)
    bus.publisher.send(Answer(id="k-1", stream="cam0", text="a red door", t_start=0.0, t_end=8.0))
    wait_for(lambda: store.exists() and len(rows(store)) == 3, 10.0, "the first three rows")
    # A burst, then at once the stop: the recorder drains the bus and commits all of it.
    for seq in range(1, 200):
        bus.publisher.send(caption(seq))
    stop.set()
    thread.join(15.0)
    assert not thread.is_alive()
    stored = rows(store)
    assert stored[:3] == [("caption", "cam0", 0), ("event", "cam0", None), ("answer", "cam0", None)]
    assert [seq for kind, _, seq in stored if kind == "caption"] == list(range(200))
    bodies = rows(store, "SELECT json FROM messages WHERE seq = 0")
    assert bodies == [(first.to_json().decode(),)], "the message exactly as published"
    thumbs = rows(store, "SELECT m.seq, t.jpeg FROM thumbnails t JOIN messages m ON m.id = t.message_id")
    assert thumbs[0] == (0, jpeg) and all(seq > 0 for seq, _ in thumbs[1:])
    assert {run for (run,) in rows(store, "SELECT DISTINCT run_id FROM messages")} == {bus.run.run_id}


class SlowStore(Store):
    """A real store whose first write waits until released: a disk that hangs."""

    release = threading.Event()
    calls = 0

    def add(self, records: Sequence[Record]) -> None:
        type(self).calls += 1
        if type(self).calls == 1:
            assert self.release.wait(30.0)
        super().add(records)


def test_a_hanging_disk_never_stops_the_reader_the_oldest_are_dropped_and_counted(
    bus: Bus, tmp_path: Path
) -> None:
    path = tmp_path / "v.db"
    store = SlowStore.open(path)
    options = bus.options(path, queue={"capacity": 20, "batch_size": 5, "max_delay": 0.0})
    recorder = Recorder(options, store)
    thread, stop = start(recorder.run)
    assert bus.publisher.wait_for_subscriber(10.0)
    bus.publisher.send(caption(0))
    wait_for(lambda: SlowStore.calls == 1, 10.0, "the first write to hang")
    for seq in range(1, 101):
        bus.publisher.send(caption(seq))
    status = bus.last_status(lambda s: s.dropped == 80)
    assert status.queue == 21 and status.written == 0, "20 waiting, 1 in flight"
    SlowStore.release.set()
    status = bus.last_status(lambda s: s.queue == 0)
    assert status.written == 21 and status.dropped == 80 and status.errors == 0
    assert status.last_commit_wall is not None and status.store == str(path)
    stop.set()
    thread.join(15.0)
    store.close()
    assert [seq for _, _, seq in rows(path)] == [0, *range(81, 101)], "the oldest waiting went first"


class FailingStore(Store):
    """A real store whose first two writes fail as a full disk does."""

    failures = 0

    def add(self, records: Sequence[Record]) -> None:
        if type(self).failures < 2:
            type(self).failures += 1
            raise StoreError(f"store {self.path}: cannot write {len(records)} messages: the disk is full")
        super().add(records)


def test_a_failed_write_is_reported_and_retried(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    store = FailingStore.open(path)
    recorder = Recorder(bus.options(path, queue={"backoff_initial": 0.05}), store)
    thread, stop = start(recorder.run)
    assert bus.publisher.wait_for_subscriber(10.0)
    for seq in range(3):
        bus.publisher.send(caption(seq))
    failing = bus.last_status(lambda s: s.errors >= 1)
    assert failing.error is not None and "the disk is full" in failing.error
    recovered = bus.last_status(lambda s: s.written == 3)
    assert recovered.errors == 2 and recovered.dropped == 0
    stop.set()
    thread.join(15.0)
    store.close()
    assert [seq for _, _, seq in rows(path)] == [0, 1, 2]


def test_retention_runs_when_the_recorder_starts(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with Store.open(path) as store:
        old = dataclasses.replace(
            caption(0), wall_start=time.time() - 41 * 86400, wall_end=time.time() - 40 * 86400
        )
        store.add(
            [Record("earlier", old, old.to_json()), Record("earlier", caption(1), caption(1).to_json())]
        )
    thread, stop = start(recorder_main, bus.options(path, retention_days=30.0))
    wait_for(lambda: rows(path) == [("caption", "cam0", 1)], 10.0, "the 40-day-old caption to be pruned")
    stop.set()
    thread.join(15.0)


def test_a_store_the_recorder_cannot_open_is_exit_1_for_the_supervisor_to_retry(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    with short_run_root() as root:
        run = RunPaths.create(root=root)
        options = RecorderOptions(
            run_id=run.run_id,
            store=str(tmp_path / "not-a-folder" / "v.db"),
            events_endpoints=(),
            status_endpoint=run.publisher_endpoint("recorder"),
        )
        assert recorder_main(options, stop_event=threading.Event()) == 1


def test_a_recorder_whose_bus_reader_fails_exits_1_after_committing_what_it_read(tmp_path: Path) -> None:
    options = RecorderOptions(
        run_id="r",
        store=str(tmp_path / "v.db"),
        events_endpoints=(),
        status_endpoint=f"ipc://{tmp_path}/no-such-folder/recorder.sock",  # cannot be bound
    )
    assert recorder_main(options, stop_event=threading.Event()) == 1
    assert rows(tmp_path / "v.db") == []


# -- through the real command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "long": make_clip(folder / "long.mp4", size="320x240", fps=25.0, seconds=20.0),
        "short": make_clip(folder / "short.mp4", size="320x240", fps=25.0, seconds=6.0),
    }


def read_until_closed(ws_url: str, into: list[dict[str, Any]]) -> None:
    """Subscribe to everything and append each message to ``into`` as it comes, until the server
    closes the connection (the run stopped)."""

    async def run() -> None:
        async with websockets.connect(ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    into.append(json.loads(raw))

    asyncio.run(run())


def stored_captions(path: Path) -> set[tuple[str, int]]:
    return {(stream, seq) for kind, stream, seq in rows(path) if kind == "caption"}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_run_records_every_caption_survives_a_killed_recorder_and_loses_nothing_on_ctrl_c(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    data_home = tmp_path / "data"
    store = data_home / "vidnarrate" / "vidnarrate.db"  # the default path under $XDG_DATA_HOME
    with short_run_root() as root:
        live = LiveRun(
            [f"door={clips['long']}"],
            root,
            extra=["--window", "4", "--stride", "2", "--loop"],
            env={"XDG_DATA_HOME": str(data_home)},
        )
        try:
            live.start()
            assert f"recording into {store}" in "".join(live.stdout)
            got = collect(live.ws_url, lambda m: len(of_type(m, "caption")) >= 3, timeout=120)
            received = of_type(got, "caption")
            assert len(received) >= 3, live.log()
            wait_for(
                lambda: {("door", c["seq"]) for c in received} <= stored_captions(store),
                5.0,
                "the received captions in the store",
            )
            status = of_type(got, "status")[-1]
            assert status["recorder"]["store"] == str(store)
            # SIGKILL the recorder: what it committed stays, the supervisor restarts it, the run goes on.
            before = stored_captions(store)
            pid = status["processes"]["recorder"]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
            wait_for(
                lambda: (
                    any(
                        wall > killed_at
                        for (wall,) in rows(store, "SELECT wall_end FROM messages WHERE kind='caption'")
                    )
                    and max(seq for _, seq in stored_captions(store)) > max(seq for _, seq in before)
                ),
                60.0,
                "the restarted recorder to write again",
            )
            assert before <= stored_captions(store)
            assert "recorder exited with code -9" in "".join(live.stderr)
            # A client reads until the run goes away; Ctrl-C while captions keep coming.
            last: list[dict[str, Any]] = []
            reader = threading.Thread(target=read_until_closed, args=(live.ws_url, last), daemon=True)
            reader.start()
            wait_for(lambda: len(of_type(last, "caption")) >= 2, 60.0, "captions after the restart")
            processes = of_type(last, "status")[-1]["processes"]["recorder"]
            assert processes["restarts"] >= 1 and processes["pid"] != pid
            # The Ctrl-C follows the second caption within about 0.1 s, inside the recorder's batching
            # delay: that caption is committed by the flush on stop, not by the running recorder.
            assert live.stop(signal.SIGINT) == 0, live.log()
            reader.join(20.0)
            seen = {("door", c["seq"]) for c in of_type(last, "caption")}
            assert seen and seen <= stored_captions(store), (
                f"lost on Ctrl-C: {sorted(seen - stored_captions(store))}"
            )
        finally:
            live.kill()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_no_store_starts_no_recorder_and_creates_no_file(tmp_path: Path, clips: dict[str, Path]) -> None:
    data_home = tmp_path / "data"
    with short_run_root() as root:
        live = LiveRun(
            [f"door={clips['short']}"],
            root,
            extra=["--window", "4", "--stride", "2", "--no-store"],
            env={"XDG_DATA_HOME": str(data_home)},
        )
        try:
            live.start()
            got = collect(live.ws_url, lambda m: bool(of_type(m, "caption")), timeout=120)
            status = of_type(got, "status")[-1]
            assert "recorder" not in status["processes"] and "recorder" not in status
            assert live.proc is not None and live.proc.wait(120) == 0, live.log()
            live.wait_output()
        finally:
            live.kill()
    assert not data_home.exists()
    assert "recording into" not in "".join(live.stdout)


def test_a_store_that_cannot_be_used_is_refused_before_anything_starts(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "a-file" / "v.db"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is no SQLite database, but it is long enough to look like one" * 100)
    for path, reason in ((bad, "cannot create its folder"), (garbage, "not a SQLite database")):
        with short_run_root() as root:
            done = subprocess.run(
                [str(VIDNARRATE), "run", "--source", str(clips["short"]), "--model", "tiny", "--port", "0"]
                + ["--store", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "VIDNARRATE_RUN_ROOT": str(root)},
            )
            assert done.returncode == 2, done.stderr
            assert str(path) in done.stderr and reason in done.stderr
            assert "Traceback" not in done.stderr and not list(root.glob("*/*"))
    assert garbage.read_bytes().startswith(b"this is no SQLite"), "never changed"
    done = subprocess.run(
        [str(VIDNARRATE), "run", "--source", str(clips["short"]), "--store", str(garbage), "--no-store"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--store and --no-store" in done.stderr


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_caption_with_a_store_keeps_every_caption_it_writes(tmp_path: Path, clips: dict[str, Path]) -> None:
    store = tmp_path / "offline.db"
    out = tmp_path / "short.jsonl"
    done = subprocess.run(
        [str(VIDNARRATE), "caption", str(clips["short"]), "--model", "tiny", "--no-progress"]
        + ["--set", "captions.max_new_tokens=4", "--window", "4", "--stride", "2"]
        + ["--out", str(out), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) >= 2 and str(store) in done.stdout
    stored = rows(store, "SELECT stream, seq, json FROM messages WHERE kind = 'caption' ORDER BY seq")
    assert [(s, q, json.loads(body)) for s, q, body in stored] == [("short", c["seq"], c) for c in written]
    # Without --store (and no [store] path), caption keeps nothing.
    data_home = Path(os.environ["XDG_DATA_HOME"])
    before = set(data_home.rglob("*"))
    done = subprocess.run(
        [str(VIDNARRATE), "caption", str(clips["short"]), "--model", "tiny", "--no-progress"]
        + ["--set", "captions.max_new_tokens=4", "--out", str(tmp_path / "again.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and set(data_home.rglob("*")) == before
