"""The gateway's HTTP side, before any websocket: the viewer's files, ``/healthz``, ``/metrics``, the
token check.

Served through websockets' ``process_request`` on the gateway's one port. ``GET`` and ``HEAD`` only
(``HEAD``: the same headers, no body); a request for :data:`WS_PATH` that passes the checks goes on
to the websocket handshake.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .auth import TokenAuth

log = logging.getLogger(__name__)

DEFAULT_WEB_DIR = Path(__file__).resolve().parent / "web"
WS_PATH = "/ws"
HEALTH_PATH = "/healthz"
THUMBNAIL_PREFIX = "/thumbnail/"
MAX_THUMBNAIL_READS = 8  # stored thumbnails being read at once; past it: 503 (they queue on one thread)
METRICS_PATH = "/metrics"
MAX_STATIC_BYTES = 16 * 1024 * 1024


class Routes:
    """What each HTTP request gets. ``health`` gives the ``/healthz`` figures; ``admit`` says whether
    one more websocket client may connect; ``auth`` None means no token is needed; ``metrics`` gives
    ``/metrics`` as ``(content type, body)`` (None: no such page)."""

    def __init__(
        self,
        *,
        web_dir: Path | None,
        auth: TokenAuth | None,
        health: Callable[[], dict[str, Any]],
        admit: Callable[[], bool],
        thumbnail: Callable[[int], Awaitable[bytes | None]] | None = None,
        metrics: Callable[[], tuple[str, bytes]] | None = None,
    ) -> None:
        self.web_dir = web_dir.resolve() if web_dir is not None else None
        self.auth = auth
        self._health = health
        self._admit = admit
        self._thumbnail = thumbnail
        self._thumbnail_reads = 0
        self._metrics = metrics

    def process_request(
        self, conn: ServerConnection, request: Request
    ) -> Response | None | Awaitable[Response | None]:
        """websockets' hook: a response (awaitable for a stored thumbnail, read off the event loop),
        or None to go on with the websocket handshake."""
        if request.method not in ("GET", "HEAD"):
            return response(
                http.HTTPStatus.METHOD_NOT_ALLOWED,
                b"Only GET and HEAD.\n",
                "text/plain; charset=utf-8",
                extra=[("Allow", "GET, HEAD")],
            )
        answer = self._route(request)
        if isinstance(answer, Awaitable):
            return self._head(request, answer)
        if request.method == "HEAD" and answer is not None:
            return dataclasses.replace(answer, body=b"")  # Content-Length still tells the size
        return answer

    async def _head(self, request: Request, answer: Awaitable[Response]) -> Response:
        page = await answer
        return dataclasses.replace(page, body=b"") if request.method == "HEAD" else page

    def _route(self, request: Request) -> Response | None | Awaitable[Response]:
        url = urlsplit(request.path)
        if url.path == HEALTH_PATH:  # never needs the token: load balancers and supervisors poll it
            return response(
                http.HTTPStatus.OK,
                json.dumps(self._health()).encode(),
                "application/json",
                extra=[("Cache-Control", "no-store")],
            )
        via_query = False
        if self.auth is not None:
            via_query = self.auth.in_query(url.query)
            if not (via_query or self.auth.in_headers(request)):
                return response(
                    http.HTTPStatus.UNAUTHORIZED,
                    b"Missing or wrong token.\n",
                    "text/plain; charset=utf-8",
                    extra=[("WWW-Authenticate", "Bearer")],
                )
        if url.path == METRICS_PATH and self._metrics is not None:  # behind the token: it names streams
            content_type, body = self._metrics()
            return response(http.HTTPStatus.OK, body, content_type, extra=[("Cache-Control", "no-store")])
        if url.path == WS_PATH:
            if not self._admit():
                return response(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, b"Too many clients.\n", "text/plain; charset=utf-8"
                )
            return None  # the websocket handshake proceeds (426 if it is not an upgrade)
        if url.path.startswith(THUMBNAIL_PREFIX):
            return self._stored_thumbnail(url.path.removeprefix(THUMBNAIL_PREFIX))
        if "upgrade" in request.headers.get("Connection", "").lower():
            return response(
                http.HTTPStatus.NOT_FOUND,
                f"Websockets are at {WS_PATH}.\n".encode(),
                "text/plain; charset=utf-8",
            )
        page = self._static(url.path)
        if via_query and self.auth is not None:
            # The page's own requests (scripts, styles, the websocket) then carry the token.
            page.headers["Set-Cookie"] = self.auth.cookie()
        return page

    async def _stored_thumbnail(self, name: str) -> Response:
        """The JPEG the store keeps with message ``name`` (a search or history item's ``store_id``)."""
        jpeg = None
        if self._thumbnail is not None and name.isascii() and name.isdigit() and len(name) <= 19:
            if self._thumbnail_reads >= MAX_THUMBNAIL_READS:
                return response(
                    http.HTTPStatus.SERVICE_UNAVAILABLE,
                    b"Too many thumbnails being read; retry.\n",
                    "text/plain; charset=utf-8",
                    extra=[("Retry-After", "1")],
                )
            self._thumbnail_reads += 1
            try:
                jpeg = await self._thumbnail(int(name))
            finally:
                self._thumbnail_reads -= 1
        if jpeg is None:
            return response(http.HTTPStatus.NOT_FOUND, b"No such thumbnail.\n", "text/plain; charset=utf-8")
        # A stored row never changes (retention deletes it): the browser may keep it.
        return response(
            http.HTTPStatus.OK, jpeg, "image/jpeg", extra=[("Cache-Control", "private, max-age=86400")]
        )

    def _static(self, path: str) -> Response:
        not_found = response(http.HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain; charset=utf-8")
        if self.web_dir is None:
            return not_found
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (self.web_dir / name).resolve()
        if not target.is_relative_to(self.web_dir) or not target.is_file():
            return not_found
        try:
            if target.stat().st_size > MAX_STATIC_BYTES:
                return not_found
            body = target.read_bytes()
        except OSError as exc:
            log.warning("cannot read %s: %s", target, exc)
            return not_found
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        return response(http.HTTPStatus.OK, body, kind, extra=[("Cache-Control", "no-cache")])


def response(
    status: http.HTTPStatus, body: bytes, content_type: str, *, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)
