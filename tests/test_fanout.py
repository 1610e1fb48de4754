"""The gateway's I/O-free state: drop-oldest queues, replay store, status merge, pending asks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stream import messages
from stream.fanout import ClientLimit, ClientQueue, PendingAsks, ReplayStore, StatusBoard
from stream.messages import ErrorCode, MessageError, StreamState
from stream.requests import Ask, Subscribe


def test_client_queue_drops_oldest_and_reports_the_gap() -> None:
    queue = ClientQueue(3)
    for i in range(5):
        queue.push(str(i).encode(), now=float(i))
    assert len(queue) == 3 and queue.dropped_total == 2
    assert queue.behind_since == 3.0  # first overflow
    assert queue.behind_for(5.0) == 2.0
    notice = json.loads(queue.pop() or b"")
    assert notice == {"type": "dropped", "count": 2, "total": 2}
    assert [queue.pop(), queue.pop()] == [b"2", b"3"]
    assert queue.behind_since == 3.0  # still one message behind
    assert queue.pop() == b"4"
    assert queue.behind_since is None and queue.behind_for(9.0) == 0.0
    assert queue.pop() is None and not queue


def test_client_queue_counts_every_loss_exactly() -> None:
    queue = ClientQueue(4)
    delivered, told = [], 0
    for i in range(100):
        queue.push(f"{i}".encode(), now=0.0)
        if i % 7 == 0:  # a reader that sometimes takes one message
            item = queue.pop()
            assert item is not None
            if item.startswith(b"{"):
                told += json.loads(item)["count"]
            else:
                delivered.append(int(item))
    while (item := queue.pop()) is not None:
        if item.startswith(b"{"):
            told += json.loads(item)["count"]
        else:
            delivered.append(int(item))
    assert delivered == sorted(delivered)
    assert len(delivered) + told == 100


def test_client_queue_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ClientQueue(0)


def _caption(stream: str, seq: int) -> bytes:
    return messages.Caption(
        stream=stream,
        seq=seq,
        t_start=seq,
        t_end=seq + 4.0,
        frame_times=[float(seq)],
        wall_start=1000.0 + seq,
        wall_end=1004.0 + seq,
        text=f"{stream} {seq}",
        model="tiny",
        latency_ms=1.0,
    ).to_json()


def test_replay_store_keeps_the_last_n_per_stream_in_arrival_order() -> None:
    store = ReplayStore(3, max_streams=2)
    for seq in range(5):
        store.add("a", _caption("a", seq))
        store.add("b", _caption("b", seq))
    picked = [json.loads(body) for body in store.recent(Subscribe(), 2)]
    assert [(m["stream"], m["seq"]) for m in picked] == [("a", 3), ("b", 3), ("a", 4), ("b", 4)]
    assert all(m["replayed"] is True for m in picked)
    only_a = store.recent(Subscribe(streams=frozenset({"a"})), 10)
    assert [json.loads(body)["seq"] for body in only_a] == [2, 3, 4]
    assert only_a[-1] == messages.mark_replayed(_caption("a", 4))
    assert store.recent(Subscribe(), 0) == []
    store.add("c", _caption("c", 0))  # a third stream evicts the least recently heard one
    assert sorted(store.streams()) == ["b", "c"]


def test_replay_store_with_zero_capacity_stores_nothing() -> None:
    store = ReplayStore(0)
    store.add("a", _caption("a", 0))
    assert store.recent(Subscribe(), 5) == [] and store.streams() == []


def _capture(stream: str, state: str, frames: int = 10, error: str | None = None) -> messages.CaptureStatus:
    return messages.CaptureStatus(
        stream=stream,
        state=StreamState(state),
        frames=frames,
        fps=25.0,
        decode_errors=1,
        reconnects=2,
        drops=3,
        width=640,
        height=360,
        error=error,
        wall=1.0,
    )


def test_status_board_merges_capture_inference_and_processes() -> None:
    board = StatusBoard()
    assert board.update(_capture("cam0", "connecting"), now=10.0) is True
    assert board.update(_capture("cam0", "live", frames=20), now=11.0) is True  # state changed
    assert board.update(_capture("cam0", "live", frames=45), now=12.0) is False  # figures only
    assert (
        board.update(
            messages.InferenceStatus(
                streams={
                    "cam0": {
                        "lag_s": 0.4,
                        "skipped": 1,
                        "captions": 7,
                        "encodes_per_frame": 1.0,
                        "caption_latency_ms": 850.0,
                        "window_s": 16,
                    }
                },
                model="tiny",
                device="cpu",
                state=messages.ModelState.READY,
                wall=1.0,
            ),
            now=12.0,
        )
        is True
    )
    assert (
        board.update(
            messages.Processes(
                processes={
                    "capture:cam0": {"pid": 11, "restarts": 0, "alive": True},
                    "inference": {"pid": 12, "restarts": 1, "alive": True},
                },
                wall=1.0,
            ),
            now=12.0,
        )
        is True
    )
    status = board.snapshot(now=12.5, wall=99.0, clients=3)
    snap = json.loads(status.to_json())
    assert snap["type"] == "status" and snap["wall"] == 99.0 and snap["clients"] == 3
    assert snap["model"] == "tiny" and snap["device"] == "cpu"
    cam = snap["streams"]["cam0"]
    assert cam["state"] == "live" and cam["frames"] == 45 and cam["fps"] == 25.0
    assert (cam["drops"], cam["reconnects"], cam["decode_errors"]) == (3, 2, 1)
    assert cam["lag_s"] == 0.4 and cam["encodes_per_frame"] == 1.0 and cam["window_s"] == 16
    assert cam["age_s"] == 0.5
    assert snap["processes"]["inference"] == {"pid": 12, "restarts": 1, "alive": True}


def test_status_board_shows_a_dead_capture_as_lost() -> None:
    board = StatusBoard()
    board.update(_capture("cam0", "live"), now=0.0)
    board.update(_capture("file", "ended"), now=0.0)
    changed = board.update(
        messages.Processes(
            processes={
                "capture:cam0": {"pid": 11, "restarts": 0, "alive": False},
                "capture:file": {"pid": 12, "restarts": 0, "alive": False},
            },
            wall=1.0,
        ),
        now=1.0,
    )
    assert changed
    streams = board.snapshot(now=1.0, wall=1.0).streams
    assert streams["cam0"]["state"] == "lost"
    assert "not running" in streams["cam0"]["error"]
    assert streams["file"]["state"] == "ended"


def test_status_board_shows_a_capture_that_finished_with_code_0_as_ended() -> None:
    # A file that played through: its process exited 0, even if its own "ended" report was lost.
    board = StatusBoard()
    board.update(_capture("clip", "live"), now=0.0)
    board.update(_capture("cam1", "live"), now=0.0)
    board.update(
        messages.Processes(
            processes={
                "capture:clip": {"pid": 11, "restarts": 0, "alive": False, "finished": True, "exit_code": 0},
                "capture:cam1": {"pid": 12, "restarts": 0, "alive": False, "finished": True, "exit_code": 78},
            },
            wall=1.0,
        ),
        now=1.0,
    )
    streams = board.snapshot(now=1.0, wall=1.0).streams
    assert streams["clip"]["state"] == "ended" and streams["clip"]["error"] is None
    assert streams["cam1"]["state"] == "lost"


def _recorder(written: int, error: str | None = None) -> messages.RecorderStatus:
    return messages.RecorderStatus(
        store="/data/vidnarrate.db",
        written=written,
        dropped=2,
        queue=5,
        errors=1 if error else 0,
        last_commit_wall=50.0,
        error=error,
        wall=1.0,
    )


def test_status_board_shows_the_recorder_figures_once_it_reports() -> None:
    board = StatusBoard()
    assert "recorder" not in board.snapshot(now=0.0, wall=0.0).to_dict(), "a run without a store"
    assert board.update(_recorder(10), now=10.0) is True, "the recorder appeared"
    assert board.update(_recorder(20), now=11.0) is False, "figures only"
    assert board.update(_recorder(20, error="store x: the disk is full"), now=11.0) is True
    snap = json.loads(board.snapshot(now=11.5, wall=99.0).to_json())
    assert snap["recorder"] == {
        "store": "/data/vidnarrate.db",
        "written": 20,
        "dropped": 2,
        "queue": 5,
        "errors": 1,
        "last_commit_wall": 50.0,
        "error": "store x: the disk is full",
        "age_s": 0.5,
    }
    assert board.update(_recorder(30), now=12.0) is True, "the error cleared"


def _outputs(state: str, sent: int) -> messages.OutputsStatus:
    figures = {"target": "mqtt://broker:1883", "state": state, "sent": sent, "failed": 0, "dropped": 1}
    return messages.OutputsStatus(outputs={"mqtt": {**figures, "queued": 3, "error": None}}, wall=1.0)


def test_status_board_shows_the_outputs_once_they_report_and_at_once_when_a_state_changes() -> None:
    board = StatusBoard()
    assert "outputs" not in board.snapshot(now=0.0, wall=0.0).to_dict(), "a run without outputs"
    assert board.update(_outputs("connecting", 0), now=1.0) is True, "the outputs appeared"
    assert board.update(_outputs("connecting", 0), now=2.0) is False
    assert board.update(_outputs("ok", 5), now=3.0) is True, "connected"
    assert board.update(_outputs("ok", 9), now=4.0) is False, "figures only"
    snap = json.loads(board.snapshot(now=4.5, wall=99.0).to_json())
    assert snap["outputs"] == {
        "mqtt": {
            "target": "mqtt://broker:1883",
            "state": "ok",
            "sent": 9,
            "failed": 0,
            "dropped": 1,
            "queued": 3,
            "error": None,
        }
    }


def test_status_board_lists_streams_known_only_to_inference_as_connecting() -> None:
    board = StatusBoard()
    board.update(
        messages.InferenceStatus(
            streams={"cam9": {"lag_s": 0.0}}, model="m", device="d", state=messages.ModelState.READY, wall=1.0
        ),
        now=0.0,
    )
    assert board.snapshot(now=0.0, wall=0.0).streams["cam9"]["state"] == "connecting"


@pytest.mark.parametrize(
    "report",
    [
        {"type": "capture_status", "state": "live"},
        {**_capture("cam0", "live").to_dict(), "state": "dancing"},
        {"type": "inference_status", "streams": [], "model": "m", "device": "d", "state": "ready", "wall": 1},
        {"type": "processes", "processes": "none", "wall": 1.0},
        {"type": "processes", "processes": {"inference": 12}, "wall": 1.0},
        {**_recorder(1).to_dict(), "written": "many"},
        {k: v for k, v in _recorder(1).to_dict().items() if k != "last_commit_wall"},
    ],
)
def test_malformed_reports_never_reach_the_status_board(report: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # a ProtocolError from decoding, before the board sees it
        messages.decode(str(report["type"]), json.dumps(report).encode())


def test_status_board_rejects_a_capture_report_without_a_stream_name() -> None:
    with pytest.raises(ValueError, match="'stream'"):
        StatusBoard().update(_capture("", "live"), now=0.0)


def test_status_board_caps_the_number_of_streams() -> None:
    board = StatusBoard(max_streams=2)
    board.update(_capture("a", "live"), now=0.0)
    board.update(_capture("b", "live"), now=0.0)
    with pytest.raises(ValueError, match="already tracking 2"):
        board.update(_capture("c", "live"), now=0.0)
    assert board.streams() == {"a", "b"}


def test_pending_asks_route_by_gateway_key_cap_and_expire() -> None:
    asks = PendingAsks(timeout=5.0, per_client=2, total=3)
    a1 = asks.add(1, Ask(id=1, stream="cam0", question="q"), now=0.0)
    b1 = asks.add(2, Ask(id=1, stream="cam0", question="q"), now=1.0)
    assert a1.key != b1.key  # two clients may both use id 1
    asks.add(1, Ask(id=2, stream="cam0", question="q"), now=0.0)
    with pytest.raises(MessageError) as info:
        asks.add(1, Ask(id=3, stream="cam0", question="q"), now=0.0)
    assert info.value.code == ErrorCode.TOO_MANY_ASKS and info.value.id == 3
    with pytest.raises(MessageError, match="server"):
        asks.add(3, Ask(id=1, stream="cam0", question="q"), now=0.0)  # total cap
    resolved = asks.resolve(a1.key)
    assert resolved is not None and resolved.client == 1 and resolved.request_id == 1
    assert asks.resolve(a1.key) is None and asks.resolve(None) is None and asks.resolve(123) is None
    expired = asks.expire(now=5.5)
    assert [p.client for p in expired] == [1]  # b1 (asked at 1.0) has until 6.0
    asks.drop_client(2)
    assert len(asks) == 0
    asks.add(1, Ask(id=9, stream="cam0", question="q"), now=10.0)  # capacity came back


def test_client_limit_counts_per_client() -> None:
    limits = ClientLimit(per_client=2)
    assert limits.start(1) and limits.start(1) and not limits.start(1)
    assert limits.start(2) and len(limits) == 3
    limits.finish(1)
    assert limits.start(1) and not limits.start(1)
    for client in (1, 1, 2):
        limits.finish(client)
    assert len(limits) == 0
    limits.start(3)
    limits.forget(3)
    assert len(limits) == 0 and not limits.full(3)


def test_status_board_merges_the_reports_of_several_inference_processes() -> None:
    """[model] devices: each inference process reports only its own streams; one's report must not
    wipe the other's streams, and each stream says which process owns it."""
    board = StatusBoard()

    def report(role: str, streams: dict[str, Any], device: str = "cuda:0") -> messages.InferenceStatus:
        return messages.InferenceStatus(
            streams=streams, model="m", device=device, state=messages.ModelState.READY, wall=1.0, role=role
        )

    assert board.update(report("inference:0", {"yard": {"captions": 3}, "door": {"captions": 1}}), now=0.0)
    assert board.update(report("inference:1", {"gate": {"captions": 5}}, device="cuda:1"), now=0.0)
    assert not board.update(
        report("inference:0", {"yard": {"captions": 4}, "door": {"captions": 2}}), now=1.0
    )
    status = board.snapshot(now=1.0, wall=1.0)
    assert {name: (s["captions"], s["inference"]) for name, s in status.streams.items()} == {
        "yard": (4, "inference:0"),
        "door": (2, "inference:0"),
        "gate": (5, "inference:1"),
    }
    assert status.device == "cuda:0, cuda:1"
    # A restarted process reports its streams again (empty while loading): the other's stay.
    board.update(report("inference:1", {}, device="cuda:1"), now=2.0)
    assert set(board.snapshot(now=2.0, wall=2.0).streams) == {"yard", "door"}


def test_status_board_with_one_inference_process_names_no_owner() -> None:
    board = StatusBoard()
    board.update(
        messages.InferenceStatus(
            streams={"cam0": {"captions": 1}},
            model="m",
            device="cpu",
            state=messages.ModelState.READY,
            wall=1.0,
        ),
        now=0.0,
    )
    status = board.snapshot(now=0.0, wall=0.0)
    assert "inference" not in status.streams["cam0"] and status.device == "cpu"
