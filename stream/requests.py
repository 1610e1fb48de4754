"""What clients may send over the websocket, validated strictly (anyone can send anything).

:class:`Subscribe`, :class:`Ask`, :class:`Ping`, :class:`Search`, :class:`History`, parsed by
:func:`parse_client_message`, which raises :class:`~stream.messages.MessageError` (a
:class:`~stream.errors.ProtocolError`) carrying the ``error`` code and the sentence the gateway replies
with. The limits are :mod:`stream.messages`' constants; docs/protocol.md documents every field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from .errors import StoreQueryError
from .messages import (
    DEFAULT_RESULTS,
    MAX_ID_CHARS,
    MAX_QUESTION_CHARS,
    MAX_REPLAY,
    MAX_RESULTS,
    MAX_STREAM_CHARS,
    MAX_STREAMS_PER_SUBSCRIBE,
    AskId,
    ErrorCode,
    Message,
    MessageError,
    is_json_int,
    json_kind,
)
from .storequery import MAX_QUERY_CHARS, match_expression


@dataclass(frozen=True)
class Subscribe:
    """Receive messages of these streams (``None`` = every stream, now and later).

    ``replay``: how many of each stream's most recent captions to resend first (capped by the
    server's store). ``thumbnails``: also receive ``thumbnail`` messages (JPEG, base64) of these streams.
    ``types``: receive only messages of these types (e.g. ``{"event"}``; None = every type); replies
    to the client's own requests always come.
    """

    streams: frozenset[str] | None = None
    replay: int = 0
    thumbnails: bool = False
    types: frozenset[str] | None = None

    def wants(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams

    def wants_type(self, kind: str) -> bool:
        return self.types is None or kind in self.types


@dataclass(frozen=True)
class Ask:
    """A question about what a stream shows now; answered (to this client only) by an ``answer``
    with the same ``id``, or an ``error`` with that ``id``.

    With ``since`` (seconds back from now) or ``wall_from``/``wall_to`` (the JSON's ``from``/``to``,
    Unix seconds) it is about the past: answered from the stored captions of that span."""

    id: AskId
    stream: str
    question: str
    since: float | None = None
    wall_from: float | None = None
    wall_to: float | None = None

    @property
    def about_past(self) -> bool:
        return self.since is not None or self.wall_from is not None or self.wall_to is not None


@dataclass(frozen=True)
class Ping:
    """Application-level heartbeat (browsers cannot see protocol pings); ``id``/``t`` are echoed."""

    id: AskId | None = None
    t: float | None = None


@dataclass(frozen=True)
class Search:
    """Find stored captions and events whose text matches ``query`` (words ANDed, ``"quoted
    phrases"``), best first; only of ``streams`` (None: every stream) and ending within
    ``[wall_from, wall_to]`` (the JSON's ``from``/``to``, Unix seconds). Answered to this client only
    by a ``results`` with the same ``id``, or an ``error`` with that ``id``."""

    id: AskId
    query: str
    streams: frozenset[str] | None = None
    wall_from: float | None = None
    wall_to: float | None = None
    limit: int = DEFAULT_RESULTS


@dataclass(frozen=True)
class History:
    """The stored captions of ``stream`` ending within ``[wall_from, wall_to]``, in time order (the
    earliest ``limit``); answered like :class:`Search`."""

    id: AskId
    stream: str
    wall_from: float | None = None
    wall_to: float | None = None
    limit: int = DEFAULT_RESULTS


StoreRequest: TypeAlias = Search | History
ClientMessage: TypeAlias = Subscribe | Ask | Ping | Search | History


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
        raise MessageError(ErrorCode.NOT_OBJECT, f"message must be a JSON object, not {json_kind(data)}")
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


def _stream_names(names: list[Any], request_id: AskId | None) -> frozenset[str]:
    """A request's ``streams`` list, checked: at most MAX_STREAMS_PER_SUBSCRIBE valid stream names."""
    if len(names) > MAX_STREAMS_PER_SUBSCRIBE:
        raise MessageError(
            ErrorCode.BAD_FIELD,
            f"'streams' lists {len(names)} streams; the limit is {MAX_STREAMS_PER_SUBSCRIBE}",
            request_id,
        )
    for name in names:
        _check_stream_name(name, "'streams' entries", request_id)
    return frozenset(names)


def _parse_subscribe(data: Message, request_id: AskId | None) -> Subscribe:
    streams_field = data.get("streams", "*")
    streams: frozenset[str] | None
    if streams_field == "*":
        streams = None
    elif isinstance(streams_field, list):
        streams = _stream_names(streams_field, request_id)
    else:
        raise MessageError(
            ErrorCode.BAD_FIELD, "'streams' must be \"*\" or a list of stream names", request_id
        )
    replay = data.get("replay", 0)
    if not is_json_int(replay) or not 0 <= replay <= MAX_REPLAY:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'replay' must be an integer from 0 to {MAX_REPLAY}", request_id
        )
    thumbnails = data.get("thumbnails", False)
    if not isinstance(thumbnails, bool):
        raise MessageError(ErrorCode.BAD_FIELD, "'thumbnails' must be true or false", request_id)
    return Subscribe(streams=streams, replay=replay, thumbnails=thumbnails, types=_types(data, request_id))


_TYPE_NAME = re.compile(r"^[a-z_]{1,32}$")
MAX_TYPES = 16


def _types(data: Message, request_id: AskId | None) -> frozenset[str] | None:
    """A subscribe's optional ``types``: message type names (any name of the form, so a client written
    for a later server, naming a type this one never sends, is still served)."""
    if "types" not in data:
        return None
    kinds = data["types"]
    if (
        not isinstance(kinds, list)
        or not 0 < len(kinds) <= MAX_TYPES
        or not all(isinstance(k, str) and _TYPE_NAME.match(k) for k in kinds)
    ):
        raise MessageError(
            ErrorCode.BAD_FIELD,
            f"'types' must be a list of 1 to {MAX_TYPES} message types (e.g. [\"event\"])",
            request_id,
        )
    return frozenset(kinds)


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
    since = data.get("since")
    if since is not None and (
        not isinstance(since, int | float)
        or isinstance(since, bool)
        or not math.isfinite(since)
        or since <= 0
    ):
        raise MessageError(ErrorCode.BAD_FIELD, "'since' must be a positive number of seconds", request_id)
    wall_from, wall_to = _span(data, request_id)
    if since is not None and (wall_from is not None or wall_to is not None):
        raise MessageError(ErrorCode.BAD_FIELD, "give 'since' or 'from'/'to', not both", request_id)
    return Ask(
        id=request_id,
        stream=stream,
        question=question,
        since=None if since is None else float(since),
        wall_from=wall_from,
        wall_to=wall_to,
    )


def _parse_ping(data: Message, request_id: AskId | None) -> Ping:
    if "id" in data and request_id is None:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'id' must be a string of at most {MAX_ID_CHARS} characters or an integer"
        )
    t = data.get("t")
    if t is not None and (not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t)):
        raise MessageError(ErrorCode.BAD_FIELD, "'t' must be a finite number", request_id)
    return Ping(id=request_id, t=t)


