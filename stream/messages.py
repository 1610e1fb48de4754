"""The JSON messages of vidnarrate: their shapes, their validation and their builders.

One JSON object per websocket text message, always with ``"type"``; the same dicts travel on the zmq
bus between processes. ``docs/protocol.md`` documents every field; this module is its code.

* **Client to server** (validated strictly, because anyone can send anything): :class:`Subscribe`,
  :class:`Ask`, :class:`Ping`, parsed by :func:`parse_client_message`, which raises
  :class:`MessageError` (a :class:`~stream.errors.ProtocolError`) carrying the ``error`` code and the
  sentence the gateway replies with.
* **Server to client**: ``caption``, ``partial``, ``event``, ``answer`` (produced by the inference
  process, forwarded as they are), ``status``, ``thumbnail``, ``error``, ``pong``, ``subscribed`` and
  ``dropped`` (produced by the gateway). Builders below return plain dicts; extra fields may be added
  to any message, and clients must ignore fields they do not know.
* **Bus only** (never sent to clients as they are): ``capture_status``, ``inference_status``,
  ``processes`` (merged by the gateway into ``status``) and ``ask`` (gateway -> inference).

Times: ``t_*`` are seconds of stream time (from the source's first frame), ``wall*`` are Unix seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeAlias

from .errors import ProtocolError

Message: TypeAlias = dict[str, Any]
AskId: TypeAlias = str | int

# Limits on what a client may send; each one is documented in docs/protocol.md.
MAX_ID_CHARS: Final = 128
MAX_STREAM_CHARS: Final = 128
MAX_STREAMS_PER_SUBSCRIBE: Final = 256
MAX_QUESTION_CHARS: Final = 4000
MAX_REPLAY: Final = 100_000


class ErrorCode(StrEnum):
    """The ``error`` field of an ``error`` message: short, stable, machine-readable."""

    BAD_JSON = "bad_json"  # not UTF-8 JSON
    NOT_OBJECT = "not_object"  # JSON, but not an object
    UNKNOWN_TYPE = "unknown_type"  # no "type", or a type the server does not know
    MISSING_FIELD = "missing_field"  # a required field is absent
    BAD_FIELD = "bad_field"  # a field has the wrong type or an out-of-range value
    TOO_LARGE = "too_large"  # the message is larger than the server accepts
    UNKNOWN_STREAM = "unknown_stream"  # an ask names a stream the server does not know
    ASK_UNAVAILABLE = "ask_unavailable"  # the inference process is not running / asks are off
    ASK_TIMEOUT = "ask_timeout"  # no answer came within the ask timeout
    TOO_MANY_ASKS = "too_many_asks"  # too many of this client's asks are still unanswered
    NO_FRAMES = "no_frames"  # an ask's stream has no sampled frame to look at yet
    MODEL_ERROR = "model_error"  # the model refused the question (e.g. the prompt is too long)


class CloseCode:
    """Websocket close codes the gateway uses (4000-4999 is the range for applications)."""

    GOING_AWAY: Final = 1001  # the server is shutting down
    POLICY_VIOLATION: Final = 1008  # the client sent too many invalid messages
    MESSAGE_TOO_BIG: Final = 1009  # a message beyond the hard size limit (websockets closes)
    TOO_SLOW: Final = 4000  # the client stayed too far behind for too long


class StreamState(StrEnum):
    """The state of a source, as its capture process reports it."""

    CONNECTING = "connecting"
    LIVE = "live"
    LOST = "lost"
    ENDED = "ended"


class MessageError(ProtocolError):
    """A client message that breaks the schema. ``code`` and ``str(self)`` become the error reply;
    ``id`` is the request's id when it could be read, so the client can match the reply."""

    def __init__(self, code: ErrorCode, message: str, id: AskId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.id = id

    def to_message(self) -> Message:
        return error(self.code, str(self), id=self.id)


# -- client to server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribe:
    """Receive messages of these streams (``None`` = every stream, now and later).

    ``replay``: how many of each stream's most recent captions to resend first (capped by the
    server's store). ``thumbnails``: also receive ``thumbnail`` messages (JPEG, base64) of these streams.
    """

    streams: frozenset[str] | None = None
    replay: int = 0
    thumbnails: bool = False

    def wants(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams


@dataclass(frozen=True)
class Ask:
    """A question about what a stream shows now; answered (to this client only) by an ``answer``
    with the same ``id``, or an ``error`` with that ``id``."""

    id: AskId
    stream: str
    question: str


@dataclass(frozen=True)
class Ping:
    """Application-level heartbeat (browsers cannot see protocol pings); ``id``/``t`` are echoed."""

    id: AskId | None = None
    t: float | None = None


ClientMessage: TypeAlias = Subscribe | Ask | Ping


def parse_client_message(raw: str | bytes, *, max_bytes: int | None = None) -> ClientMessage:
    """Validate one websocket message from a client.

    Raises :class:`MessageError` naming the problem. Unknown extra fields are ignored, so clients
    written for a later protocol keep working.
    """
    size = len(raw.encode(errors="surrogatepass")) if isinstance(raw, str) else len(raw)
    if max_bytes is not None and size > max_bytes:
        raise MessageError(ErrorCode.TOO_LARGE, f"message is {size} bytes; the limit is {max_bytes}")
    try:
        # Bytes must be UTF-8 (json.loads would also guess UTF-16/32); NaN and Infinity are not JSON.
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if isinstance(raw, str):
            raw.encode("utf-8")  # a str holding a lone surrogate is no UTF-8 text
        data = json.loads(text, parse_constant=_reject_constant)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # nor is one escaped as \ud800
    except UnicodeError as exc:
        raise MessageError(
            ErrorCode.BAD_JSON, "message is not valid UTF-8 (or escapes a lone surrogate)"
        ) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an int of over 4300 digits, deep nesting
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise MessageError(ErrorCode.BAD_JSON, f"message is not valid JSON: {reason}") from exc
    if not isinstance(data, dict):
        raise MessageError(ErrorCode.NOT_OBJECT, f"message must be a JSON object, not {_json_kind(data)}")
    request_id = _optional_id(data)
    kind = data.get("type")
    if kind is None:
        raise MessageError(ErrorCode.UNKNOWN_TYPE, "message has no 'type' field", request_id)
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        known = ", ".join(sorted(_PARSERS))
        raise MessageError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r:.60}; expected one of {known}", request_id
        )
    return parser(data, request_id)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_subscribe(data: Message, request_id: AskId | None) -> Subscribe:
    streams_field = data.get("streams", "*")
    streams: frozenset[str] | None
    if streams_field == "*":
        streams = None
    elif isinstance(streams_field, list):
        if len(streams_field) > MAX_STREAMS_PER_SUBSCRIBE:
            raise MessageError(
                ErrorCode.BAD_FIELD,
                f"'streams' lists {len(streams_field)} streams; the limit is {MAX_STREAMS_PER_SUBSCRIBE}",
                request_id,
            )
        for name in streams_field:
            _check_stream_name(name, "'streams' entries", request_id)
        streams = frozenset(streams_field)
    else:
        raise MessageError(
            ErrorCode.BAD_FIELD, "'streams' must be \"*\" or a list of stream names", request_id
        )
    replay = data.get("replay", 0)
    if not _is_int(replay) or not 0 <= replay <= MAX_REPLAY:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'replay' must be an integer from 0 to {MAX_REPLAY}", request_id
        )
    thumbnails = data.get("thumbnails", False)
    if not isinstance(thumbnails, bool):
        raise MessageError(ErrorCode.BAD_FIELD, "'thumbnails' must be true or false", request_id)
    return Subscribe(streams=streams, replay=replay, thumbnails=thumbnails)


