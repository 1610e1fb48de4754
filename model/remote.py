"""``CaptionBackend`` on any OpenAI-compatible chat-completions server (vLLM, SGLang, LMDeploy, Ollama,
llama.cpp's ``llama-server``), through the official ``openai`` client.

It lives beside :class:`~model.backends.LocalBackend` because it is the same kind of thing: a model
that captions frames, knowing nothing of streams, config files or the bus. The one thing it learns
about a caller is the OpenAI ``user`` string of a request (:meth:`RemoteBackend.for_user`: the
inference shell passes the stream name, so a router with session affinity keeps a camera on one
replica and its caches).

* **Encode once.** :meth:`RemoteBackend.encode_frames` downscales each frame to ``image_side`` and
  JPEG-encodes it once into a :class:`RemoteFrame` (its data URI and a content id): the remote twin of
  a frame embedding, cached and reused by every window that holds the frame.
* **One window, one user message**: the context text, the frames as ``image_url`` parts (at most
  ``max_images``, subsampled uniformly), then the prompt (the shapes are :mod:`model.chatwire`'s);
  tokens stream back over SSE to ``on_text``. Yes/no questions ask for one token with ``logprobs``;
  a server that refuses those is asked without them from then on (P(yes) by the first word).
* **Media caching.** A server that says it is vLLM (``owned_by`` in ``/v1/models``) gets each part's
  ``uuid``; a frame the server has already received is then sent as ``{"image_url": null, "uuid"}``
  and not at all again (vLLM's documented "skip sending media if you expect cache hits"). A request
  the server refuses while it holds such parts is sent once more in full (evicted, another replica);
  after 3 such misses in a row the ids are given up for 10 minutes, then tried again (the server
  may have been upgraded or replaced meanwhile). A request that goes through after an outage
  forgets every id the server was thought to hold and tries ids again at once: a restarted or
  replaced server holds nothing, and its misses must not count against it.
* **Failures.** Unreachable, timeouts and 5xx mark the backend ``unreachable`` and the request is
  retried with backoff until it goes through (or the interrupt check says stop). A 429 is no outage:
  the backend shows ``rate_limited`` and the request is retried after the server's ``Retry-After``
  (seconds or an HTTP date; capped), else with the same backoff. Any other 4xx is a
  :class:`~model.errors.RequestRefused` naming the server's reason, for that request only. So is a
  plain 500, or a streamed answer that ends without a ``finish_reason``, 3 times in a row for the
  same request: llama.cpp's server answers a prompt beyond its context that way (a 500, or, streaming,
  a stream it just stops), which retrying never heals. A server that fails every request that way
  (3 requests in a row refused so, none answered between) is shown ``unreachable`` until one goes
  through: each request is still refused rather than held.

Thread-safe: the shell runs up to ``max_concurrency`` requests at once on one backend.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from model.chatwire import (
    RemoteFrame,
    encode_frame,
    sampling_params,
    server_reason,
    subsample,
    window_message,
    yes_probability,
)
from model.errors import RequestRefused, ServerNotReady, ServerSetupError
from model.remotestate import (
    BACKOFF_INITIAL_S,
    INTERNAL_ERRORS_TO_REFUSE,
    MISSES_TO_GIVE_UP,
    Health,
    MediaCache,
    next_pause,
    retry_after,
)

TextCallback = Callable[[str], None]

_CONNECT_TIMEOUT_S = 5.0
# A server that answers but is not ready (llama.cpp's 503 "Loading model", a 429 rate limit) is asked
# again at start-up for this long, its Retry-After honoured, before the run gives up on it.
STARTUP_WAIT_S = 300.0

log = logging.getLogger(__name__)
_HTTP_LOG = logging.getLogger("httpx2")  # the openai client's HTTP library (see QuietRequests)
# A yes/no answer: one token, and enough alternatives to find both "yes" and "no" among them.
_TOP_LOGPROBS = 5
_YES_NO = " Answer yes or no."


def list_models(client: openai.OpenAI, url: str) -> list[Any]:
    """The server's ``/models`` entries; a :class:`ServerSetupError` in one line when it cannot say."""
    try:
        return list(client.models.list().data)
    except openai.AuthenticationError as exc:
        raise ServerSetupError(
            f"model server {url}: the API key was refused (401: {server_reason(exc)}); "
            "set model.remote.api_key or $OPENAI_API_KEY"
        ) from None
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise ServerSetupError(f"model server {url}: unreachable ({cause})") from None
    except openai.APIStatusError as exc:
        message = f"model server {url}: GET /models answered {exc.status_code}: {server_reason(exc)}"
        if exc.status_code in (429, 503):
            raise ServerNotReady(message, retry_after(exc.response.headers, time.time())) from None
        raise ServerSetupError(message) from None


