"""The web viewer in a real headless Chromium (Debian's, driven by Playwright), against a real gateway
process fed through the real zmq bus.

The feed (tests/browser.py) plays the capture and inference processes: it publishes status reports,
thumbnails made of real photos, partials and captions on real zmq publishers, and answers asks that
reach it through a real AskReceiver. Only the model is absent (its text is written by the test), so
every assertion here is about what the page does with real messages over a real websocket.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import (
    DESKTOP,
    PHONE,
    GatewayProcess,
    PageLog,
    StreamPlay,
    ViewerFeed,
    launch_chromium,
    open_page,
    photo_thumbnails,
    save_screenshot,
)

from stream import messages
from stream.bus import RunPaths

pytestmark = pytest.mark.integration

TOKEN = "s3cret-Token_for-tests"
WAIT_MS = 15_000  # generous: two shared CPU cores
NO_ANSWER = "(no answer please)"
DOOR_ERROR = "rtsp://127.0.0.1:8554/door: connection refused; retrying in 4 s"
# Short timings so the heartbeat and reconnect paths run in seconds (the page's documented hook).
FAST = {
    "pingIntervalMs": 300,
    "pongTimeoutMs": 1500,
    "connectTimeoutMs": 1500,
    "reconnectBaseMs": 200,
    "reconnectMaxMs": 800,
}


def _answer(stream: str, question: str) -> str | None:
    return None if NO_ANSWER in question else f"On {stream}: an answer to {question!r}."


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("VIDNARRATE_SCREENSHOTS")
    return Path(configured) if configured else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerFeed]:
    paths = RunPaths.create(root=tmp_path_factory.mktemp("run"))
    streams = [
        StreamPlay("cam0", thumbnails=photo_thumbnails()),
        StreamPlay("door", state="lost", fps=0.0, error=DOOR_ERROR),
    ]
    with ViewerFeed(paths, streams, period=0.4, answer=_answer) as running:
        yield running
    paths.remove()


@pytest.fixture(scope="module")
def gateway(feed: ViewerFeed) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        feed.endpoints(),
        feed.asks_endpoint,
        run_dir=feed.paths.run_dir,
        token=TOKEN,
        ask_timeout=2.0,
        status_interval=0.5,
    ).start()
    yield process
    process.stop()


@pytest.fixture
def own_gateway(feed: ViewerFeed) -> Iterator[GatewayProcess]:
    """A gateway of this test alone (it gets killed or stopped), on the same bus."""
    process = GatewayProcess(
        feed.endpoints(), feed.asks_endpoint, run_dir=feed.paths.run_dir, token=TOKEN, status_interval=0.5
    ).start()
    yield process
    process.stop()


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def open_live(
    browser: Any,
    gateway: GatewayProcess,
    *,
    viewport: dict[str, int] = DESKTOP,
    init_config: dict[str, Any] | None = None,
) -> tuple[Any, PageLog]:
    page, record = open_page(browser, gateway.url, viewport=viewport, init_config=init_config)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return page, record


def assert_clean(page: Any, record: PageLog) -> None:
    """No script error, and nothing requested from anywhere but this machine."""
    assert record.errors == []
    assert record.requests, "the page made no requests at all?"
    assert record.external() == [], f"requests that leave 127.0.0.1: {record.external()}"
    page.context.close()


def current_text(page: Any) -> Any:
    return page.locator("#current-text")


def timeline_texts(page: Any) -> list[str]:
    return [text.strip() for text in page.locator("#timeline li .text").all_text_contents()]


# -- what a user sees ----------------------------------------------------------------------------


def test_live_stream_shows_status_thumbnail_and_updating_captions(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed, screenshots: Path
) -> None:
    page, record = open_live(browser, gateway)

    # The picker lists every source of the run with its status strip.
    cam0 = page.locator('.tab[data-stream="cam0"]')
    door = page.locator('.tab[data-stream="door"]')
    expect(cam0.locator(".state")).to_have_text("live", timeout=WAIT_MS)
    expect(door.locator(".state")).to_have_text("lost", timeout=WAIT_MS)
    expect(cam0.locator('[data-field="fps"] b')).to_have_text("25.0")
    expect(cam0.locator('[data-field="drops"] b')).to_have_text("0")
    expect(cam0.locator('[data-field="reconnects"] b')).to_have_text("0")
    expect(cam0.locator('[data-field="lag"] b')).to_have_text("0.4 s")
    expect(cam0.locator('[data-field="latency"] b')).to_have_text("850 ms")
    expect(cam0).to_have_attribute("aria-selected", "true")
    expect(door.locator(".tab-error")).to_have_text(DOOR_ERROR)
    expect(cam0.locator(".tab-error")).to_be_hidden()

    # The thumbnail is a real JPEG the browser decoded, and it follows the newest sampled frame.
    page.wait_for_function(
        "() => { const i = document.getElementById('thumb');"
        " return !i.hidden && i.complete && i.naturalWidth > 0; }",
        timeout=WAIT_MS,
    )
    assert page.evaluate("document.getElementById('thumb').naturalWidth") == 320
    first_src = page.get_attribute("#thumb", "src")
    assert first_src is not None and first_src.startswith("data:image/jpeg;base64,")
    page.wait_for_function(
        "(src) => document.getElementById('thumb').getAttribute('src') !== src",
        arg=first_src,
        timeout=WAIT_MS,
    )
    expect(page.locator("#thumb-time")).to_have_text(re.compile(r"^frame at \d\d:\d\d\.\d · \d\d:\d\d:\d\d$"))

    # Captions appear and update; the past moves into the timeline, newest on top.
    texts = [
        f"First caption {time.time_ns()}",
        f"Second caption {time.time_ns()}",
        f"Third caption {time.time_ns()}",
    ]
    published = []
    for text in texts:
        published.append(feed.caption("cam0", text))
        expect(current_text(page)).to_have_text(text, timeout=WAIT_MS)
    expect(page.locator("#current")).to_have_attribute("data-kind", "caption")
    assert timeline_texts(page)[:2] == [texts[1], texts[0]]
    last = published[-1]
    range_text = page.locator("#current-range").text_content() or ""
    assert re.fullmatch(r"\d\d:\d\d\.\d–\d\d:\d\d\.\d", range_text), range_text
    assert range_text.endswith(_stream_time(last.t_end))
    assert re.fullmatch(r"\d\d:\d\d:\d\d–\d\d:\d\d:\d\d", page.locator("#current-wall").text_content() or "")
    entry_meta = page.locator("#timeline li .meta").first.text_content() or ""
    assert _stream_time(published[1].t_end) in entry_meta
    assert re.search(r"\d\d:\d\d:\d\d–\d\d:\d\d:\d\d", entry_meta), entry_meta

    # An alert event goes into the timeline, marked with its rule.
    feed.publish(
        "inference",
        messages.Event(
            stream="cam0",
            rule="person",
            event_id="person-1",
            state=messages.EventState.START,
            t_start=1.0,
            t_end=5.0,
            wall_start=time.time() - 4.0,
            wall_end=time.time(),
            score=0.9,
            text="A person climbs the fence.",
        ),
    )
    event = page.locator("#timeline li.event").first
    expect(event.locator(".rule")).to_have_text("person", timeout=WAIT_MS)
    expect(event.locator(".text")).to_have_text("A person climbs the fence.")
    expect(current_text(page)).to_have_text(texts[-1])  # an event is not a caption

    # The header says which model and device produce the captions.
    expect(page.locator("#model")).to_have_text("feed · cpu")
    save_screenshot(page, screenshots, "viewer-desktop")
    assert_clean(page, record)


def test_partials_show_token_by_token_then_the_final_caption_replaces_them(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, gateway)
    before = f"Caption before the partials {time.time_ns()}"
    feed.caption("cam0", before)
    expect(current_text(page)).to_have_text(before, timeout=WAIT_MS)

    words = ["Two", "white", "dogs", "stand", "under", "a", "tree."]
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        feed.partial("cam0", text)
        expect(current_text(page)).to_have_text(text, timeout=WAIT_MS)
        expect(page.locator("#current")).to_have_attribute("data-kind", "partial")
    expect(page.locator("#current-label")).to_have_text("writing…")
    assert timeline_texts(page)[0] == before  # while writing, the previous caption is in the past

    final = f"Two white dogs stand under a tree. {time.time_ns()}"
    feed.caption("cam0", final)
    expect(current_text(page)).to_have_text(final, timeout=WAIT_MS)
    expect(page.locator("#current")).to_have_attribute("data-kind", "caption")
    expect(page.locator("#current-label")).to_have_text("now")
    assert timeline_texts(page)[0] == before
    assert not any(text.startswith("Two white dogs stand under a tree.") for text in timeline_texts(page))
    assert_clean(page, record)


def test_ask_gets_its_answer_in_place_for_the_selected_stream(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, gateway)
    question = f"What are the dogs doing? {time.time_ns()}"
    page.fill("#question", question)
    page.press("#question", "Enter")
    answer = page.locator("#answers li").first
    expect(answer.locator(".question")).to_have_text(question)
    expect(answer).to_have_attribute("data-state", "answered", timeout=WAIT_MS)
    expect(answer.locator(".reply")).to_have_text(f"On cam0: an answer to {question!r}.")
    assert any(ask.question == question and ask.stream == "cam0" for ask in feed.asks)
    expect(page.locator("#question")).to_have_value("")

    # Pick the other stream: the question goes about that one, and its answer shows there.
    page.locator('.tab[data-stream="door"]').click()
    expect(page.locator('.tab[data-stream="door"]')).to_have_attribute("aria-selected", "true")
    expect(page.locator("#answers li")).to_have_count(0)
    assert page.evaluate("location.hash") == "#door"
    second = f"Is the door open? {time.time_ns()}"
    page.fill("#question", second)
    page.click("#ask-button")
    expect(page.locator("#answers li").first).to_have_attribute("data-state", "answered", timeout=WAIT_MS)
    expect(page.locator("#answers li .reply").first).to_have_text(f"On door: an answer to {second!r}.")

    # An ask the inference side never answers ends in the gateway's timeout error, in place.
    page.fill("#question", f"{NO_ANSWER} {time.time_ns()}")
    page.click("#ask-button")
    unanswered = page.locator("#answers li").first
    expect(unanswered).to_have_attribute("data-state", "waiting")
    expect(unanswered).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    expect(unanswered.locator(".reply")).to_contain_text("no answer within")

    # Back on cam0, its own question and answer are still there.
    page.locator('.tab[data-stream="cam0"]').click()
    expect(page.locator("#answers li .question").first).to_have_text(question)
    assert_clean(page, record)


def test_message_text_is_shown_as_text_never_as_markup(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, gateway)
    hostile = '<img src="x" onerror="window.__pwned = 1"><b>bold</b> & more'
    feed.caption("cam0", hostile)
    expect(current_text(page)).to_have_text(hostile, timeout=WAIT_MS)
    feed.caption("cam0", f"after {time.time_ns()}")
    expect(page.locator("#timeline li .text").first).to_have_text(hostile, timeout=WAIT_MS)
    assert page.locator("#stream img").count() == 1  # the thumbnail, nothing else
    assert page.locator("#stream b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert_clean(page, record)


def test_timeline_is_capped_and_newest_on_top(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, gateway)
    tag = time.time_ns()
    count = 230
    for n in range(count):
        feed.caption("cam0", f"bulk {tag} #{n}")
        if n % 50 == 49:
            time.sleep(0.05)  # real captions come seconds apart; keep within the gateway's queue
    expect(current_text(page)).to_have_text(f"bulk {tag} #{count - 1}", timeout=WAIT_MS)
    # 200 captions are kept per stream: the current one plus 199 in the timeline.
    expect(page.locator("#timeline li")).to_have_count(199, timeout=WAIT_MS)
    texts = timeline_texts(page)
    assert texts[0] == f"bulk {tag} #{count - 2}"
    assert texts[-1] == f"bulk {tag} #{count - 200}"
    assert_clean(page, record)


def test_phone_viewport_shows_the_caption_without_horizontal_scrolling(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed, screenshots: Path
) -> None:
    page, record = open_live(browser, gateway, viewport=PHONE)
    text = (
        "A person in a red jacket walks past the parked cars towards the station entrance; "
        "sign reads https://example.invalid/" + "x" * 120
    )
    feed.caption("cam0", text)
    expect(current_text(page)).to_have_text(text, timeout=WAIT_MS)
    page.wait_for_function("() => document.getElementById('thumb').naturalWidth > 0", timeout=WAIT_MS)
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1] == PHONE["width"], widths
    box = current_text(page).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    font_px = page.evaluate("parseFloat(getComputedStyle(document.getElementById('current-text')).fontSize)")
    assert font_px >= 15
    thumb = page.locator("#thumb").bounding_box()
    assert thumb is not None and thumb["x"] + thumb["width"] <= PHONE["width"]
    # The streams sit in one row that scrolls sideways, so more streams never push the picture down.
    picker = page.locator("#picker").bounding_box()
    tab = page.locator(".tab").first.bounding_box()
    assert picker is not None and tab is not None and picker["height"] < tab["height"] + 24
    save_screenshot(page, screenshots, "viewer-phone")
    assert_clean(page, record)


# -- token auth ------------------------------------------------------------------------------------


def test_token_is_required_taken_from_the_url_once_and_not_kept_there(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_page(browser)
    assert page.goto(gateway.base_url).status == 401
    assert page.goto(gateway.base_url + "?token=wrong").status == 401
    assert page.goto(gateway.base_url + "app.js").status == 401
    # Without the token, the websocket handshake is refused as well (the page's origin, no cookie).
    assert page.goto(gateway.base_url + "healthz").status == 200
    assert _try_websocket(page, f"ws://127.0.0.1:{gateway.port}/ws") == "refused"
    assert _try_websocket(page, f"ws://127.0.0.1:{gateway.port}/ws?token={TOKEN}") == "open"
    page.context.close()

    page, record = open_live(browser, gateway)
    assert TOKEN not in page.url
    assert TOKEN not in page.evaluate("location.href")
    assert TOKEN not in (page.locator("body").text_content() or "")
    # The cookie set on the first answer authorises the websocket: no URL after the first carries the
    # token (nor can a failed reconnect print it in the console), and a reload of the tab still works.
    assert record.websockets and not any("token" in url for url in record.websockets)
    assert (
        page.evaluate("JSON.stringify({...sessionStorage}) + JSON.stringify({...localStorage})").count(TOKEN)
        == 0
    )
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    assert TOKEN not in page.url
    text = f"after reload {time.time_ns()}"
    feed.caption("cam0", text)
    expect(current_text(page)).to_have_text(text, timeout=WAIT_MS)
    # The URL with the token was replaced, not pushed: Back leads to where the tab was before it.
    page.go_back()
    assert page.url == "about:blank"
    assert not any(TOKEN in url for url in record.requests[1:])  # only the first request had it
    assert_clean(page, record)


def test_another_run_on_this_host_does_not_log_the_viewer_out(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    # Browsers share cookies across the ports of a host: a second run (its own token) opened in the
    # same browser must not overwrite the first run's cookie, or reloading the first page gets 401.
    other = GatewayProcess(
        feed.endpoints(),
        feed.asks_endpoint,
        run_dir=feed.paths.run_dir,
        token="the-other-run's-token",
        status_interval=0.5,
    ).start()
    try:
        page, record = open_live(browser, gateway)
        second = page.context.new_page()
        second.goto(other.url)
        expect(second.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        assert cookies == {
            f"vidnarrate_token_{gateway.port}": TOKEN,
            f"vidnarrate_token_{other.port}": "the-other-run's-token",
        }
        assert page.reload().status == 200
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        assert second.reload().status == 200
        expect(second.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        assert_clean(page, record)
    finally:
        other.stop()


def _try_websocket(page: Any, url: str) -> str:
    return str(
        page.evaluate(
            """(url) => new Promise((resolve) => {
             const ws = new WebSocket(url);
             ws.onopen = () => { ws.close(); resolve("open"); };
             ws.onclose = () => resolve("refused");
           })""",
            url,
        )
    )


# -- losing the gateway ------------------------------------------------------------------------------


def test_killed_gateway_shows_reconnecting_then_resumes(
    browser: Any, own_gateway: GatewayProcess, feed: ViewerFeed, screenshots: Path
) -> None:
    page, record = open_live(browser, own_gateway, init_config=FAST)
    before = f"before the gateway died {time.time_ns()}"
    feed.caption("cam0", before)
    expect(current_text(page)).to_have_text(before, timeout=WAIT_MS)

    own_gateway.kill()
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    expect(conn).to_contain_text("reconnecting")
    page.wait_for_timeout(1500)  # several failed attempts while it is down: still reconnecting
    expect(conn).to_have_attribute("data-state", "reconnecting")
    save_screenshot(page, screenshots, "viewer-reconnecting")

    own_gateway.start()
    expect(conn).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    expect(page.locator('.tab[data-stream="cam0"] .state')).to_have_text("live", timeout=WAIT_MS)
    _publish_until_shown(page, feed, "after the restart")
    assert before in timeline_texts(page)  # what was seen before the drop is kept
    assert len(record.websockets) >= 2
    assert_clean(page, record)


def test_heartbeat_notices_a_hung_gateway_and_reconnects_when_it_is_back(
    browser: Any, own_gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, own_gateway, init_config=FAST)
    own_gateway.pause()  # the TCP connection stays open; only the missing pongs tell
    try:
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    finally:
        own_gateway.resume()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    _publish_until_shown(page, feed, "after the hang")
    assert len(record.websockets) >= 2
    assert_clean(page, record)


def test_states_are_unknown_while_disconnected_and_streams_a_new_run_lacks_are_marked_gone(
    browser: Any, own_gateway: GatewayProcess, feed: ViewerFeed, tmp_path: Path
) -> None:
    page, record = open_live(browser, own_gateway, init_config={**FAST, "goneAfterMs": 2000})
    cam0 = page.locator('.tab[data-stream="cam0"]')
    door = page.locator('.tab[data-stream="door"]')
    expect(cam0.locator(".state")).to_have_text("live", timeout=WAIT_MS)
    expect(door.locator(".state")).to_have_text("lost", timeout=WAIT_MS)
    # Tabs added after the first are out of the keyboard's tab order: only the selected one is in it.
    assert page.evaluate("[...document.querySelectorAll('.tab')].filter((t) => t.tabIndex === 0).length") == 1
    door.click()
    seen = f"seen in the first run {time.time_ns()}"
    feed.caption("door", seen)
    expect(current_text(page)).to_have_text(seen, timeout=WAIT_MS)

    own_gateway.kill()
    # Disconnected, the page does not know the states any more and says so instead of "live".
    expect(cam0).to_have_attribute("data-state", "unknown", timeout=WAIT_MS)
    expect(cam0.locator(".state")).to_have_text("?")
    expect(door.locator(".state")).to_have_text("?")
    assert "not connected" in (cam0.get_attribute("title") or "")

    # A new run at the same URL has only cam0: door is marked gone, its history is kept.
    paths = RunPaths.create(root=tmp_path)
    with ViewerFeed(paths, [StreamPlay("cam0")], period=0.4) as new_run:
        restarted = GatewayProcess(
            new_run.endpoints(),
            new_run.asks_endpoint,
            run_dir=paths.run_dir,
            port=own_gateway.port,
            token=TOKEN,
            status_interval=0.5,
        ).start()
        try:
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            expect(cam0.locator(".state")).to_have_text("live", timeout=WAIT_MS)
            expect(door).to_have_attribute("data-state", "gone", timeout=WAIT_MS)
            expect(door.locator(".state")).to_have_text("gone")
            expect(door.locator(".tab-error")).to_be_hidden()
            expect(door).to_have_attribute("aria-selected", "true")  # the user's pick stays
            expect(current_text(page)).to_have_text(seen)
            assert_clean(page, record)
        finally:
            restarted.stop()
    paths.remove()


def test_a_question_as_long_as_the_protocol_allows_is_sent_whole(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, gateway)
    prefix = f"{time.time_ns()} where is the red car now "
    question = prefix + "?" * (messages.MAX_QUESTION_CHARS - len(prefix))
    page.fill("#question", question + " and more")  # the box stops at the protocol's limit
    page.press("#question", "Enter")
    expect(page.locator("#answers li").first).to_have_attribute("data-state", "answered", timeout=WAIT_MS)
    assert any(ask.question == question for ask in feed.asks)
    assert_clean(page, record)


def _publish_until_shown(page: Any, feed: ViewerFeed, label: str) -> None:
    """Publish fresh captions until one shows: a just-started gateway's bus subscription may still be
    on its way to the publisher when the page reconnects, and a PUB drops what nobody subscribed to."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        text = f"{label} {time.time_ns()}"
        feed.caption("cam0", text)
        try:
            expect(current_text(page)).to_have_text(text, timeout=1000)
            return
        except AssertionError:
            continue
    raise AssertionError(f"no caption published {label} reached the page")


def _stream_time(t: float) -> str:
    tenths = round(t * 10)
    minutes, tenths = divmod(tenths, 600)
    return f"{minutes:02d}:{tenths / 10:04.1f}"


def test_a_run_with_more_streams_than_the_viewer_shows_says_so(browser: Any, tmp_path: Path) -> None:
    paths = RunPaths.create(root=tmp_path)
    plays = [StreamPlay(f"cam{n:02d}") for n in range(66)]
    with ViewerFeed(paths, plays, period=0.5) as many:
        gateway = GatewayProcess(
            many.endpoints(), many.asks_endpoint, run_dir=paths.run_dir, status_interval=0.5
        ).start()
        try:
            page, record = open_live(browser, gateway)
            expect(page.locator(".tab")).to_have_count(64, timeout=WAIT_MS)
            expect(page.locator("#notice")).to_contain_text("first 64 streams", timeout=WAIT_MS)
            page.wait_for_timeout(1200)  # more status rounds add nothing
            assert page.locator(".tab").count() == 64
            assert_clean(page, record)
        finally:
            gateway.stop()
    paths.remove()
