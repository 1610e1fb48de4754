"""The gateway's token: who may open the page and the websocket, and keeping the token out of logs.

A request is authorised by ``?token=`` in the URL, an ``Authorization: Bearer`` header, or the
cookie ``vidnarrate_token_PORT`` that the page gets when opened with ``?token=`` (browsers share
cookies between the ports of a host, hence the port in the name: two runs on one machine keep their
own tokens). Comparisons take constant time.
"""

from __future__ import annotations

import hmac
import logging
import re
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from websockets.http11 import Request

TOKEN_COOKIE_PREFIX = "vidnarrate_token_"


class TokenAuth:
    """Checks requests against ``token``. ``port`` (the listening port, known once the server
    listens) names the cookie."""

    def __init__(self, token: str, port: int = 0) -> None:
        if not token:
            raise ValueError("a token must not be empty (no token: no TokenAuth)")
        self.token = token
        self.port = port

    @property
    def cookie_name(self) -> str:
        return f"{TOKEN_COOKIE_PREFIX}{self.port}"

    def cookie(self) -> str:
        """The ``Set-Cookie`` value that authorises the page's own later requests."""
        return f"{self.cookie_name}={self.token}; HttpOnly; SameSite=Strict; Path=/"

    def in_query(self, query: str) -> bool:
        """True when the URL's query carries the token (the page then gets the cookie)."""
        return any(self._matches(value) for value in parse_qs(query).get("token", []))

    def in_headers(self, request: Request) -> bool:
        """True when the bearer header or the cookie carries the token."""
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and self._matches(auth[7:].strip()):
            return True
        for raw in request.headers.get_all("Cookie"):
            try:
                morsel = SimpleCookie(raw).get(self.cookie_name)
            except CookieError:
                continue
            if morsel is not None and self._matches(morsel.value):
                return True
        return False

    def _matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(errors="surrogateescape"), self.token.encode())


class RedactToken(logging.Filter):
    """Keeps the token out of websockets' own log lines (its debug log prints request lines)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        # Any token= value goes, as sent: a percent-encoded token is accepted, so it must not show.
        redacted = _TOKEN_IN_QUERY.sub(r"\1***", text.replace(self._token, "***"))
        if redacted != text:
            record.msg = redacted
            record.args = ()
        return True


_TOKEN_IN_QUERY = re.compile(r"([?&;]token=)[^&\s\"']*")
