"""The gateway's store reader on real SQLite files, and the per-client count of queries in flight."""

from __future__ import annotations

from pathlib import Path

from stream import messages
from stream.messages import ErrorCode, ErrorReply, Results
from stream.requests import History, Search
from stream.store import Record, Store
from stream.storereader import StoreReader


def record(seq: int, text: str) -> Record:
    message = messages.Caption(
        stream="door",
        seq=seq,
        t_start=float(seq),
        t_end=seq + 4.0,
        frame_times=[float(seq)],
        wall_start=1000.0 + seq,
        wall_end=1004.0 + seq,
        text=text,
        model="tiny",
        latency_ms=1.0,
    )
    return Record(run_id="r", message=message, body=message.to_json())


def test_a_missing_store_is_unavailable_until_it_exists(tmp_path: Path) -> None:
    path = tmp_path / "vidnarrate.db"
    reader = StoreReader(path)
    reply = reader.answer(Search(id="s", query="door"))
    assert isinstance(reply, ErrorReply) and reply.error == ErrorCode.STORE_UNAVAILABLE and reply.id == "s"
    assert str(path) in reply.message
    with Store.open(path) as store:
        store.add([record(0, "a door opens")])
    found = reader.answer(Search(id="s", query="door"))
    assert isinstance(found, Results) and [item["seq"] for item in found.items] == [0]
    reader.close()


def test_a_file_that_is_no_store_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database at all, just some text " * 100)
    reply = StoreReader(path).answer(History(id=1, stream="door"))
    assert isinstance(reply, ErrorReply) and reply.error == ErrorCode.STORE_UNAVAILABLE
    assert str(path) in reply.message


def test_replies_stop_at_the_byte_bound_and_say_so(tmp_path: Path) -> None:
    path = tmp_path / "vidnarrate.db"
    with Store.open(path) as store:
        store.add([record(seq, f"caption {seq} " + "x" * 100) for seq in range(20)])
    reader = StoreReader(path, max_bytes=2000)
    reply = reader.answer(History(id="h", stream="door", limit=20))
    assert isinstance(reply, Results) and reply.truncated is True
    assert 0 < len(reply.items) < 20 and len(reply.to_json()) < 2000 + 200
    whole = StoreReader(path).answer(History(id="h", stream="door", limit=20))
    assert isinstance(whole, Results) and whole.truncated is None and len(whole.items) == 20
    reader.close()
