"""The JSON messages of vidnarrate: their shapes, their validation and their one encoder.

One JSON object per websocket text message, always with ``"type"``; the same JSON travels on the zmq
bus between processes. ``docs/protocol.md`` documents every field; this module is its code.

* **Client to server**: the requests live in :mod:`stream.requests`; their limits, error codes and
  :class:`MessageError` (a :class:`~stream.errors.ProtocolError` carrying the ``error`` code and the
  sentence the gateway replies with) are here.
* **Server to client**, each a frozen :class:`ServerMessage` dataclass: :class:`Caption`,
  :class:`Partial`, :class:`Event`, :class:`Thumbnail`, :class:`Answer`, :class:`Summary`
  (published by the inference process; the gateway forwards their bus bytes as they are),
  :class:`Status`, :class:`ErrorReply`, :class:`Pong`, :class:`Subscribed`, :class:`Dropped` and
  :class:`Results` (made by the gateway).
  Later versions may add fields: clients must ignore fields they do not know.
* **Bus only** (never sent to clients as they are): :class:`CaptureStatus`, :class:`InferenceStatus`,
  :class:`Processes`, :class:`RecorderStatus`, :class:`OutputsStatus` (merged by the gateway into
  ``status``) and :class:`AskRequest` (gateway -> inference). :func:`decode` turns a bus body back into
  its dataclass.

Times: ``t_*`` are seconds of stream time (from the source's first frame), ``wall*`` are Unix seconds.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, ClassVar, Final, Self, TypeAlias

from .errors import ProtocolError

Message: TypeAlias = dict[str, Any]
AskId: TypeAlias = str | int

# Limits on what a client may send; each one is documented in docs/protocol.md.
MAX_ID_CHARS: Final = 128
MAX_STREAM_CHARS: Final = 128
MAX_STREAMS_PER_SUBSCRIBE: Final = 256
MAX_QUESTION_CHARS: Final = 4000
MAX_REPLAY: Final = 100_000
MAX_RESULTS: Final = 500  # items of one search/history reply
DEFAULT_RESULTS: Final = 50


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
    NO_CAPTIONS = "no_captions"  # an ask about the past: no caption of that stream is stored in the span
    MODEL_ERROR = "model_error"  # the model refused the question (e.g. the prompt is too long)
    BAD_QUERY = "bad_query"  # a search query with nothing to search for, or a quote left open
    STORE_UNAVAILABLE = "store_unavailable"  # the run keeps no store, or it cannot be read (yet)
    TOO_MANY_QUERIES = "too_many_queries"  # too many of this client's searches/histories are running


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

    def to_reply(self) -> ErrorReply:
        return ErrorReply(error=self.code, message=str(self), id=self.id)


def is_json_int(value: Any) -> bool:
    """An integer of JSON (Python's bool is an int, JSON's true is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def json_kind(value: Any) -> str:
    """What a JSON value is, in words, for error messages."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# -- server to client and bus --------------------------------------------------------------------
# Every message the processes publish or the gateway sends is a frozen dataclass below, its fields
# named as the JSON keys of docs/protocol.md. ``to_json()`` is the one encoder; :func:`decode` the one
# decoder (used on the bus, where the other side is one of our own processes). A field whose default
# is None is left out of the JSON while it is None; a field without a default is always written
# (``null`` included, e.g. a capture report's ``error``). A field named with a trailing underscore
# (``from_``) is the JSON key without it.


class EventState(StrEnum):
    """Where an alert event is in its life: it starts, may be updated, and ends."""

    START = "start"
    UPDATE = "update"
    END = "end"


class ModelState(StrEnum):
    """The inference process's model, as its ``inference_status`` reports it."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class ServerMessage:
    """Base of every server-to-client and bus message. ``TYPE`` is the JSON ``"type"``."""

    TYPE: ClassVar[str]

    def to_dict(self) -> Message:
        out: Message = {"type": self.TYPE}
        for name, omit_none in _spec(type(self)).layout:
            value = getattr(self, name)
            if value is None and omit_none:
                continue
            out[name.rstrip("_")] = value  # from_ is the JSON's "from" (a Python keyword)
        return out

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, the bytes that travel on the bus and (unchanged) to websocket clients.
        NaN/Infinity are refused: browsers cannot parse them."""
        try:
            return json.dumps(
                self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"cannot encode {self.TYPE!r} message as JSON: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Message) -> Self:
        """The message of a decoded JSON object; :class:`~stream.errors.ProtocolError` naming the field
        that is missing, unknown or of the wrong type."""
        if data.get("type") != cls.TYPE:
            raise ProtocolError(f"expected a {cls.TYPE!r} message, got type {data.get('type')!r:.60}")
        spec = _spec(cls)
        unknown = data.keys() - {name.rstrip("_") for name in spec.hints} - {"type"}
        if unknown:
            raise ProtocolError(f"{cls.TYPE!r} message has unknown fields {sorted(unknown)!r:.200}")
        values: Message = {}
        for name, hint in spec.hints.items():
            key = name.rstrip("_")
            if key not in data:
                if name in spec.required:
                    raise ProtocolError(f"{cls.TYPE!r} message lacks the field {key!r}")
                continue
            try:
                values[name] = _checked(data[key], hint)
            except _Mismatch as exc:
                raise ProtocolError(f"{cls.TYPE!r} message field {key!r}: {exc}") from None
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class Caption(ServerMessage):
    """A rolling caption of ``[t_start, t_end]`` built from the frames at ``frame_times``."""

    TYPE: ClassVar[str] = "caption"
    stream: str
    seq: int
    t_start: float
    t_end: float
    frame_times: list[float]
    wall_start: float
    wall_end: float
    text: str
    model: str
    latency_ms: float
    skipped: int = 0
    frames: int | None = None
    model_ms: float | None = None
    encode_ms: float | None = None
    replayed: bool | None = None  # True only on captions resent because of subscribe's replay
    # True on a window whose frames did not change since the stream's last caption: the model was not
    # called, and this caption extends that one (same text, later t_end).
    unchanged: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Partial(ServerMessage):
    """The text of caption ``seq`` so far (token streaming); the final ``caption`` follows."""

    TYPE: ClassVar[str] = "partial"
    stream: str
    seq: int
    text: str


@dataclass(frozen=True, kw_only=True)
class Event(ServerMessage):
    """An alert: the rule (an alert prompt's name) matched the window ``[t_start, t_end]``; one
    ``event_id`` runs from ``start`` through ``update`` to ``end``."""

    TYPE: ClassVar[str] = "event"
    stream: str
    rule: str
    event_id: str
    state: EventState
    t_start: float
    t_end: float
    wall_start: float
    wall_end: float
    score: float
    text: str
    thumbnail: str | None = None  # base64 JPEG of the window's newest frame, on ``start`` only


@dataclass(frozen=True, kw_only=True)
class Thumbnail(ServerMessage):
    """A small JPEG (base64) of the stream's frame at stream time ``t``."""

    TYPE: ClassVar[str] = "thumbnail"
    stream: str
    t: float
    wall: float
    jpeg: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, kw_only=True)
class Answer(ServerMessage):
    """The answer to the ``ask`` with this ``id``.

    On the bus ``id`` is the gateway's id of the request (:class:`AskRequest`); the gateway swaps in
    the client's own id. An answer that could not be given carries ``error`` and ``message`` (the
    asker then receives an :class:`ErrorReply`)."""

    TYPE: ClassVar[str] = "answer"
    id: AskId
    stream: str
    text: str
    t_start: float | None = None
    t_end: float | None = None
    frame_times: list[float] | None = None
    error: ErrorCode | None = None
    message: str | None = None
    # An answer from stored captions (an ask with since or from/to): the wall span searched (Unix
    # seconds) and how many stored captions the model was given.
    from_: float | None = None
    to: float | None = None
    captions: int | None = None


@dataclass(frozen=True, kw_only=True)
class Summary(ServerMessage):
    """The model's summary of ``stream``'s ``captions`` captions of ``[t_start, t_end]`` (stream
    time; ``wall_start``/``wall_end`` the same span in Unix seconds), published every ``[summaries]
    every`` seconds of stream time."""

    TYPE: ClassVar[str] = "summary"
    stream: str
    t_start: float
    t_end: float
    wall_start: float
    wall_end: float
    text: str
    captions: int


@dataclass(frozen=True, kw_only=True)
class ErrorReply(ServerMessage):
    """A reply saying what was wrong; ``id`` when it answers a request that had one."""

    TYPE: ClassVar[str] = "error"
    error: ErrorCode
    message: str
    id: AskId | None = None


@dataclass(frozen=True, kw_only=True)
class Pong(ServerMessage):
    """The reply to ``ping``: echoes ``id`` and ``t`` when given; ``wall`` is the server's clock."""

    TYPE: ClassVar[str] = "pong"
    wall: float
    id: AskId | None = None
    t: float | None = None


@dataclass(frozen=True, kw_only=True)
class Subscribed(ServerMessage):
    """Acknowledges a ``subscribe`` (``streams``: ``"*"`` or the sorted names); ``replayed`` captions
    follow it."""

    TYPE: ClassVar[str] = "subscribed"
    streams: str | list[str]
    replay: int
    replayed: int
    thumbnails: bool
    types: list[str] | None = None  # the message types subscribed to, when the subscribe named them


@dataclass(frozen=True, kw_only=True)
class Dropped(ServerMessage):
    """``count`` messages were dropped just before the next one because the client read too slowly
    (``total`` since it connected)."""

    TYPE: ClassVar[str] = "dropped"
    count: int
    total: int


@dataclass(frozen=True, kw_only=True)
class Results(ServerMessage):
    """The reply to a ``search`` or ``history`` with this ``id``: the stored messages as they were
    published (a search hit also has ``score``, higher is better). ``truncated`` is true when items
    were left out to keep the reply within the server's size limit."""

    TYPE: ClassVar[str] = "results"
    id: AskId
    items: list[Message]
    truncated: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Status(ServerMessage):
    """Per-stream state and figures, and per-process pid/restarts, merged by the gateway from the
    reports below (``model``/``device`` are null until the inference process reports)."""

    TYPE: ClassVar[str] = "status"
    streams: dict[str, Message]
    processes: dict[str, Message]
    model: str | None
    device: str | None
    wall: float
    clients: int | None = None
    recorder: Message | None = None  # the recorder's figures; absent when the run records nothing
    outputs: dict[str, Message] | None = None  # per output; absent when the run has none
    backend: Message | None = None  # a remote model server's state (InferenceStatus.backend)


@dataclass(frozen=True, kw_only=True)
class CaptureStatus(ServerMessage):
    """A capture process's report (bus only; ~1 Hz and on change)."""

    TYPE: ClassVar[str] = "capture_status"
    stream: str
    state: StreamState
    frames: int
    fps: float
    decode_errors: int
    reconnects: int
    drops: int
    width: int | None
    height: int | None
    error: str | None
    wall: float


@dataclass(frozen=True, kw_only=True)
class InferenceStatus(ServerMessage):
    """The inference process's report (bus only): per stream ``lag_s``, ``skipped``, ``captions``,
    ``caption_errors``, ``encodes_per_frame``, ``caption_latency_ms`` and any further figures."""

    TYPE: ClassVar[str] = "inference_status"
    streams: dict[str, Message]
    model: str
    device: str
    state: ModelState
    wall: float
    error: str | None = None  # why the model could not be loaded (state "failed")
    # A remote model server (``--model URL``): ``url``, ``state`` ("ok" / "unreachable" /
    # "rate_limited"), ``error``, ``requests``, ``in_flight``, ``failures``, ``refused``,
    # ``rate_limited``, ``bytes_sent``; absent for a local model.
    backend: Message | None = None
    # Which inference process reports: ``inference``, or ``inference:I`` of several ([model] devices),
    # each reporting only the streams it owns.
    role: str = "inference"


@dataclass(frozen=True, kw_only=True)
class Processes(ServerMessage):
    """The supervisor's report (bus only): role -> ``{pid, restarts, alive, finished, exit_code}``."""

    TYPE: ClassVar[str] = "processes"
    processes: dict[str, Message]
    wall: float


@dataclass(frozen=True, kw_only=True)
class RecorderStatus(ServerMessage):
    """The recorder's report (bus only; ~1 Hz and on a write error). Counts are since the recorder
    process started: ``written`` messages committed to the store at ``store``, ``dropped`` lost (the
    queue was full, or a write failed for good), ``queue`` waiting, ``errors`` writes that failed
    (``error``: the last one's reason), ``last_commit_wall`` when the last batch was committed."""

    TYPE: ClassVar[str] = "recorder_status"
    store: str
    written: int
    dropped: int
    queue: int
    errors: int
    last_commit_wall: float | None
    wall: float
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class OutputsStatus(ServerMessage):
    """The outputs process's report (bus only; ~1 Hz and on a change of state): per output
    (``webhook:0``, ``webhook:1``, ..., ``mqtt``) ``target`` (scheme, host and port only: a webhook
    URL's path and query may hold a secret), ``state``, ``sent``, ``failed``, ``dropped``, ``queued``,
    ``oldest_s``, ``retried``, ``rejected`` and ``error`` (the last failure's reason, or null)."""

    TYPE: ClassVar[str] = "outputs_status"
    outputs: dict[str, Message]
    wall: float


@dataclass(frozen=True, kw_only=True)
class AskRequest(ServerMessage):
    """An ask as the gateway forwards it to the inference process (bus only).

    ``id`` is the gateway's own id for the request (unique per gateway run, unlike the client's), and
    ``client`` the asking connection's number; the inference process echoes ``id`` in its
    :class:`Answer`."""

    TYPE: ClassVar[str] = "ask"
    id: str
    stream: str
    question: str
    wall: float
    client: int | None = None
    # A question over the past: the stored captions of the span ``[from, to]`` (Unix seconds), best
    # matches first, each ``{t_start, t_end, wall_start, wall_end, text}``; the inference process
    # answers from those that fit the model's input, in time order, without looking at frames.
    captions: list[Message] | None = None
    from_: float | None = None
    to: float | None = None


BusMessage: TypeAlias = (
    Caption
    | Partial
    | Event
    | Thumbnail
    | Answer
    | CaptureStatus
    | InferenceStatus
    | Processes
    | RecorderStatus
    | AskRequest
    | OutputsStatus
    | Summary
)
_BUS_TYPES: dict[str, type[ServerMessage]] = {
    cls.TYPE: cls
    for cls in (
        Caption,
        Partial,
        Event,
        Thumbnail,
        Answer,
        CaptureStatus,
        InferenceStatus,
        Processes,
        RecorderStatus,
        AskRequest,
        OutputsStatus,
        Summary,
    )
}


def decode(kind: str, body: bytes) -> BusMessage:
    """The typed message of a bus body whose type (the zmq topic) is ``kind``;
    :class:`~stream.errors.ProtocolError` for anything else."""
    cls = _BUS_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"bus message of unknown type {kind!r:.60}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"bus {kind!r} message is not JSON: {str(exc)[:120]}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"bus {kind!r} message is not a JSON object")
    return cls.from_dict(data)  # type: ignore[return-value]  # _BUS_TYPES holds only BusMessage classes