def _parse_search(data: Message, request_id: AskId | None) -> Search:
    request_id = _required_id(data, "search", request_id)
    if "query" not in data:
        raise MessageError(ErrorCode.MISSING_FIELD, "'search' needs the field 'query'", request_id)
    query = data["query"]
    if not isinstance(query, str) or not query.strip():
        raise MessageError(ErrorCode.BAD_FIELD, "'query' must be a non-empty string", request_id)
    if len(query) > MAX_QUERY_CHARS:
        raise MessageError(
            ErrorCode.TOO_LARGE,
            f"'query' is {len(query)} characters; the limit is {MAX_QUERY_CHARS}",
            request_id,
        )
    try:
        match_expression(query)
    except StoreQueryError as exc:
        raise MessageError(ErrorCode.BAD_QUERY, str(exc), request_id) from None
    streams: frozenset[str] | None = None
    if "streams" in data:
        names = data["streams"]
        if not isinstance(names, list) or not names:
            raise MessageError(
                ErrorCode.BAD_FIELD, "'streams' must be a non-empty list of stream names", request_id
            )
        streams = _stream_names(names, request_id)
    wall_from, wall_to = _span(data, request_id)
    return Search(
        id=request_id,
        query=query,
        streams=streams,
        wall_from=wall_from,
        wall_to=wall_to,
        limit=_limit(data, request_id),
    )


def _parse_history(data: Message, request_id: AskId | None) -> History:
    request_id = _required_id(data, "history", request_id)
    if "stream" not in data:
        raise MessageError(ErrorCode.MISSING_FIELD, "'history' needs the field 'stream'", request_id)
    stream = data["stream"]
    _check_stream_name(stream, "'stream'", request_id)
    wall_from, wall_to = _span(data, request_id)
    return History(
        id=request_id, stream=stream, wall_from=wall_from, wall_to=wall_to, limit=_limit(data, request_id)
    )


def _required_id(data: Message, kind: str, request_id: AskId | None) -> AskId:
    if "id" not in data:
        raise MessageError(ErrorCode.MISSING_FIELD, f"{kind!r} needs the field 'id'")
    if request_id is None:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'id' must be a string of at most {MAX_ID_CHARS} characters or an integer"
        )
    return request_id


def _span(data: Message, request_id: AskId) -> tuple[float | None, float | None]:
    """The optional ``from``/``to`` of a store request: Unix seconds, ``from`` not after ``to``."""
    ends: list[float | None] = []
    for name in ("from", "to"):
        value = data.get(name)
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
        ):
            raise MessageError(
                ErrorCode.BAD_FIELD, f"{name!r} must be a finite number (Unix seconds)", request_id
            )
        ends.append(None if value is None else float(value))
    wall_from, wall_to = ends
    if wall_from is not None and wall_to is not None and wall_from > wall_to:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'from' ({wall_from:g}) is after 'to' ({wall_to:g})", request_id
        )
    return wall_from, wall_to


def _limit(data: Message, request_id: AskId) -> int:
    limit = data.get("limit", DEFAULT_RESULTS)
    if not is_json_int(limit) or not 1 <= limit <= MAX_RESULTS:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'limit' must be an integer from 1 to {MAX_RESULTS}", request_id
        )
    return int(limit)


_PARSERS: dict[str, Callable[[Message, AskId | None], ClientMessage]] = {
    "subscribe": _parse_subscribe,
    "ask": _parse_ask,
    "ping": _parse_ping,
    "search": _parse_search,
    "history": _parse_history,
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
