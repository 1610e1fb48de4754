"""The caption store on real SQLite files: schema, refusals, durability under SIGKILL, search, prune."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stream import messages
from stream import store as store_module
from stream.errors import StoreError, StoreQueryError
from stream.store import Record, Store, StoredMessage, default_store_path
from stream.storeschema import SCHEMA_VERSION

WALL0 = 1_780_000_000.0


def caption(
    seq: int, stream: str = "door", text: str = "a man opens the door", *, wall: float | None = None
) -> Record:
    wall_end = WALL0 + seq * 4 if wall is None else wall
    message = messages.Caption(
        stream=stream,
        seq=seq,
        t_start=seq * 4.0,
        t_end=seq * 4.0 + 16,
        frame_times=[seq * 4.0 + 15],
        wall_start=wall_end - 16,
        wall_end=wall_end,
        text=text,
        model="tiny",
        latency_ms=12.5,
    )
    return Record(run_id="run-a", message=message, body=message.to_json())


def test_a_new_store_is_made_with_its_folders_wal_and_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "vidnarrate.db"
    with Store.open(path) as store:
        assert store.count() == 0
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental: prune can shrink the file
    db.close()
    with Store.open(path) as again:  # reopening an existing store changes nothing
        assert again.count() == 0


def test_default_path_follows_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "vidnarrate" / "vidnarrate.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")
    assert default_store_path() == Path.home() / ".local" / "share" / "vidnarrate" / "vidnarrate.db"


def test_added_messages_come_back_as_published_and_a_replayed_caption_is_kept_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = caption(1)
    event = messages.Event(
        stream="door", rule="person", event_id="e1", state=messages.EventState.START, t_start=1.0,
        t_end=5.0, wall_start=WALL0, wall_end=WALL0 + 5, score=0.9, text="someone at the door",
    )  # fmt: skip
    answer = messages.Answer(id="q1", stream="door", text="a red coat", t_start=0.0, t_end=16.0)
    with Store.open(path) as store:
        store.add([Record("run-a", first.message, first.body, thumbnail=b"\xff\xd8one")])
        store.add(
            [
                Record("run-a", first.message, first.body, thumbnail=b"\xff\xd8two"),  # replayed: ignored
                Record("run-b", first.message, first.body),  # same seq, another run: kept
                Record("run-a", event, event.to_json()),
                Record("run-a", answer, answer.to_json()),
            ]
        )
        assert store.count() == 4
        found = {(m.kind, m.run_id): m for m in store.search("door")}
        assert set(found) == {("caption", "run-a"), ("caption", "run-b"), ("event", "run-a")}
        stored = found["caption", "run-a"]
        assert stored.json == first.body.decode()
        assert (stored.seq, stored.t_start, stored.wall_end, stored.model) == (1, 4.0, WALL0 + 4, "tiny")
        assert store.thumbnail(stored.id) == b"\xff\xd8one"
        assert store.thumbnail(found["caption", "run-b"].id) is None
        (red,) = store.search("red coat")
        assert (
            red.kind == "answer"
            and red.wall_start is None
            and red.wall_end == pytest.approx(time.time(), abs=60)
        )


def test_a_failed_batch_stores_none_of_it(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        bad = Record("run-a", caption(2).message, b"\xff not utf-8")
        with pytest.raises(UnicodeDecodeError):
            store.add([caption(1), bad])
        assert store.count() == 0
        store.add([caption(1)])  # and the store still works
        assert store.count() == 1


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(StoreError, match=rf"store {path}: schema version {SCHEMA_VERSION + 1} is newer"):
            Store.open(path, readonly=readonly)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is a text file, not a database\n" * 200, "not a SQLite database"),
        (b"SQLite format 3\x00" + b"\x10\x00\x01\x01" + b"\xab" * 4000, "damaged|not a SQLite database"),
    ],
)
def test_a_corrupt_file_is_refused_and_untouched(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=rf"store {path}: cannot read it: ({reason})"):
            Store.open(path, readonly=readonly)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices(id INTEGER PRIMARY KEY, total REAL)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a vidnarrate store .it holds the tables invoices"):
        Store.open(path)
    assert path.read_bytes() == before
    Store.open(tmp_path / "ok.db").close()
    db = sqlite3.connect(tmp_path / "ok.db")
    db.execute("CREATE TABLE extra(x)")
    db.commit()
    db.close()
    before = (tmp_path / "ok.db").read_bytes()
    with pytest.raises(StoreError, match="unexpected tables extra"):
        Store.open(tmp_path / "ok.db")
    assert (tmp_path / "ok.db").read_bytes() == before
    db = sqlite3.connect(tmp_path / "ok.db")
    db.execute("DROP TABLE extra")
    db.execute("DROP TABLE thumbnails")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="missing tables thumbnails"):
        Store.open(tmp_path / "ok.db", readonly=True)


_OPENER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from stream.store import Store

    path, ready, go = (Path(a) for a in sys.argv[1:])
    ready.touch()
    while not go.exists():  # every opener starts at once: the race is the point
        pass
    Store.open(path).close()
    """
)