def wait_for_models(
    client: openai.OpenAI,
    url: str,
    wait_s: float = STARTUP_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Any]:
    """:func:`list_models`, asked again while the server says it is not ready (503, 429) for up to
    ``wait_s`` seconds (its Retry-After, else a backoff); then the last answer is the error."""
    deadline = time.monotonic() + wait_s
    backoff = BACKOFF_INITIAL_S
    warned = False
    while True:
        try:
            return list_models(client, url)
        except ServerNotReady as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerNotReady(f"{exc} (still, after waiting {wait_s:g} s)", exc.wait) from None
            if not warned:  # once: the log is no heartbeat
                log.warning("%s; asking again for up to %g s", exc, wait_s)
                warned = True
            pause, backoff = next_pause(backoff, exc.wait)
            sleep(min(pause, left))


def choose_model(url: str, served: Sequence[str], wanted: str) -> str:
    """``wanted`` if the server serves it; with none wanted, the one model it serves."""
    names = ", ".join(served) or "none"
    if wanted:
        if wanted not in served:
            raise ServerSetupError(
                f"model server {url} does not serve model.remote.model {wanted!r} (it serves: {names})"
            )
        return wanted
    if len(served) != 1:
        raise ServerSetupError(
            f"model server {url} serves {len(served)} models ({names}): name one with model.remote.model"
        )
    return served[0]


