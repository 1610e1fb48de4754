"""A stand-in OpenAI-compatible server for the remote backend's tests and benchmark.

A stand-in, because no real one runs on these machines: vLLM, SGLang and LMDeploy need a GPU, Ollama
is not installable here, and building llama.cpp (llama-cpp-python) takes far too long on two shared
cores. It is a real HTTP/1.1 server on a real port, built to the protocol the real ones speak:

* ``GET /v1/models``: the OpenAI list shape (``owned_by: "vllm"`` when it plays vLLM).
* ``POST /v1/chat/completions``: every request body is validated against the ``openai`` package's own
  ``CompletionCreateParams`` types (and no top-level key beyond them); vLLM's per-part ``uuid`` is
  accepted only when playing vLLM, where ``"image_url": null`` with a known ``uuid`` reuses the
  image received before (and an unknown one is a 400, as a cache miss is there).
* Answers come from the tiny MiniCPM-V (random weights) run on the images it received (the data URIs
  decoded), or, for the benchmark, a fixed text after a fixed delay. ``stream: true`` answers as
  Server-Sent Events exactly as the spec says: ``data: {chunk}\\n\\n`` per chunk (each a valid
  ``ChatCompletionChunk``), then ``data: [DONE]\\n\\n``, chunked transfer encoding.
* ``logprobs``/``top_logprobs`` on a one-token answer (P(yes) is :attr:`StandIn.yes_p`), unless it
  plays a server that has none (``logprobs=False``).
* Faults on demand: a bearer key (401 otherwise), an image limit (vLLM's ``--limit-mm-per-prompt``
  400), :meth:`StandIn.fail` (the next requests answered with a status, message and headers, e.g. a
  429 with ``Retry-After``), :meth:`StandIn.fail_models` (the same for ``GET /models``: a server
  still loading), :meth:`down` /
  :meth:`up` (the port closed, open connections cut, then listening again on the same port),
  ``cut_streams`` (answers broken off mid-stream), ``unfinished_streams`` (answers that end
  with no chunk at all: llama.cpp's server on a prompt beyond its context), ``keep_media=False``
  (media ids taken but never found again), ``refuse_logprobs`` (a 400 for ``logprobs``),
  :attr:`StandIn.hold` (requests it picks are held, listed in :attr:`StandIn.holding`, until
  :attr:`StandIn.release` is set: a server slow on exactly those).
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from PIL import Image
from pydantic import TypeAdapter, ValidationError

_REQUEST = TypeAdapter(CompletionCreateParamsBase)
_KEYS = set(CompletionCreateParamsBase.__annotations__) | {"stream"}


class Refused(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}


@dataclass
class Record:
    """One chat request as received."""

    user: str | None
    model: str
    stream: bool
    body_bytes: int
    texts: list[str]
    images: list[tuple[str | None, int]]  # (uuid, data URI length; 0 when sent as its uuid only)
    order: list[str]  # content part types, in order
    max_tokens: int | None
    logprobs: bool
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class Fault:
    status: int
    message: str
    times: int
    headers: dict[str, str]


def _consume(value: Any) -> Any:
    """Pydantic validates iterables lazily: walk them so every part is checked now."""
    if isinstance(value, dict):
        return {k: _consume(v) for k, v in value.items()}
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return value
    return [_consume(v) for v in value]


class StandIn:
    """See the module doc. ``answer``: ``"tiny"`` (the tiny model) or ``"fixed"`` (``text`` after
    ``delay`` seconds, as ``pieces`` SSE chunks)."""

    def __init__(
        self,
        *,
        model: str = "openbmb/MiniCPM-V-2_6",
        owned_by: str = "standin",
        api_key: str | None = None,
        answer: str = "tiny",
        text: str = "A person crosses the room.",
        delay: float = 0.0,
        pieces: int = 4,
        max_images: int | None = None,
        logprobs: bool = True,
        extra_models: tuple[str, ...] = (),
        keep_media: bool = True,
        refuse_logprobs: bool = False,
    ) -> None:
        self.model, self.owned_by, self.api_key = model, owned_by, api_key
        self.answer, self.text, self.delay, self.pieces = answer, text, delay, pieces
        self.max_images, self.logprobs, self.extra_models = max_images, logprobs, extra_models
        self.keep_media = keep_media  # False: a server that takes uuids but never finds them again
        self.refuse_logprobs = refuse_logprobs  # a 400 for logprobs rather than answering without
        self.cut_streams = 0  # the next streamed answers break off after their first piece
        self.unfinished_streams = 0  # the next streamed answers end cleanly before their first chunk
        self.yes_p = 0.8
        self.records: list[Record] = []
        self.faults: list[Fault] = []
        self.model_faults: list[Fault] = []  # answers to GET /models (a server still loading: 503)
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold: Callable[[Record], bool] | None = None
        self.release = threading.Event()
        self.holding: list[Record] = []  # the held requests, while they are held
        self._lock = threading.Lock()
        self._media: dict[str, str] = {}  # uuid -> data URI (vLLM's media cache)
        self._backend: Any = None
        self._model_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- life -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StandIn:
        standin = self

        class Handler(_Handler):
            owner = standin

        server = _Server(("127.0.0.1", self.port), Handler)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening and cut every open connection (a server that died)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self) -> None:
        """Listen again on the same port (the media cache is gone, as a restarted server's is)."""
        self._media.clear()
        self.start()

    stop = down

    def fail(self, status: int, message: str, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` chat requests with ``status``, ``message`` and ``headers`` (a 429's
        ``Retry-After``, as rate-limiting servers and proxies send it)."""
        with self._lock:
            self.faults.append(Fault(status, message, times, headers or {}))

    def fail_models(
        self, status: int, message: str, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``times`` ``GET /models`` with ``status`` (llama.cpp's server answers 503
        "Loading model" until its model is loaded)."""
        with self._lock:
            self.model_faults.append(Fault(status, message, times, headers or {}))

    def held(self, record: Record) -> None:
        with self._lock:
            self.holding.append(record)
        try:
            self.release.wait()
        finally:
            with self._lock:
                self.holding.remove(record)

    def chat_records(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    # -- requests ---------------------------------------------------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def check_key(self, header: str | None) -> None:
        if self.api_key is not None and header != f"Bearer {self.api_key}":
            raise Refused(401, "Incorrect API key provided.", "authentication_error")

    def models(self) -> dict[str, Any]:
        names = (self.model, *self.extra_models)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": self.owned_by} for n in names]
        return {"object": "list", "data": data}

    def parse(self, body: dict[str, Any], nbytes: int) -> tuple[Record, list[str], dict[str, Any]]:
        """Validate a chat request; its record, the image data URIs, and the validated request."""
        unknown = set(body) - _KEYS
        if unknown:
            raise Refused(400, f"unknown request fields: {sorted(unknown)}")
        urls: list[str] = []
        images: list[tuple[str | None, int]] = []
        texts: list[str] = []
        order: list[str] = []
        for message in body.get("messages", []):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                if isinstance(content, str):
                    texts.append(content)
                    order.append("text")
                continue
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    self._resolve_media(part, urls, images)
                elif isinstance(part, dict) and part.get("type") == "text":
                    texts.append(str(part.get("text")))
                order.append(str(part.get("type")) if isinstance(part, dict) else "?")
        try:
            request = _consume(_REQUEST.validate_python(body))
        except ValidationError as exc:
            raise Refused(400, f"invalid request: {exc.errors()[0]}") from None
        if request["model"] not in (self.model, *self.extra_models):
            raise Refused(404, f"The model `{request['model']}` does not exist.", "NotFoundError")
        if self.refuse_logprobs and body.get("logprobs"):
            raise Refused(400, "logprobs is not supported by this server")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise Refused(400, f"stream must be a boolean, got {stream!r}")
        if self.max_images is not None and len(urls) > self.max_images:
            raise Refused(400, f"At most {self.max_images} image(s) may be provided in one prompt.")
        record = Record(
            user=request.get("user"),
            model=request["model"],
            stream=stream,
            body_bytes=nbytes,
            texts=texts,
            images=images,
            order=order,
            max_tokens=request.get("max_tokens"),
            logprobs=bool(request.get("logprobs")),
        )
        return record, urls, request

    def _resolve_media(
        self, part: dict[str, Any], urls: list[str], images: list[tuple[str | None, int]]
    ) -> None:
        """vLLM's extension: a ``uuid`` beside ``image_url``; ``image_url: null`` reuses the image
        received under that uuid. Replaced in ``part`` by the plain OpenAI shape before validation."""
        uuid = part.pop("uuid", None)
        if uuid is not None and self.owned_by != "vllm":
            raise Refused(400, "unknown field 'uuid' in an image_url content part")
        image = part.get("image_url")
        if image is None:
            if uuid not in self._media:
                raise Refused(400, f"multimodal uuid {uuid!r} is not in the media cache; send the image")
            part["image_url"] = {"url": self._media[uuid]}
            images.append((uuid, 0))
        elif isinstance(image, dict) and isinstance(image.get("url"), str):
            if uuid is not None and self.keep_media:
                self._media[uuid] = image["url"]
            images.append((uuid, len(image["url"])))
        urls.append(part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else "")

    def take_fault(self, faults: list[Fault] | None = None) -> Fault | None:
        """The next fault of ``faults`` (default: the chat requests' ones), counted down."""
        faults = self.faults if faults is None else faults
        with self._lock:
            if not faults:
                return None
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            return fault

    def generate(self, record: Record, urls: list[str], on_piece: Any) -> str:
        """The answer's text, piece by piece to ``on_piece``."""
        if record.max_tokens == 1 and record.texts[-1].endswith("yes or no."):  # an alert's question
            text = "Yes" if self.yes_p >= 0.5 else "No"
            on_piece(text)
            return text
        if self.answer == "fixed":
            time.sleep(self.delay)
            step = max(1, math.ceil(len(self.text) / self.pieces))
            for i in range(0, len(self.text), step):
                on_piece(self.text[i : i + step])
            return self.text
        pictures = [_decode(url) for url in urls]
        context = record.texts[0] if len(record.texts) > 1 else None
        with self._model_lock:
            if self._backend is None:
                from model.backends import load_backend

                self._backend = load_backend("tiny")
            frames = self._backend.encode_frames(pictures, max_slice_nums=1) if pictures else []
            return str(
                self._backend.describe(
                    frames,
                    record.texts[-1],
                    context=context,
                    max_new_tokens=record.max_tokens or 16,
                    on_text=on_piece,
                )
            )


def _decode(url: str) -> Image.Image:
    head, _, data = url.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        raise Refused(400, f"image_url is not a base64 image data URI: {head[:40]!r}")
    try:
        return Image.open(io.BytesIO(base64.b64decode(data, validate=True))).convert("RGB")
    except (ValueError, OSError) as exc:
        raise Refused(400, f"cannot decode image: {exc}") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up on a kept-alive connection is no error of the server's."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: StandIn
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        return

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection, True)

    def finish(self) -> None:
        self.owner._track(self.connection, False)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:
            self.owner.check_key(self.headers.get("Authorization"))
            if self.path.rstrip("/") != "/v1/models":
                raise Refused(404, f"no route {self.path}")
            fault = self.owner.take_fault(self.owner.model_faults)
            if fault is not None:
                kind = "unavailable_error" if fault.status == 503 else "rate_limit_exceeded"
                raise Refused(fault.status, fault.message, kind, fault.headers)
            self._json(200, self.owner.models())
        except Refused as exc:
            self._error(exc)

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        owner = self.owner
        try:
            owner.check_key(self.headers.get("Authorization"))
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise Refused(404, f"no route {self.path}")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise Refused(400, f"body is not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise Refused(400, "body is not a JSON object")
            record, urls, request = owner.parse(body, len(raw))
            with owner._lock:
                owner.records.append(record)
            fault = owner.take_fault()
            if fault is not None:
                kind = {429: "rate_limit_exceeded"}.get(fault.status, "BadRequest")
                raise Refused(
                    fault.status,
                    fault.message,
                    "server_error" if fault.status >= 500 else kind,
                    fault.headers,
                )
            with owner._lock:
                owner.in_flight += 1
                owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
            try:
                if owner.hold is not None and owner.hold(record):
                    owner.held(record)
                if record.stream:
                    self._stream(record, urls, request)
                else:
                    self._complete(record, urls, request)
            finally:
                with owner._lock:
                    owner.in_flight -= 1
        except Refused as exc:
            self._error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _complete(self, record: Record, urls: list[str], request: dict[str, Any]) -> None:
        text = self.owner.generate(record, urls, lambda _piece: None)
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": text},
        }
        if record.logprobs and self.owner.logprobs:
            p = min(max(self.owner.yes_p, 1e-6), 1 - 1e-6)
            top = [
                {"token": "Yes", "logprob": math.log(p), "bytes": None},
                {"token": "No", "logprob": math.log(1 - p), "bytes": None},
            ][: request.get("top_logprobs") or 1]
            first = top[0] if p >= 0.5 else top[-1]
            choice["logprobs"] = {"content": [{**first, "top_logprobs": top}], "refusal": None}
        response = ChatCompletion.model_validate(
            {"id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
             "model": record.model, "choices": [choice]}
        )  # fmt: skip
        self._json(200, json.loads(response.model_dump_json(exclude_unset=True)))

    def _stream(self, record: Record, urls: list[str], _request: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        created = int(time.time())
        with self.owner._lock:
            unfinished = self.owner.unfinished_streams > 0
            self.owner.unfinished_streams -= unfinished
        if unfinished:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = ChatCompletionChunk.model_validate(
                {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created,
                 "model": record.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            )  # fmt: skip
            self._chunk(f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n")

        event({"role": "assistant", "content": ""})
        with self.owner._lock:
            cut = self.owner.cut_streams > 0
            self.owner.cut_streams -= cut

        def piece(text: str) -> None:
            event({"content": text})
            if cut:  # the server died mid-answer: the connection ends inside the chunked body
                self.close_connection = True
                raise ConnectionAbortedError("cut")

        try:
            self.owner.generate(record, urls, piece)
        except ConnectionAbortedError:
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        event({}, "stop")
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: Refused) -> None:
        self._json(
            exc.status,
            {"error": {"message": exc.message, "type": exc.kind, "param": None, "code": exc.status}},
            exc.headers,
        )


def main() -> None:
    """Serve from a process of its own (the benchmark keeps its CPU apart from the client's)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--answer", choices=("tiny", "fixed"), default="fixed")
    parser.add_argument("--text", default="A person crosses the room.")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--owned-by", default="standin")
    args = parser.parse_args()
    server = StandIn(answer=args.answer, text=args.text, delay=args.delay, owned_by=args.owned_by)
    server.port = args.port
    server.start()
    print(server.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