def test_processes_opening_a_new_store_at_once_all_get_it(tmp_path: Path) -> None:
    path, go = tmp_path / "s.db", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    children = [
        subprocess.Popen([sys.executable, "-c", _OPENER, str(path), str(r), str(go)], env=env) for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.01)
    go.touch()
    assert [child.wait(timeout=60) for child in children] == [0, 0, 0, 0]
    with Store.open(path, readonly=True) as store:
        assert store.count() == 0


def test_readonly_open_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none" / "s.db"
    with pytest.raises(StoreError, match=rf"store {path}: no such file"):
        Store.open(path, readonly=True)
    assert not path.parent.exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="it is empty"):
        Store.open(empty, readonly=True)
    assert empty.read_bytes() == b""


def test_a_folder_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=rf"store {blocker}/s.db: cannot create its folder"):
        Store.open(blocker / "s.db")
    with pytest.raises(StoreError, match="is a folder, not a file"):
        Store.open(tmp_path)


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from stream import messages
    from stream.store import Record, Store

    store = Store.open(Path(sys.argv[1]))
    progress = Path(sys.argv[2])
    batch = 0
    while True:
        records = []
        for i in range(2000):
            seq = batch * 2000 + i
            m = messages.Caption(stream="door", seq=seq, t_start=seq, t_end=seq + 16.0, frame_times=[],
                                 wall_start=seq, wall_end=seq + 16.0, text=f"caption number {seq} of a door",
                                 model="tiny", latency_ms=1.0)
            records.append(Record("run-a", m, m.to_json(), thumbnail=b"\\xff\\xd8" + bytes(2000)))
        store.add(records)
        batch += 1
        progress.write_text(str(batch))  # written only once the batch is committed
    """
)


def test_sigkill_in_the_middle_of_add_loses_nothing_committed(tmp_path: Path) -> None:
    path, progress = tmp_path / "s.db", tmp_path / "committed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(progress)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 3):
            assert child.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer committed nothing in 60 s"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)  # adds run back to back: it is inside one now
    finally:
        child.kill()
        child.wait()
    committed = int(progress.read_text()) * 2000
    with Store.open(path) as store:
        count = store.count()
        assert count >= committed and count % 2000 == 0  # whole batches only, none lost
        assert len(store.history("door", limit=None)) == count
        assert store.search("number 1999")[0].seq == 1999
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")  # index in sync
        assert db.execute("SELECT count(*) FROM thumbnails").fetchone()[0] == count
        db.close()


def test_search_ranks_by_relevance_then_newest_and_filters(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.add(
            [
                caption(1, "door", "a man in a red coat opens the door"),
                caption(2, "door", "the door is closed, nobody moves"),
                caption(3, "yard", "a dog runs across the yard to the door"),
                caption(4, "door", "a man in a red coat opens the door"),
                caption(5, "yard", "red red red: a red car parks"),
                caption(6, "door", "a coat hanger on the wall beside a red door frame in the long hall"),
            ]
        )
        assert [m.seq for m in store.search("red coat")] == [4, 1, 6]  # equal scores: newest first
        assert [m.seq for m in store.search('"red coat"')] == [4, 1]  # a phrase: in that order
        assert store.search("red")[0].seq == 5  # bm25: the caption that says it most
        hits = store.search("door")
        assert [m.seq for m in hits] and all(h.score is not None and h.score > 0 for h in hits)
        assert {m.stream for m in store.search("door", streams=["yard"])} == {"yard"}
        assert store.search("door", streams=[]) == []
        spanned = store.search("door", wall_from=WALL0 + 8, wall_to=WALL0 + 12)
        assert sorted(m.seq for m in spanned) == [2, 3]
        assert [m.seq for m in store.search("door", limit=2)] == [m.seq for m in store.search("door")[:2]]
        assert store.search("opening doors")[0].text.startswith("a man")  # stemmed: opens, door
        assert [m.seq for m in store.search("ope*")] == [4, 1]
        assert store.search("NOT OR AND") == []  # words, never FTS5 operators
        with pytest.raises(
            StoreQueryError, match=r"search query 'xxx.*\.\.\.': 10000000 characters; the limit"
        ):
            store.search("x" * 10_000_000)
        with pytest.raises(StoreQueryError, match="a quote is not closed"):
            store.search('"red coat')
        with pytest.raises(StoreQueryError, match="limit 0"):
            store.search("red", limit=0)


def test_history_is_in_time_order_within_the_span_and_pages_through_everything(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        # Stored out of order (two runs' recorders), across more than one page.
        store.add([caption(seq, wall=WALL0 + (seq * 7919) % 2500) for seq in range(2500)])
        store.add([caption(1, "yard")])
        everything = store.history("door", limit=None)
        assert [m.wall_end for m in everything] == sorted(m.wall_end for m in everything)
        assert len(everything) == 2500 and {m.stream for m in everything} == {"door"}
        span = store.history("door", WALL0 + 100, WALL0 + 199)
        assert [m.wall_end for m in span] == [WALL0 + s for s in range(100, 200)]
        assert len(store.history("door", limit=10)) == 10
        assert store.history("nowhere") == []
        assert store.has_stream("yard") and not store.has_stream("nowhere")
        assert store.streams() == ["door", "yard"]


def test_prune_deletes_past_the_retention_and_shrinks_to_the_size_bound_in_bounded_steps(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    day = 86400.0
    with Store.open(path) as store:
        old = [caption(seq, wall=WALL0 - 40 * day + seq) for seq in range(3000)]
        store.add([Record(r.run_id, r.message, r.body, thumbnail=bytes(3000)) for r in old])
        store.add(
            [caption(seq, wall=WALL0 + seq, text=f"recent caption {seq} " * 20) for seq in range(3000, 9000)]
        )
        assert store.prune(now=WALL0, retention_days=30, max_mb=1000, max_rows=1000) == 1000  # bounded
        assert store.prune(now=WALL0, retention_days=30, max_mb=1000) == 2000
        assert store.prune(now=WALL0, retention_days=30, max_mb=1000) == 0
        assert store.count() == 6000 and min(m.seq for m in store.history("door", limit=1)) == 3000
        db = sqlite3.connect(path)
        assert db.execute("SELECT count(*) FROM thumbnails").fetchone()[0] == 0  # gone with their messages
        db.close()

        before = store.size_mb()
        target = before / 2
        while store.prune(now=WALL0, retention_days=30, max_mb=target, max_rows=500):
            pass
        assert store.size_mb() <= target + 0.1  # freed pages went back to the file system
        left = store.history("door", limit=None)
        assert 0 < len(left) < 6000 and left[-1].seq == 8999  # the oldest went first
        assert store.search("recent")[0].seq >= left[0].seq  # the text index followed


def test_search_ranks_the_newest_matches_and_a_span_reaches_back_past_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "SEARCH_CANDIDATES", 10)
    with Store.open(tmp_path / "s.db") as store:
        # The best match is stored first, then others out of wall-clock order (a recorder catching up):
        # the span is of wall times, not of ids.
        store.add([caption(100, text="door door door", wall=WALL0 - 0.5)])
        store.add([caption(seq, wall=WALL0 + (seq * 37) % 100) for seq in range(100)])
        assert all(m.seq != 100 for m in store.search("door", limit=20))  # not among the 10 stored last
        found = store.search("door", wall_to=WALL0 + 5, limit=20)
        assert found[0].seq == 100
        assert sorted(m.wall_end - WALL0 for m in found[1:]) == [0, 1, 2, 3, 4, 5]
        assert store.search("door", wall_from=WALL0 + 1000) == []


def test_a_full_disk_is_a_store_error_and_keeps_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as store:
        store.add([caption(seq) for seq in range(10)])
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the file may grow no further
        big = [caption(seq, text=f"caption {seq} " * 200) for seq in range(10, 200)]
        with pytest.raises(StoreError, match=rf"store {path}: cannot write 190 messages: the disk is full"):
            store.add(big)
        assert store.count() == 10
    with Store.open(path) as again:
        assert again.count() == 10 and len(again.search("door")) == 10


def test_bench_store_runs_and_ends_with_its_json_figures(tmp_path: Path) -> None:
    """The benchmark tool itself, on a small store: it must keep working, not be fast here."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    bench = subprocess.run(
        [
            sys.executable,
            "tools/bench_store.py",
            "--captions",
            "3000",
            "--queries",
            "5",
            "--db",
            str(tmp_path / "b.db"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bench.returncode == 0, bench.stderr
    figures = json.loads(bench.stdout.strip().splitlines()[-1])
    assert figures["captions"] == 3000 and figures["ingest_per_s"] > 0 and figures["mib_per_million"] > 0
    assert set(figures["search"]) == {"word", "phrase", "stream+day", "commonest word"}
    assert figures["search"]["commonest word"]["mean_hits"] == 20
    with Store.open(tmp_path / "b.db", readonly=True) as store:
        assert store.count() == 3000 and store.streams() == ["cam0", "cam1", "cam2", "cam3"]


def test_recent_gives_each_streams_last_captions_oldest_first_for_a_replay(tmp_path: Path) -> None:
    with Store.open(tmp_path / "v.db") as store:
        store.add([caption(seq, stream) for stream in ("a", "b", "c") for seq in range(5)])
        store.add([caption(9, "c", wall=WALL0 + 1000)])  # c captioned last, b first
        store.add([caption(9, "b", wall=WALL0 - 1000)])

        def seqs(rows: list[StoredMessage]) -> list[tuple[str, int | None]]:
            return [(row.stream, row.seq) for row in rows]

        every = store.recent(None, 2)
        assert seqs(every) == [("c", 4), ("c", 9), ("a", 3), ("a", 4), ("b", 3), ("b", 4)]
        # Past max_streams, the streams that captioned last are kept.
        assert seqs(store.recent(None, 1, max_streams=2)) == [("c", 9), ("a", 4)]
        assert seqs(store.recent(["b", "nobody"], 3)) == [("b", 2), ("b", 3), ("b", 4)]
        assert store.recent([], 3) == []
