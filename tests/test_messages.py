"""The message schema: client messages are validated strictly, server messages carry DESIGN's fields."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import messages
from stream.errors import ProtocolError
from stream.messages import MAX_QUESTION_CHARS, ErrorCode, MessageError, StreamState
from stream.requests import Ask, History, Ping, Search, Subscribe, parse_client_message


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


def test_search_and_history_parse_with_defaults_and_every_field() -> None:
    assert parse_client_message('{"type":"search","id":"s1","query":"red car"}') == Search(
        id="s1", query="red car", streams=None, wall_from=None, wall_to=None, limit=50
    )
    full = {
        "type": "search",
        "id": 4,
        "query": '"red car" door',
        "streams": ["a", "b"],
        "from": 10,
        "to": 20.5,
    }
    assert parse_client_message(json.dumps({**full, "limit": 500})) == Search(
        id=4, query='"red car" door', streams=frozenset({"a", "b"}), wall_from=10.0, wall_to=20.5, limit=500
    )
    assert parse_client_message('{"type":"history","id":"h","stream":"door"}') == History(
        id="h", stream="door", wall_from=None, wall_to=None, limit=50
    )
    assert parse_client_message('{"type":"history","id":"h","stream":"door","from":5,"to":5,"limit":1}') == (
        History(id="h", stream="door", wall_from=5.0, wall_to=5.0, limit=1)
    )


def test_results_carry_the_items_as_given_and_truncated_only_when_set() -> None:
    items = [{"type": "caption", "stream": "door", "text": "a cat", "score": 1.5}]
    assert _json(messages.Results(id="s1", items=items)) == {"type": "results", "id": "s1", "items": items}
    assert _json(messages.Results(id=2, items=[], truncated=True)) == {
        "type": "results",
        "id": 2,
        "items": [],
        "truncated": True,
    }


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
        ('{"type": "subscribe", "types": "event"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "types": []}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "types": ["Event!"]}', ErrorCode.BAD_FIELD, None),
        ('{"type": "subscribe", "types": [1]}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ask", "id": 1, "stream": "cam0"}', ErrorCode.MISSING_FIELD, 1),
        ('{"type": "ask", "stream": "cam0", "question": "q"}', ErrorCode.MISSING_FIELD, None),
        ('{"type": "ask", "id": 1, "stream": "cam0", "question": "  "}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "ask", "id": 1, "stream": 5, "question": "q"}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "ask", "id": {"a": 1}, "stream": "cam0", "question": "q"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ask", "id": true, "stream": "cam0", "question": "q"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ping", "t": "now"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "ping", "id": [1]}', ErrorCode.BAD_FIELD, None),
        ('{"type": "search", "query": "door"}', ErrorCode.MISSING_FIELD, None),
        ('{"type": "search", "id": 1}', ErrorCode.MISSING_FIELD, 1),
        ('{"type": "search", "id": [1], "query": "door"}', ErrorCode.BAD_FIELD, None),
        ('{"type": "search", "id": 1, "query": ""}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "search", "id": 1, "query": "\\"door"}', ErrorCode.BAD_QUERY, 1),
        ('{"type": "search", "id": 1, "query": "-- !"}', ErrorCode.BAD_QUERY, 1),
        ('{"type": "search", "id": 1, "query": "d", "streams": "*"}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "search", "id": 1, "query": "d", "streams": [2]}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "search", "id": 1, "query": "d", "from": 3, "to": 2}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "search", "id": 1, "query": "d", "from": "3"}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "search", "id": 1, "query": "d", "limit": 0}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "search", "id": 1, "query": "d", "limit": true}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "history", "id": 1}', ErrorCode.MISSING_FIELD, 1),
        ('{"type": "history", "stream": "door"}', ErrorCode.MISSING_FIELD, None),
        ('{"type": "history", "id": 1, "stream": ""}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "history", "id": 1, "stream": "d", "to": 1e400}', ErrorCode.BAD_FIELD, 1),
        ('{"type": "history", "id": 1, "stream": "d", "limit": 501}', ErrorCode.BAD_FIELD, 1),
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
    reply = json.loads(info.value.to_reply().to_json())
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


def test_a_search_query_over_its_limit_is_too_large() -> None:
    with pytest.raises(MessageError) as info:
        parse_client_message(json.dumps({"type": "search", "id": "s", "query": "a" * 1001}))
    assert info.value.code == ErrorCode.TOO_LARGE and info.value.id == "s" and "1000" in str(info.value)
    assert parse_client_message(json.dumps({"type": "search", "id": "s", "query": "a" * 1000}))


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


def _caption(**overrides: object) -> messages.Caption:
    fields: dict[str, Any] = {
        "stream": "cam0",
        "seq": 3,
        "t_start": 4.0,
        "t_end": 8.0,
        "frame_times": [4.0, 5.0, 6.0, 7.0],
        "wall_start": 100.0,
        "wall_end": 104.0,
        "text": "A cat.",
        "model": "tiny",
        "latency_ms": 12.5,
        **overrides,
    }
    return messages.Caption(**fields)


def _json(message: messages.ServerMessage) -> dict[str, Any]:
    return json.loads(message.to_json())


def test_server_messages_have_the_design_fields() -> None:
    assert _json(_caption(frames=4, model_ms=10.0, encode_ms=2.0)) == {
        "type": "caption",
        "stream": "cam0",
        "seq": 3,
        "t_start": 4.0,
        "t_end": 8.0,
        "frame_times": [4.0, 5.0, 6.0, 7.0],
        "wall_start": 100.0,
        "wall_end": 104.0,
        "text": "A cat.",
        "model": "tiny",
        "latency_ms": 12.5,
        "skipped": 0,
        "frames": 4,
        "model_ms": 10.0,
        "encode_ms": 2.0,
    }
    assert _json(messages.Partial(stream="cam0", seq=3, text="A c")) == {
        "type": "partial",
        "stream": "cam0",
        "seq": 3,
        "text": "A c",
    }
    event = messages.Event(
        stream="cam0",
        rule="fence",
        event_id="e1",
        state=messages.EventState.START,
        t_start=0.0,
        t_end=4.0,
        wall_start=100.0,
        wall_end=104.0,
        score=0.8,
        text="climbing",
    )
    assert _json(event) == {
        "type": "event",
        "stream": "cam0",
        "rule": "fence",
        "event_id": "e1",
        "state": "start",
        "t_start": 0.0,
        "t_end": 4.0,
        "wall_start": 100.0,
        "wall_end": 104.0,
        "score": 0.8,
        "text": "climbing",
    }
    assert _json(messages.Answer(id="q", stream="cam0", text="yes")) == {
        "type": "answer",
        "id": "q",
        "stream": "cam0",
        "text": "yes",
    }
    assert _json(messages.ErrorReply(error=ErrorCode.BAD_JSON, message="bad")) == {
        "type": "error",
        "error": "bad_json",
        "message": "bad",
    }
    assert _json(messages.ErrorReply(error=ErrorCode.BAD_FIELD, message="y", id=0))["id"] == 0
    assert _json(messages.Pong(wall=1.0)) == {"type": "pong", "wall": 1.0}
    assert _json(messages.Pong(id="p", t=2.0, wall=1.0)) == {"type": "pong", "id": "p", "t": 2.0, "wall": 1.0}
    status = messages.Status(
        streams={"cam0": {"state": "live"}},
        processes={"inference": {"pid": 1}},
        model=None,
        device=None,
        wall=1.0,
    )
    assert _json(status) == {
        "type": "status",
        "streams": {"cam0": {"state": "live"}},
        "processes": {"inference": {"pid": 1}},
        "model": None,
        "device": None,
        "wall": 1.0,
    }
    thumb = messages.Thumbnail(stream="cam0", t=1.0, wall=2.0, jpeg="QUJD")
    assert _json(thumb) == {"type": "thumbnail", "stream": "cam0", "t": 1.0, "wall": 2.0, "jpeg": "QUJD"}
    assert _json(messages.Dropped(count=3, total=10)) == {"type": "dropped", "count": 3, "total": 10}
    ack = messages.Subscribed(streams=["a", "b"], replay=2, replayed=1, thumbnails=False)
    assert _json(ack) == {
        "type": "subscribed",
        "streams": ["a", "b"],
        "replay": 2,
        "replayed": 1,
        "thumbnails": False,
    }


def test_message_error_becomes_its_error_reply() -> None:
    error = MessageError(ErrorCode.TOO_LARGE, "message is 9 bytes; the limit is 8", id="r1")
    assert error.to_reply() == messages.ErrorReply(
        error=ErrorCode.TOO_LARGE, message="message is 9 bytes; the limit is 8", id="r1"
    )


def _bus_messages() -> list[messages.BusMessage]:
    return [
        _caption(frames=4, model_ms=10.0, encode_ms=2.0),
        messages.Partial(stream="cam0", seq=3, text="A c"),
        messages.Thumbnail(stream="cam0", t=1.0, wall=2.0, jpeg="QUJD", width=320, height=180),
        messages.Answer(id="g-1", stream="cam0", text="yes", t_start=0.0, t_end=4.0, frame_times=[0.0, 4.0]),
        messages.Answer(id="g-2", stream="cam0", text="", error=ErrorCode.NO_FRAMES, message="nothing yet"),
        messages.CaptureStatus(
            stream="cam0",
            state=StreamState.LIVE,
            frames=10,
            fps=25.0,
            decode_errors=0,
            reconnects=0,
            drops=1,
            width=None,
            height=None,
            error=None,
            wall=1.0,
        ),
        messages.InferenceStatus(
            streams={"cam0": {"lag_s": 0.5}},
            model="tiny",
            device="cpu",
            state=messages.ModelState.FAILED,
            error="no weights",
            wall=1.0,
        ),
        messages.Processes(processes={"gateway": {"pid": 1, "restarts": 0, "alive": True}}, wall=1.0),
        messages.AskRequest(id="g-1", stream="cam0", question="q", wall=1.0, client=3),
    ]


@pytest.mark.parametrize("message", _bus_messages(), ids=lambda m: m.TYPE)
def test_every_bus_message_decodes_to_what_was_encoded(message: messages.BusMessage) -> None:
    assert messages.decode(message.TYPE, message.to_json()) == message


def test_decoding_names_what_is_wrong() -> None:
    good = _json(_caption())
    with pytest.raises(ProtocolError, match="unknown type 'launch'"):
        messages.decode("launch", b"{}")
    with pytest.raises(ProtocolError, match="not JSON"):
        messages.decode("caption", b"{nope")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        messages.decode("caption", b"[]")
    with pytest.raises(ProtocolError, match="expected a 'caption' message"):
        messages.decode("caption", json.dumps({**good, "type": "partial"}).encode())
    with pytest.raises(ProtocolError, match="lacks the field 'text'"):
        messages.decode("caption", json.dumps({k: v for k, v in good.items() if k != "text"}).encode())
    with pytest.raises(ProtocolError, match="unknown fields \\['bogus'\\]"):
        messages.decode("caption", json.dumps({**good, "bogus": 1}).encode())
    with pytest.raises(ProtocolError, match="'seq': expected int, got a string"):
        messages.decode("caption", json.dumps({**good, "seq": "3"}).encode())
    with pytest.raises(ProtocolError, match="'seq'"):
        messages.decode("caption", json.dumps({**good, "seq": True}).encode())
    with pytest.raises(ProtocolError, match="'frame_times'"):
        messages.decode("caption", json.dumps({**good, "frame_times": [1.0, "x"]}).encode())
    report = _json(_bus_messages()[5])
    with pytest.raises(ProtocolError, match="'sleeping' is not one of connecting, live, lost, ended"):
        messages.decode("capture_status", json.dumps({**report, "state": "sleeping"}).encode())
    answer = {"type": "answer", "id": "g", "stream": "s", "text": "", "error": "on_fire"}
    with pytest.raises(ProtocolError, match="'error'"):
        messages.decode("answer", json.dumps(answer).encode())


def test_a_decoded_state_is_its_enum_member() -> None:
    report = messages.decode("capture_status", _bus_messages()[5].to_json())
    assert isinstance(report, messages.CaptureStatus) and report.state is StreamState.LIVE


def test_to_json_is_compact_utf8_and_refuses_nan() -> None:
    assert _caption(text="café").to_json().startswith(b'{"type":"caption","stream":"cam0"')
    assert '"text":"café"'.encode() in _caption(text="café").to_json()
    with pytest.raises(ProtocolError, match="'caption'"):
        _caption(latency_ms=math.nan).to_json()
    with pytest.raises(ProtocolError, match="'partial'"):
        messages.Partial(stream="cam0", seq=0, text=object()).to_json()  # type: ignore[arg-type]


def test_mark_replayed_adds_the_field_without_decoding() -> None:
    caption = _caption()
    assert messages.mark_replayed(caption.to_json()) == dataclasses.replace(caption, replayed=True).to_json()
    with pytest.raises(ProtocolError):
        messages.mark_replayed(b"[1]")


def test_subscribe_types_name_the_message_types_to_receive() -> None:
    request = parse_client_message(json.dumps({"type": "subscribe", "types": ["event", "summary"]}))
    assert isinstance(request, Subscribe) and request.types == frozenset({"event", "summary"})
    assert request.wants_type("event") and not request.wants_type("caption")
    everything = parse_client_message('{"type": "subscribe"}')
    assert isinstance(everything, Subscribe) and everything.types is None and everything.wants_type("caption")
    ack = messages.Subscribed(streams="*", replay=0, replayed=0, thumbnails=False, types=["event"])
    assert _json(ack)["types"] == ["event"]