def _parse_ask(data: Message, request_id: AskId | None) -> Ask:
    for name in ("id", "stream", "question"):
        if name not in data:
            raise MessageError(ErrorCode.MISSING_FIELD, f"'ask' needs the field {name!r}", request_id)
    if request_id is None:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'id' must be a string of at most {MAX_ID_CHARS} characters or an integer"
        )
    stream = data["stream"]
    _check_stream_name(stream, "'stream'", request_id)
    question = data["question"]
    if not isinstance(question, str) or not question.strip():
        raise MessageError(ErrorCode.BAD_FIELD, "'question' must be a non-empty string", request_id)
    if len(question) > MAX_QUESTION_CHARS:
        raise MessageError(
            ErrorCode.BAD_FIELD,
            f"'question' is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}",
            request_id,
        )
    return Ask(id=request_id, stream=stream, question=question)


def _parse_ping(data: Message, request_id: AskId | None) -> Ping:
    if "id" in data and request_id is None:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'id' must be a string of at most {MAX_ID_CHARS} characters or an integer"
        )
    t = data.get("t")
    if t is not None and (not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t)):
        raise MessageError(ErrorCode.BAD_FIELD, "'t' must be a finite number", request_id)
    return Ping(id=request_id, t=t)


_PARSERS: dict[str, Callable[[Message, AskId | None], ClientMessage]] = {
    "subscribe": _parse_subscribe,
    "ask": _parse_ask,
    "ping": _parse_ping,
}