class QuietRequests(logging.Filter):
    """Drops the HTTP library's INFO line per request ("HTTP Request: POST ...") for requests to one
    server: several a second per camera would drown the log, and what matters of them (failures,
    refusals) our own log says. Set on the library's logger while the backend is open, so other users
    of the library in the process keep their lines and their levels."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.prefix = url.rstrip("/") + "/"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        ours = len(args) > 1 and str(args[1]).startswith(self.prefix)
        return not (ours and record.levelno == logging.INFO and str(record.msg).startswith("HTTP Request:"))


def make_client(url: str, api_key: str, timeout: float, on_request: Callable[[int], None]) -> openai.OpenAI:
    """The ``openai`` client: no retries of its own (ours mark the backend unreachable meanwhile)
    and a hook that counts the bytes of every request body."""

    def count(request: httpx2.Request) -> None:
        on_request(len(request.content))

    http = openai.DefaultHttpxClient(event_hooks={"request": [count]})
    return openai.OpenAI(
        base_url=url,
        # Servers started without a key ignore the header; the client insists on sending one.
        api_key=api_key or "EMPTY",
        timeout=httpx2.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT_S)),
        max_retries=0,
        http_client=http,
    )


class RemoteBackend:
    """``CaptionBackend`` on an OpenAI-compatible server (see the module doc). Made by :meth:`connect`."""

    def __init__(
        self,
        client: openai.OpenAI,
        model: str,
        *,
        url: str,
        health: Health,
        max_concurrency: int = 8,
        max_images: int = 16,
        image_side: int = 448,
        jpeg_quality: int = 85,
        media_cache: bool = False,
        quiet: QuietRequests | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.name = model
        self.url = url
        self.health = health
        self.max_concurrency = max_concurrency
        self.max_images = max_images
        self.image_side = image_side
        self.jpeg_quality = jpeg_quality
        self.user: str | None = None
        self._media = MediaCache(media_cache, url=url)  # shared by every for_user view
        self._interrupt: Callable[[], bool] | None = None
        self._quiet = quiet  # removed from the HTTP library's logger on close

    @property
    def media_cache(self) -> bool:
        """Whether frames go with their ``uuid`` and, once the server has them, as the uuid only."""
        return self._media.enabled(time.monotonic())

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        model: str = "",
        api_key: str = "",
        timeout: float = 60.0,
        max_concurrency: int = 8,
        max_images: int = 16,
        image_side: int = 448,
        jpeg_quality: int = 85,
        startup_wait: float = STARTUP_WAIT_S,
    ) -> RemoteBackend:
        """Ask the server for its models and pick ``model`` (or the one it serves): a
        :class:`ServerSetupError` in one line when it is unreachable, refuses the key, or lacks it;
        one not ready yet (503 while loading, 429) is asked again for up to ``startup_wait`` seconds."""
        health = Health(url)
        client = make_client(url, api_key, timeout, health.sent)
        quiet = QuietRequests(url)
        _HTTP_LOG.addFilter(quiet)
        try:
            served = wait_for_models(client, url, startup_wait)
            chosen = choose_model(url, [m.id for m in served], model)
        except ServerSetupError:
            _HTTP_LOG.removeFilter(quiet)
            client.close()
            raise
        owner = next((str(getattr(m, "owned_by", "")) for m in served if m.id == chosen), "")
        return cls(
            client,
            chosen,
            url=url,
            health=health,
            max_concurrency=max_concurrency,
            max_images=max_images,
            image_side=image_side,
            jpeg_quality=jpeg_quality,
            media_cache=owner == "vllm",
            quiet=quiet,
        )

    def for_user(self, user: str) -> RemoteBackend:
        """This backend, with ``user`` sent on every request (client, caches and health shared)."""
        view = copy.copy(self)
        view.user = user
        return view

    def close(self) -> None:
        if self._quiet is not None:
            _HTTP_LOG.removeFilter(self._quiet)
        self.client.close()

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        self._interrupt = check

    def status(self) -> dict[str, Any]:
        """``state`` (ok / unreachable / rate_limited), the last ``error`` and request counts, for
        ``status``."""
        return self.health.snapshot()

    # -- CaptionBackend -------------------------------------------------------------------------
    def encode_frames(self, frames: Sequence[Any], max_slice_nums: int = 1) -> list[RemoteFrame]:
        """Each frame JPEG-encoded once (``max_slice_nums`` is the server's business: it slices)."""
        return [encode_frame(frame, self.image_side, self.jpeg_quality) for frame in frames]

    def describe(
        self,
        frames: Sequence[Any],
        prompt: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        return self._window(frames, prompt, context, max_new_tokens, decoding, on_text)

    def ask(
        self,
        frames: Sequence[Any],
        question: str,
        *,
        context: str | None = None,
        max_new_tokens: int = 256,
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        return self._window(frames, question, context, max_new_tokens, decoding, on_text)

    def chat(
        self,
        text: str,
        *,
        max_new_tokens: int = 512,
        decoding: str = "greedy",
        on_text: TextCallback | None = None,
    ) -> str:
        """A text-only turn (summaries, questions over the past)."""
        params = sampling_params(decoding)
        build = lambda _ids: [{"role": "user", "content": text}]  # noqa: E731
        return self._streamed(build, (), max_new_tokens, params, on_text)

    def yes_probabilities(
        self, frames: Sequence[Any], questions: Sequence[str], *, context: str | None = None
    ) -> list[float]:
        """P(yes) per question: from the first answer token's ``top_logprobs`` where the server gives
        them, else 1.0/0.0 by the first word of a one-token answer."""
        return [self._yes(frames, question, context) for question in questions]

    # -- requests -------------------------------------------------------------------------------
    def _window(
        self,
        frames: Sequence[Any],
        text: str,
        context: str | None,
        max_new_tokens: int,
        decoding: str,
        on_text: TextCallback | None,
    ) -> str:
        params = sampling_params(decoding)
        chosen = subsample(frames, self.max_images)
        return self._streamed(
            lambda ids: [self._message(chosen, text, context, ids)], chosen, max_new_tokens, params, on_text
        )

    def _message(
        self, frames: Sequence[RemoteFrame], text: str, context: str | None, ids: bool
    ) -> dict[str, Any]:
        return window_message(
            frames,
            text,
            context=context,
            max_images=self.max_images,
            with_uuid=ids,
            held=self._media.__contains__,
        )

    def _streamed(
        self,
        build: Callable[[bool], list[dict[str, Any]]],
        frames: Sequence[RemoteFrame],
        max_new_tokens: int,
        params: dict[str, Any],
        on_text: TextCallback | None,
    ) -> str:
        """Stream one completion; pieces go to ``on_text``. A retry after a broken stream repeats
        nothing ``on_text`` has already had."""
        told = 0

        def attempt(ids: bool) -> str:
            nonlocal told
            pieces: list[str] = []
            request = {"messages": build(ids), "max_tokens": max_new_tokens, "stream": True, **params}
            stream: openai.Stream[ChatCompletionChunk] = self._create(request)
            finished = False
            with stream:
                for chunk in stream:
                    if self._interrupted():
                        return "".join(pieces)
                    finished = finished or bool(chunk.choices and chunk.choices[0].finish_reason)
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if not piece:
                        continue
                    pieces.append(piece)
                    new = "".join(pieces)[told:]
                    if new and on_text is not None:
                        on_text(new)
                        told += len(new)
            if not finished:
                raise _Unfinished("model server ended the streamed answer unfinished (no finish_reason)")
            return "".join(pieces)

        return self._with_retries(attempt, frames, "")

    def _yes(self, frames: Sequence[Any], question: str, context: str | None) -> float:
        chosen = subsample(frames, self.max_images)

        def attempt(ids: bool) -> float:
            request: dict[str, Any] = {
                "messages": [self._message(chosen, question + _YES_NO, context, ids)],
                "max_tokens": 1,
                "temperature": 0.0,
            }
            if self._media.logprobs:
                request.update(logprobs=True, top_logprobs=_TOP_LOGPROBS)
            response: ChatCompletion = self._create(request)
            choice = response.choices[0]
            top = None
            if choice.logprobs is not None and choice.logprobs.content:
                top = [(t.token, t.logprob) for t in choice.logprobs.content[0].top_logprobs]
            return yes_probability(top, choice.message.content or "")

        try:
            return float(self._with_retries(attempt, chosen, 0.0))
        except RequestRefused:
            if not self._media.logprobs:
                raise
            # A server that refuses logprobs (rather than leaving them out) is asked by the word; one
            # that refuses the question either way (too long) keeps being asked with them.
            self._media.logprobs = False
            try:
                score = float(self._with_retries(attempt, chosen, 0.0))
            except RequestRefused:
                self._media.logprobs = True
                raise
            log.warning("model server %s refused a request with logprobs: yes/no goes by the word", self.url)
            return score

    def _create(self, request: dict[str, Any]) -> Any:
        """One chat completion of this backend's model, with its ``user``. The messages are plain
        dicts: vLLM's ``uuid`` parts are beyond the OpenAI schema the client's types describe."""
        if self.user:
            request["user"] = self.user
        return self.client.chat.completions.create(model=self.model, **request)

    def _interrupted(self) -> bool:
        return self._interrupt is not None and self._interrupt()

    def _with_retries(
        self, attempt: Callable[[bool], Any], frames: Sequence[RemoteFrame], stopped: Any
    ) -> Any:
        """Run ``attempt(ids)`` (``ids``: send media uuids) until it goes through: outages are
        retried with backoff (the backend shows ``unreachable`` meanwhile); a refusal is raised, after
        one full resend when the request relied on frames the server was thought to hold.
        ``stopped`` is returned when the interrupt check says stop while waiting."""
        backoff = BACKOFF_INITIAL_S
        resent = False
        outage = False  # this request met one: the server that answers may be another one
        internal_errors = 0
        self.health.begin()
        try:
            while True:
                ids = self.media_cache
                held = [f.uuid for f in frames if ids and f.uuid in self._media]
                wait = None  # the server's Retry-After, when it says
                try:
                    result = attempt(ids)
                except openai.RateLimitError as exc:
                    internal_errors = 0
                    wait = retry_after(exc.response.headers, time.time())
                    after = "" if wait is None else f"; retrying after {wait:g} s"
                    self.health.limited(f"rate limited (429): {server_reason(exc)}{after}")
                except (openai.InternalServerError, _Unfinished) as exc:
                    reason = str(exc) if isinstance(exc, _Unfinished) else _outage(exc)
                    plain = isinstance(exc, _Unfinished) or exc.status_code == 500
                    internal_errors = internal_errors + 1 if plain else 0
                    if internal_errors >= INTERNAL_ERRORS_TO_REFUSE:
                        self.health.was_refused(reason, internal=True)
                        raise RequestRefused(reason) from None
                    self.health.failed(reason)
                    outage = True
                except openai.APIConnectionError as exc:
                    internal_errors = 0
                    self.health.failed(_outage(exc))
                    outage = True
                except httpx2.TransportError as exc:  # the connection broke mid-stream
                    self.health.failed(f"connection lost: {exc}")
                    outage = True
                except openai.APIStatusError as exc:
                    if exc.status_code >= 500:
                        self.health.failed(_outage(exc))
                        outage = True
                    elif held and not resent:
                        self._media.forget(held)  # evicted, or a replica that never had them
                        self._missed()
                        resent = True
                        continue
                    else:
                        reason = f"model server refused the request ({exc.status_code}): {server_reason(exc)}"
                        self.health.was_refused(reason)
                        raise RequestRefused(reason) from None
                except openai.APIError as exc:  # an error event inside the stream
                    reason = f"model server failed the request: {exc.message}"
                    self.health.was_refused(reason)
                    raise RequestRefused(reason) from None
                else:
                    self.health.succeeded()
                    if outage:
                        self._media.reset()
                    elif held and not resent:
                        self._media.found()
                    if ids:
                        self._media.add(f.uuid for f in frames)
                    return result
                pause, backoff = next_pause(backoff, wait)
                if not self._wait(pause):
                    return stopped
        finally:
            self.health.end()

    def _missed(self) -> None:
        self.health.missed()
        if self._media.missed(time.monotonic()):
            log.warning(
                "model server %s: media uuids missed %d times in a row: frames go in full for %g s",
                self.url,
                MISSES_TO_GIVE_UP,
                self._media.reprobe_after,
            )

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless interrupted first; False when interrupted."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._interrupted():
                return False
            time.sleep(min(left, 0.05))
        return not self._interrupted()


class _Unfinished(Exception):
    """A streamed answer that ended without saying it was done (no ``finish_reason``)."""


def _outage(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"unreachable ({exc.__cause__ or exc})"
    if isinstance(exc, openai.APIStatusError):
        return f"server error {exc.status_code}: {server_reason(exc)}"
    return str(exc)