def mark_replayed(body: bytes) -> bytes:
    """The JSON of a caption (``Caption.to_json()``) with ``"replayed": true`` added, without decoding
    it: the gateway stores each caption for replay this way once, from the bus bytes."""
    if not body.endswith(b"}"):
        raise ProtocolError("cannot mark a caption as replayed: its body is not a JSON object")
    return body[:-1] + b',"replayed":true}'


# -- field checks for from_dict ------------------------------------------------------------------


class _Mismatch(Exception):
    pass


@dataclass(frozen=True)
class _Spec:
    """What encoding and decoding need of a message class, worked out once per class."""

    layout: tuple[tuple[str, bool], ...]  # (field name, left out when None), in declaration order
    hints: dict[str, Any]  # field name -> its type
    required: frozenset[str]  # fields without a default

    @classmethod
    def of(cls, message_class: type[ServerMessage]) -> _Spec:
        fields = dataclasses.fields(message_class)
        hints = typing.get_type_hints(message_class)
        return cls(
            layout=tuple((f.name, f.default is None) for f in fields),
            hints={f.name: hints[f.name] for f in fields},
            required=frozenset(
                f.name
                for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ),
        )


_SPECS: dict[type[ServerMessage], _Spec] = {}


def _spec(message_class: type[ServerMessage]) -> _Spec:
    spec = _SPECS.get(message_class)
    if spec is None:
        spec = _SPECS[message_class] = _Spec.of(message_class)
    return spec


def _checked(value: Any, hint: Any) -> Any:
    """``value`` if it fits the type ``hint`` (an enum's member for its value); else :class:`_Mismatch`."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _checked(value, arm)
            except _Mismatch:
                continue
        raise _Mismatch(f"{json_kind(value)} is none of {hint}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint)
            return [_checked(v, item) for v in value]
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            _, item = typing.get_args(hint)
            return {k: _checked(v, item) for k, v in value.items()}
    elif isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise _Mismatch(f"{value!r:.60} is not one of {', '.join(m.value for m in hint)}") from None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if is_json_int(value):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"no check for the field type {hint!r}")
    raise _Mismatch(f"expected {getattr(hint, '__name__', hint)}, got {json_kind(value)}")
