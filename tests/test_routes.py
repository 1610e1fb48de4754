"""The gateway's HTTP routes, on requests built in memory (the real server: tests/test_gateway.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from stream.auth import TokenAuth
from stream.routes import Routes


def routes(web_dir: Path | None, *, token: str = "", admit: bool = True) -> Routes:
    return Routes(
        web_dir=web_dir,
        auth=TokenAuth(token, port=8765) if token else None,
        health=lambda: {"ok": True, "clients": 3},
        admit=lambda: admit,
    )


def get(r: Routes, path: str, method: str = "GET", **headers: str) -> Response | None:
    return r.process_request(None, Request(path, Headers(list(headers.items())), method=method))  # type: ignore[arg-type]


def status(response: Any) -> int:
    assert isinstance(response, Response)
    return response.status_code


def test_static_files_with_their_type_and_nothing_outside(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>hi</p>")
    (web / "app.js").write_text("1;")
    (tmp_path / "secret.txt").write_text("no")
    r = routes(web)
    page = get(r, "/")
    assert isinstance(page, Response) and page.body == b"<p>hi</p>"
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Length"] == "9"
    js = get(r, "/app.js")
    assert isinstance(js, Response) and "javascript" in js.headers["Content-Type"]
    for path in ("/missing", "/../secret.txt", "/web/../../secret.txt"):
        assert status(get(r, path)) == 404, path
    assert status(get(routes(None), "/")) == 404  # no page at all


def test_head_has_the_headers_and_no_body_and_other_methods_are_refused(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    r = routes(tmp_path)
    head = get(r, "/", method="HEAD")
    assert isinstance(head, Response) and head.body == b"" and head.headers["Content-Length"] == "9"
    refused = get(r, "/", method="POST")
    assert status(refused) == 405 and refused is not None and refused.headers["Allow"] == "GET, HEAD"


def test_health_is_open_and_the_rest_needs_the_token(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    r = routes(tmp_path, token="s3cret")
    health = get(r, "/healthz")
    assert isinstance(health, Response) and json.loads(health.body) == {"ok": True, "clients": 3}
    assert status(get(r, "/")) == 401 and status(get(r, "/ws")) == 401
    page = get(r, "/?token=s3cret")
    assert status(page) == 200 and page is not None
    assert page.headers["Set-Cookie"].startswith("vidnarrate_token_8765=s3cret;")
    by_cookie = get(r, "/", Cookie="vidnarrate_token_8765=s3cret")
    assert status(by_cookie) == 200 and by_cookie is not None and "Set-Cookie" not in by_cookie.headers
    assert get(r, "/ws", Authorization="Bearer s3cret") is None  # on to the websocket handshake


def test_the_websocket_path_admits_up_to_the_client_limit(tmp_path: Path) -> None:
    assert get(routes(tmp_path), "/ws") is None
    assert status(get(routes(tmp_path, admit=False), "/ws")) == 503
    assert status(get(routes(tmp_path), "/", Connection="Upgrade")) == 404  # websockets are at /ws


def test_stored_thumbnails_are_read_a_bounded_number_at_a_time() -> None:
    import asyncio

    from stream.routes import MAX_THUMBNAIL_READS

    async def scenario() -> None:
        release = asyncio.Event()
        asked: list[int] = []

        async def thumbnail(store_id: int) -> bytes | None:
            asked.append(store_id)
            await release.wait()  # a slow disk
            return b"\xff\xd8jpeg" if store_id == 7 else None

        r = Routes(web_dir=None, auth=None, health=dict, admit=lambda: True, thumbnail=thumbnail)
        waiting = [
            asyncio.ensure_future(get(r, "/thumbnail/7"))  # type: ignore[arg-type]
            for _ in range(MAX_THUMBNAIL_READS)
        ]
        while len(asked) < MAX_THUMBNAIL_READS:
            await asyncio.sleep(0)
        busy = await get(r, "/thumbnail/7")  # type: ignore[misc]
        assert status(busy) == 503 and busy.headers["Retry-After"] == "1"
        release.set()
        answers = await asyncio.gather(*waiting)
        assert all(status(a) == 200 and a.body == b"\xff\xd8jpeg" for a in answers)
        assert status(await get(r, "/thumbnail/8")) == 404  # type: ignore[misc]  # reads free again
        assert len(asked) == MAX_THUMBNAIL_READS + 1

    asyncio.run(scenario())


def test_metrics_are_served_with_their_type_and_need_the_token(tmp_path: Path) -> None:
    def metrics() -> tuple[str, bytes]:
        return "text/plain; version=0.0.4; charset=utf-8", b"vidnarrate_clients 3.0\n"

    def with_metrics(token: str) -> Routes:
        return Routes(
            web_dir=tmp_path, auth=TokenAuth(token, port=8765) if token else None,
            health=dict, admit=lambda: True, metrics=metrics,
        )  # fmt: skip

    open_page = get(with_metrics(""), "/metrics")
    assert isinstance(open_page, Response) and open_page.body == b"vidnarrate_clients 3.0\n"
    assert open_page.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    guarded = with_metrics("s3cret")
    assert status(get(guarded, "/metrics")) == 401
    assert status(get(guarded, "/metrics", Authorization="Bearer wrong")) == 401
    for allowed in (
        get(guarded, "/metrics", Authorization="Bearer s3cret"),
        get(guarded, "/metrics?token=s3cret"),
    ):
        assert isinstance(allowed, Response) and allowed.body == b"vidnarrate_clients 3.0\n"
    head = get(with_metrics(""), "/metrics", method="HEAD")
    assert isinstance(head, Response) and head.body == b"" and head.headers["Content-Length"] == "23"
    assert status(get(routes(tmp_path), "/metrics")) == 404  # routes without metrics: no such page
