"""The message schema: client messages are validated strictly, server messages carry DESIGN's fields."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import messages
from stream.errors import ProtocolError
from stream.messages import (
    MAX_QUESTION_CHARS,
    Ask,
    ErrorCode,
    MessageError,
    Ping,
    StreamState,
    Subscribe,
    parse_client_message,
)


def test_subscribe_defaults_to_every_stream_without_replay() -> None:
    assert parse_client_message('{"type": "subscribe"}') == Subscribe(
        streams=None, replay=0, thumbnails=False
    )


def test_subscribe_with_streams_replay_and_thumbnails() -> None:
    request = parse_client_message(
        json.dumps({"type": "subscribe", "streams": ["cam0", "door"], "replay": 5, "thumbnails": True})
    )
    assert request == Subscribe(streams=frozenset({"cam0", "door"}), replay=5, thumbnails=True)
    assert isinstance(request, Subscribe)
    assert request.wants("door") and not request.wants("cam1")
    assert parse_client_message(b'{"type":"subscribe","streams":"*"}') == Subscribe()
    assert Subscribe().wants("anything")


def test_ask_and_ping_parse_with_ids_of_either_kind() -> None:
    assert parse_client_message('{"type":"ask","id":"q1","stream":"cam0","question":"who?"}') == Ask(
        id="q1", stream="cam0", question="who?"
    )
    assert parse_client_message('{"type":"ask","id":7,"stream":"cam0","question":"who?"}') == Ask(
        id=7, stream="cam0", question="who?"
    )
    assert parse_client_message('{"type":"ping"}') == Ping()
    assert parse_client_message('{"type":"ping","id":"p1","t":12.5}') == Ping(id="p1", t=12.5)


def test_unknown_extra_fields_are_ignored() -> None:
    assert parse_client_message('{"type":"ping","future":1}') == Ping()


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        ("not json", ErrorCode.BAD_JSON, None),
        (b"\xff\xfe{}", ErrorCode.BAD_JSON, None),
        ("[1, 2]", ErrorCode.NOT_OBJECT, None),
        ('"subscribe"', ErrorCode.NOT_OBJECT, None),
        ("null", ErrorCode.NOT_OBJECT, None),
        ('{"streams": "*"}', ErrorCode.UNKNOWN_TYPE, None),
        ('{"type": "explode", "id": "x1"}', ErrorCode.UNKNOWN_TYPE, "x1"),
        ('{"type": 3}', ErrorCode.UNKNOWN_TYPE, None),
        ('{"type": "subscribe", "streams": "cam0"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "streams": [1]}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "streams": [""]}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "replay": -1}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "replay": 1.5}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "replay": true}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "thumbnails": "yes"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ask", "id": 1, "stream": "cam0"}', ErrorCode.MISSING_FIELD, 1),
        ('{"type": "ask", "stream": "cam0", "question": "q"}', ErrorCode.MISSING_FIELD, None),
        ('{"type": "ask", "id": 1, "stream": "cam0", "question": "  "}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "ask", "id": 1, "stream": 5, "question": "q"}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "ask", "id": {"a": 1}, "stream": "cam0", "question": "q"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ask", "id": true, "stream": "cam0", "question": "q"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ping", "t": "now"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ping", "id": [1]}', ErrorCode.BAD_FIELD, None),
    ],
)
def test_invalid_messages_raise_with_code_and_id(
    raw: str | bytes, code: ErrorCode, request_id: object
) -> None:
    with pytest.raises(MessageError) as info:
        parse_client_message(raw)
    assert info.value.code == code
    assert info.value.id == request_id
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)
    reply = info.value.to_message()
    assert reply["type"] == "error" and reply["error"] == code.value and reply["message"] == str(info.value)
    assert reply.get("id") == request_id


def test_non_finite_numbers_are_not_json() -> None:
    for text in ('{"type": "ping", "t": NaN}', '{"type": "ping", "t": -Infinity}'):
        with pytest.raises(MessageError) as info:
            parse_client_message(text)
        assert info.value.code == ErrorCode.BAD_JSON and "is not a JSON number" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"type": "ping", "id": ' + "9" * 5000 + "}", "4300 digits"),  # Python's int conversion limit
        ('{"type": "ping", "x": ' + "[" * 5000 + "]" * 5000 + "}", "nests too deeply"),
        ('{"type": "ping", "id": "\\ud800"}', "lone surrogate"),  # escaped: pong could not echo it
        ('{"type": "ping", "id": "\ud800"}', "lone surrogate"),  # raw, in a str
        ('{"type": "ping"}'.encode("utf-16"), "not valid UTF-8"),  # json.loads would guess UTF-16
    ],
)
def test_json_that_python_chokes_on_is_a_bad_json_reply(raw: str | bytes, reason: str) -> None:
    """These once escaped as ValueError, RecursionError or UnicodeEncodeError and closed the client's
    connection with 1011; now each is an error reply, like any malformed message."""
    with pytest.raises(MessageError) as info:
        parse_client_message(raw, max_bytes=65536)
    assert info.value.code == ErrorCode.BAD_JSON and reason in str(info.value)
    assert parse_client_message('{"type": "ping", "id": "\\ud83d\\ude00"}').id == "\U0001f600"  # a pair


def test_size_limit_and_question_limit() -> None:
    big = json.dumps({"type": "ping", "pad": "x" * 2000})
    with pytest.raises(MessageError) as info:
        parse_client_message(big, max_bytes=1000)
    assert info.value.code == ErrorCode.TOO_LARGE and "1000" in str(info.value)
    assert parse_client_message(big, max_bytes=4000) == Ping()
    long_question = json.dumps(
        {"type": "ask", "id": 1, "stream": "c", "question": "q" * (MAX_QUESTION_CHARS + 1)}
    )
    with pytest.raises(MessageError, match="limit"):
        parse_client_message(long_question)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
            max_leaves=12,
        ).map(json.dumps),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["subscribe", "ask", "ping"])},
            optional={
                "id": st.integers() | st.text(),
                "streams": st.text() | st.lists(st.text()),
                "replay": st.integers(),
                "question": st.text(),
                "stream": st.text(),
                "t": st.floats(),
                "thumbnails": st.integers(),
            },
        ).map(json.dumps),
    )
)
def test_any_input_parses_or_raises_message_error(raw: str | bytes) -> None:
    try:
        parsed = parse_client_message(raw)
    except MessageError as exc:
        assert exc.code in set(ErrorCode)
        assert str(exc)
    else:
        assert isinstance(parsed, Subscribe | Ask | Ping)


def test_server_messages_have_the_design_fields() -> None:
    caption = messages.caption(
        stream="cam0",
        seq=3,
        t_start=4.0,
        t_end=8.0,
        frame_times=[4.0, 5.0, 6.0, 7.0],
        wall_start=100.0,
        wall_end=104.0,
        text="A cat.",
        model="tiny",
        latency_ms=12.5,
    )
    assert {
        "type",
        "stream",
        "seq",
        "t_start",
        "t_end",
        "frame_times",
        "wall_start",
        "wall_end",
        "text",
        "model",
        "latency_ms",
    } <= caption.keys()
    assert caption["type"] == "caption"
    assert messages.partial(stream="cam0", seq=3, text="A c")["type"] == "partial"
    ev = messages.event(stream="cam0", seq=1, t_start=0.0, t_end=4.0, rule="fence", text="climbing")
    assert {"stream", "seq", "t_start", "t_end", "rule", "text"} <= ev.keys()
    assert messages.answer(id="q", stream="cam0", text="yes") == {
        "type": "answer",
        "id": "q",
        "stream": "cam0",
        "text": "yes",
    }
    assert messages.error(ErrorCode.BAD_JSON, "bad") == {
        "type": "error",
        "error": "bad_json",
        "message": "bad",
    }
    assert messages.error("x", "y", id=0)["id"] == 0
    assert messages.pong(wall=1.0) == {"type": "pong", "wall": 1.0}
    assert messages.pong(id="p", t=2.0, wall=1.0) == {"type": "pong", "id": "p", "t": 2.0, "wall": 1.0}
    status = messages.status(
        streams={"cam0": {"state": "live"}}, processes={"inference": {"pid": 1}}, wall=1.0
    )
    assert status["type"] == "status" and status["streams"]["cam0"]["state"] == "live"
    thumb = messages.thumbnail(stream="cam0", t=1.0, wall=2.0, jpeg="QUJD")
    assert thumb["jpeg"] == "QUJD"
    assert messages.dropped(count=3, total=10) == {"type": "dropped", "count": 3, "total": 10}
    ack = messages.subscribed(Subscribe(streams=frozenset({"b", "a"}), replay=2), replayed=1)
    assert ack == {
        "type": "subscribed",
        "streams": ["a", "b"],
        "replay": 2,
        "replayed": 1,
        "thumbnails": False,
    }


def test_bus_report_builders_check_the_state() -> None:
    report = messages.capture_status(
        stream="cam0",
        state="live",
        frames=10,
        fps=25.0,
        decode_errors=0,
        reconnects=0,
        drops=1,
        width=640,
        height=480,
        error=None,
        wall=1.0,
    )
    assert report["state"] == StreamState.LIVE == "live"
    with pytest.raises(ValueError):
        messages.capture_status(
            stream="cam0",
            state="sleeping",
            frames=0,
            fps=0.0,
            decode_errors=0,
            reconnects=0,
            drops=0,
            width=None,
            height=None,
            error=None,
            wall=1.0,
        )
    inf = messages.inference_status(streams={"cam0": {"lag_s": 0.5}}, model="tiny", device="cpu", wall=1.0)
    assert inf["type"] == "inference_status"
    assert (
        messages.processes(processes={"gateway": {"pid": 1, "restarts": 0, "alive": True}}, wall=1.0)["type"]
        == "processes"
    )
    ask = messages.ask_request(id="g-1", stream="cam0", question="q", wall=1.0)
    assert ask["type"] == "ask" and ask["id"] == "g-1"


def test_to_json_is_compact_utf8_and_refuses_nan() -> None:
    assert messages.to_json({"type": "x", "text": "café"}) == '{"type":"x","text":"café"}'
    with pytest.raises(ProtocolError, match="'x'"):
        messages.to_json({"type": "x", "v": math.nan})
    with pytest.raises(ProtocolError):
        messages.to_json({"type": "x", "v": object()})