def _optional_id(data: Message) -> AskId | None:
    """The request's ``id`` if it is usable (so even an error reply can carry it), else None."""
    value = data.get("id")
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:  # exact in JavaScript
        return value
    return None


def _check_stream_name(value: Any, what: str, request_id: AskId | None) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_STREAM_CHARS:
        raise MessageError(
            ErrorCode.BAD_FIELD,
            f"{what} must be stream names (strings of 1 to {MAX_STREAM_CHARS} characters)",
            request_id,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# -- server to client ----------------------------------------------------------------------------
# Builders take keyword arguments (the field names of docs/protocol.md) and return plain dicts.
# ``extra`` fields are merged in: the schema promises the named fields, not only them.


def caption(
    *,
    stream: str,
    seq: int,
    t_start: float,
    t_end: float,
    frame_times: list[float],
    wall_start: float,
    wall_end: float,
    text: str,
    model: str,
    latency_ms: float,
    skipped: int = 0,
    **extra: Any,
) -> Message:
    """A rolling caption of ``[t_start, t_end]`` built from the frames at ``frame_times``."""
    return {
        "type": "caption",
        "stream": stream,
        "seq": seq,
        "t_start": t_start,
        "t_end": t_end,
        "frame_times": list(frame_times),
        "wall_start": wall_start,
        "wall_end": wall_end,
        "text": text,
        "model": model,
        "latency_ms": latency_ms,
        "skipped": skipped,
        **extra,
    }


def partial(*, stream: str, seq: int, text: str, **extra: Any) -> Message:
    """The text of caption ``seq`` so far (token streaming); the final ``caption`` follows."""
    return {"type": "partial", "stream": stream, "seq": seq, "text": text, **extra}


def event(
    *, stream: str, seq: int, t_start: float, t_end: float, rule: str, text: str, **extra: Any
) -> Message:
    """An alert: the rule (an alert prompt's name) matched the window ``[t_start, t_end]``."""
    return {
        "type": "event",
        "stream": stream,
        "seq": seq,
        "t_start": t_start,
        "t_end": t_end,
        "rule": rule,
        "text": text,
        **extra,
    }


def answer(*, id: AskId, stream: str, text: str, **extra: Any) -> Message:
    """The answer to the ``ask`` with this ``id``."""
    return {"type": "answer", "id": id, "stream": stream, "text": text, **extra}


def status(
    *, streams: dict[str, Message], processes: dict[str, Message], wall: float, **extra: Any
) -> Message:
    """Per-stream state and figures, and per-process pid/restarts (merged by the gateway)."""
    return {"type": "status", "streams": streams, "processes": processes, "wall": wall, **extra}


def thumbnail(*, stream: str, t: float, wall: float, jpeg: str, **extra: Any) -> Message:
    """A small JPEG (base64) of the stream's frame at stream time ``t``."""
    return {"type": "thumbnail", "stream": stream, "t": t, "wall": wall, "jpeg": jpeg, **extra}


def error(code: ErrorCode | str, message: str, *, id: AskId | None = None) -> Message:
    """A reply saying what was wrong; ``id`` when it answers a request that had one."""
    out: Message = {"type": "error", "error": str(code), "message": message}
    if id is not None:
        out["id"] = id
    return out


def pong(*, id: AskId | None = None, t: float | None = None, wall: float) -> Message:
    """The reply to ``ping``: echoes ``id`` and ``t`` when given; ``wall`` is the server's clock."""
    out: Message = {"type": "pong", "wall": wall}
    if id is not None:
        out["id"] = id
    if t is not None:
        out["t"] = t
    return out


def subscribed(request: Subscribe, *, replayed: int) -> Message:
    """Acknowledges a ``subscribe``; ``replayed`` captions follow it."""
    streams: str | list[str] = "*" if request.streams is None else sorted(request.streams)
    return {
        "type": "subscribed",
        "streams": streams,
        "replay": request.replay,
        "replayed": replayed,
        "thumbnails": request.thumbnails,
    }


def dropped(*, count: int, total: int) -> Message:
    """``count`` messages were dropped just before this one because the client read too slowly
    (``total`` since it connected)."""
    return {"type": "dropped", "count": count, "total": total}


# -- bus only ------------------------------------------------------------------------------------


def capture_status(
    *,
    stream: str,
    state: StreamState | str,
    frames: int,
    fps: float,
    decode_errors: int,
    reconnects: int,
    drops: int,
    width: int | None,
    height: int | None,
    error: str | None,
    wall: float,
    **extra: Any,
) -> Message:
    """A capture process's report (~1 Hz and on change)."""
    return {
        "type": "capture_status",
        "stream": stream,
        "state": str(StreamState(state)),
        "frames": frames,
        "fps": fps,
        "decode_errors": decode_errors,
        "reconnects": reconnects,
        "drops": drops,
        "width": width,
        "height": height,
        "error": error,
        "wall": wall,
        **extra,
    }


def inference_status(
    *, streams: dict[str, Message], model: str, device: str, wall: float, **extra: Any
) -> Message:
    """The inference process's report: per stream ``lag_s``, ``skipped``, ``captions``,
    ``encodes_per_frame``, ``caption_latency_ms`` (and any other figures)."""
    return {
        "type": "inference_status",
        "streams": streams,
        "model": model,
        "device": device,
        "wall": wall,
        **extra,
    }


def processes(*, processes: dict[str, Message], wall: float, **extra: Any) -> Message:
    """The supervisor's report: role -> ``{pid, restarts, alive}``."""
    return {"type": "processes", "processes": processes, "wall": wall, **extra}


def ask_request(*, id: str, stream: str, question: str, wall: float, **extra: Any) -> Message:
    """An ask as the gateway forwards it to the inference process (``AskSender``).

    ``id`` is the gateway's own id for the request (unique per gateway run, unlike the client's); the
    inference process must echo it in the ``answer`` it publishes (``answer(id=..., stream=..., text=...)``)
    or, when it cannot answer, publish ``answer`` with ``error`` (a short code) and ``message`` fields.
    """
    return {"type": "ask", "id": id, "stream": stream, "question": question, "wall": wall, **extra}


def to_json(message: Message) -> str:
    """Compact JSON; NaN/Infinity are refused (browsers cannot parse them)."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode {message.get('type')!r} message as JSON: {exc}") from exc
