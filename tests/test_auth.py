"""The gateway's token check and log redaction, on requests built in memory."""

from __future__ import annotations

import logging

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from stream.auth import RedactToken, TokenAuth


def request(**headers: str) -> Request:
    return Request("/", Headers([(name.replace("_", "-"), value) for name, value in headers.items()]))


def test_the_token_is_accepted_in_the_query_a_bearer_header_or_the_ports_cookie() -> None:
    auth = TokenAuth("s3cret", port=8765)
    assert auth.in_query("token=s3cret") and auth.in_query("a=1&token=s3cret")
    assert not auth.in_query("token=nope") and not auth.in_query("")
    assert auth.in_headers(request(Authorization="Bearer s3cret"))
    assert auth.in_headers(request(Authorization="bearer   s3cret "))
    assert not auth.in_headers(request(Authorization="Basic s3cret"))
    assert auth.in_headers(request(Cookie="vidnarrate_token_8765=s3cret"))
    assert auth.in_headers(request(Cookie="vidnarrate_token_9999=other; vidnarrate_token_8765=s3cret"))
    assert not auth.in_headers(request(Cookie="vidnarrate_token_9999=s3cret"))  # another run's port
    assert not auth.in_headers(request(Cookie='vidnarrate_token_8765="unterminated'))
    assert not auth.in_headers(request())


def test_the_cookie_is_named_after_the_port_known_once_listening() -> None:
    auth = TokenAuth("s3cret")
    auth.port = 4242
    assert auth.cookie_name == "vidnarrate_token_4242"
    assert auth.cookie() == "vidnarrate_token_4242=s3cret; HttpOnly; SameSite=Strict; Path=/"


def test_an_empty_token_is_no_token() -> None:
    with pytest.raises(ValueError, match="empty"):
        TokenAuth("")


def test_redact_token_hides_the_token_and_any_token_query_value() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "GET /ws?token=%s HTTP/1.1 %s", ("s3cre%74", "s3cret"), None
    )
    assert RedactToken("s3cret").filter(record)
    assert record.getMessage() == "GET /ws?token=*** HTTP/1.1 ***"
    clean = logging.LogRecord("x", logging.INFO, __file__, 1, "GET / %s", ("ok",), None)
    RedactToken("s3cret").filter(clean)
    assert clean.getMessage() == "GET / ok" and clean.args == ("ok",)
