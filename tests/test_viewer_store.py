"""The viewer's store side in a real headless Chromium: search with stored thumbnails, history that
scrolls back past the replay, replay of earlier runs, unchanged scenes, summaries, asks over a span.

A real gateway process reads a real SQLite store (filled here as the recorder fills it, earlier runs
included) and the real zmq bus (tests/browser.py's feed plays the capture and inference processes).
Summaries and answers that cover a span are built by other parts of the run; their rendering is
checked against a stand-in websocket server in the page (Playwright's routeWebSocket) that sends
exactly the JSON docs/protocol.md gives for them, and the ask's request shape is read off the wire.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from browser import (
    GatewayProcess,
    StreamPlay,
    ViewerFeed,
    launch_chromium,
    open_page,
    photo_thumbnails,
    save_screenshot,
)

from stream import messages
from stream.bus import RunPaths
from stream.store import Record, Store

pytestmark = pytest.mark.integration

TOKEN = "store-viewer-Token"
WAIT_MS = 15_000  # generous: two shared CPU cores
RUN = "run-now"
STORED = 300  # captions of an earlier run, 10 s apart, ending well before now
REPLAY = 5  # the gateway's replay cap: the page asks for 20
UMBRELLA = 42  # the one stored caption about an umbrella, kept with a thumbnail
NOW = time.time()
BASE = NOW - 4000.0


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def stored_text(seq: int) -> str:
    return "a yellow umbrella crosses the courtyard" if seq == UMBRELLA else f"stored caption {seq} of cam0"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "vidnarrate.db"
    jpeg = photo_thumbnails()[0]
    records = []
    for seq in range(STORED):
        message = messages.Caption(
            stream="cam0",
            seq=seq,
            t_start=10.0 * seq,
            t_end=10.0 * seq + 8.0,
            frame_times=[10.0 * seq + i for i in range(8)],
            wall_start=BASE + 10.0 * seq,
            wall_end=BASE + 10.0 * seq + 8.0,
            text=stored_text(seq),
            model="tiny",
            latency_ms=5.0,
        )
        thumbnail = jpeg if seq == UMBRELLA else None
        records.append(
            Record(run_id="run-earlier", message=message, body=message.to_json(), thumbnail=thumbnail)
        )
    with Store.open(path) as store:
        store.add(records)
    return path


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("VIDNARRATE_SCREENSHOTS")
    return Path(configured) if configured else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerFeed]:
    paths = RunPaths.create(root=tmp_path_factory.mktemp("run"))
    with ViewerFeed(paths, [StreamPlay("cam0", thumbnails=photo_thumbnails())], period=0.4) as running:
        yield running
    paths.remove()


@pytest.fixture(scope="module")
def gateway(feed: ViewerFeed, store_path: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        feed.endpoints(),
        feed.asks_endpoint,
        run_dir=feed.paths.run_dir,
        token=TOKEN,
        store=str(store_path),
        run_id=RUN,
        replay=REPLAY,
        status_interval=0.5,
    ).start()
    yield process
    process.stop()


def open_live(browser: Any, url: str) -> tuple[Any, Any]:
    page, record = open_page(browser, url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return page, record


def assert_clean(page: Any, record: Any) -> None:
    assert record.errors == []
    assert record.external() == [], f"requests that leave 127.0.0.1: {record.external()}"
    page.context.close()


def timeline_texts(page: Any) -> list[str]:
    return [text.strip() for text in page.locator("#timeline li .text").all_text_contents()]


# -- through the real gateway and store ------------------------------------------------------------


def test_replay_shows_an_earlier_runs_captions_marked_and_history_scrolls_back_past_it(
    browser: Any, gateway: GatewayProcess
) -> None:
    page, record = open_live(browser, gateway.url)
    # The replay cap is 5: the newest one shows as current, the other four in the timeline, all marked.
    expect(page.locator("#current")).to_have_attribute("data-kind", "earlier", timeout=WAIT_MS)
    expect(page.locator("#current-label")).to_have_text("earlier run")
    expect(page.locator("#current-text")).to_have_text(stored_text(STORED - 1))
    expect(page.locator("#timeline li.earlier")).to_have_count(REPLAY - 1)
    expect(page.locator("#timeline li.earlier .earlier-tag").first).to_have_text("earlier run")

    # "Load earlier" asks the store for the 15 minutes before the oldest shown: 90 captions.
    page.click("#history-more")
    expect(page.locator("#history-state")).to_have_text("90 earlier captions loaded.", timeout=WAIT_MS)
    expect(page.locator("#timeline li")).to_have_count(REPLAY - 1 + 90)
    texts = timeline_texts(page)
    assert texts[0] == stored_text(STORED - 2) and texts[-1] == stored_text(STORED - REPLAY - 90)
    assert texts == [stored_text(seq) for seq in range(STORED - 2, STORED - REPLAY - 91, -1)]
    expect(page.locator("#timeline li.earlier")).to_have_count(REPLAY - 1 + 90)  # history marks them too

    # Scrolling to the timeline's end (its oldest caption) loads the 15 minutes before that.
    page.eval_on_selector("#timeline", "t => { t.scrollTop = t.scrollHeight; }")
    expect(page.locator("#timeline li")).to_have_count(REPLAY - 1 + 180, timeout=WAIT_MS)
    # Then on to the first stored caption, and no further.
    for _ in range(10):
        expect(page.locator("#history-state")).not_to_have_text("loading…", timeout=WAIT_MS)
        if page.locator("#history-more").is_disabled():
            break
        page.click("#history-more")
    expect(page.locator("#history-state")).to_have_text("Nothing earlier is stored.", timeout=WAIT_MS)
    expect(page.locator("#timeline li")).to_have_count(STORED - 1)
    assert timeline_texts(page)[-1] == stored_text(0)
    assert_clean(page, record)


def test_search_finds_a_stored_caption_and_clicking_it_shows_its_thumbnail(
    browser: Any, gateway: GatewayProcess, screenshots: Path
) -> None:
    page, record = open_live(browser, gateway.url)
    page.fill("#search-query", "umbrella")
    page.press("#search-query", "Enter")
    result = page.locator("#results .result-button")
    expect(result).to_have_count(1, timeout=WAIT_MS)
    expect(result.locator(".text")).to_have_text(stored_text(UMBRELLA))
    expect(result.locator(".r-stream")).to_have_text("cam0")
    expect(result.locator(".earlier-tag")).to_have_text("earlier run")
    expect(page.locator("#moment")).to_be_hidden()
    result.click()
    expect(page.locator("#moment-text")).to_have_text(stored_text(UMBRELLA))
    thumb = page.locator("#moment-thumb")
    expect(thumb).to_be_visible(timeout=WAIT_MS)
    assert page.eval_on_selector("#moment-thumb", "i => i.naturalWidth") == 320
    store_id = result.get_attribute("data-store-id")
    assert thumb.get_attribute("src") == f"/thumbnail/{store_id}"
    save_screenshot(page, screenshots, "viewer-search")

    # A caption kept without a frame says so; a search nothing matches says that.
    page.fill("#search-query", '"stored caption 7 of"')
    page.press("#search-query", "Enter")
    expect(result).to_have_count(1, timeout=WAIT_MS)
    result.click()
    expect(page.locator("#moment-none")).to_have_text("no frame kept", timeout=WAIT_MS)
    expect(thumb).to_be_hidden()
    page.fill("#search-query", "zeppelin")
    page.press("#search-query", "Enter")
    expect(page.locator("#found-state")).to_have_text("Nothing stored matches “zeppelin”.", timeout=WAIT_MS)
    page.fill("#search-query", '"an open quote')
    page.press("#search-query", "Enter")
    expect(page.locator("#found-state")).to_contain_text("Search failed:", timeout=WAIT_MS)
    assert_clean(page, record)


def test_an_unchanged_scene_extends_the_previous_caption_instead_of_adding_a_line(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, gateway.url)
    tag = time.time_ns()
    parked = feed.caption("cam0", f"a parked car {tag}")
    expect(page.locator("#current-text")).to_have_text(parked.text, timeout=WAIT_MS)
    time.sleep(0.05)  # a later stream time for the unchanged window than the parked one
    still = feed.caption("cam0", parked.text, unchanged=True)
    moved = feed.caption("cam0", f"the car drives off {tag}")
    expect(page.locator("#current-text")).to_have_text(moved.text, timeout=WAIT_MS)
    top = page.locator("#timeline li").first
    expect(top.locator(".text")).to_have_text(parked.text)
    expect(top.locator(".unchanged")).to_have_text("unchanged ×2")
    assert timeline_texts(page).count(parked.text) == 1
    end = top.locator(".range").text_content() or ""
    assert end.endswith(_stream_time(still.t_end)), (end, still.t_end)
    assert_clean(page, record)


def _stream_time(t: float) -> str:
    tenths = round(t * 10)
    return f"{tenths // 600:02d}:{(tenths % 600) / 10:04.1f}"


@dataclass(frozen=True, kw_only=True)
class Summary(messages.ServerMessage):
    """A live span summary as the inference process publishes it (``[summaries] every``), the fields
    docs/protocol.md gives: built elsewhere in the run, played here by the feed."""

    TYPE: ClassVar[str] = "summary"
    stream: str
    t_start: float
    t_end: float
    wall_start: float
    wall_end: float
    text: str
    captions: int


def test_a_summary_published_on_the_bus_is_shown_above_the_timeline(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_live(browser, gateway.url)
    expect(page.locator("#summaries-box")).to_be_hidden()
    now = time.time()
    text = f"A quiet courtyard; a person with a yellow umbrella crossed it once. {time.time_ns()}"
    feed.publish(
        "inference",
        Summary(
            stream="cam0",
            t_start=0.0,
            t_end=300.0,
            wall_start=now - 300,
            wall_end=now,
            text=text,
            captions=75,
        ),
    )
    summary = page.locator("#summaries li")
    expect(summary.locator(".text")).to_have_text(text, timeout=WAIT_MS)
    expect(summary.locator(".n")).to_have_text("75 captions")
    expect(summary.locator(".range")).to_have_text("00:00.0–05:00.0")
    assert_clean(page, record)


# -- summaries and asks about a span, against a stand-in server ------------------------------------


class StandIn:
    """The gateway's websocket, played in the page (Playwright's routeWebSocket): what a run with
    ``[summaries] every`` and asks over the store sends, as docs/protocol.md gives it."""

    def __init__(self, page: Any) -> None:
        self.received: list[dict[str, Any]] = []
        page.route_web_socket("**/ws", self._connected)

    def _connected(self, ws: Any) -> None:
        ws.on_message(lambda raw: self._message(ws, json.loads(raw)))

    def _message(self, ws: Any, message: dict[str, Any]) -> None:
        self.received.append(message)
        now = time.time()
        if message["type"] == "subscribe":
            for reply in (
                {"type": "subscribed", "streams": "*", "replay": 20, "replayed": 0, "thumbnails": True},
                {"type": "status", "wall": now, "streams": {"door": {"state": "live", "fps": 25.0}}},
                {
                    "type": "summary",
                    "stream": "door",
                    "t_start": 0.0,
                    "t_end": 600.0,
                    "wall_start": now - 600,
                    "wall_end": now,
                    "text": "A courier left two parcels at the door; nobody else came.",
                    "captions": 37,
                },
            ):
                ws.send(json.dumps(reply))
        elif message["type"] == "ask":
            since = message.get("since")
            answer = {"type": "answer", "id": message["id"], "stream": "door", "text": "Two parcels."}
            if since is not None:
                answer |= {"from": now - since, "to": now, "captions": 37}
            ws.send(json.dumps(answer))


def test_summaries_show_and_an_ask_about_the_last_minutes_sends_since_and_shows_its_span(
    browser: Any, gateway: GatewayProcess
) -> None:
    page, record = open_page(browser)
    server = StandIn(page)
    page.goto(gateway.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    summary = page.locator("#summaries li")
    expect(summary).to_have_count(1, timeout=WAIT_MS)
    expect(summary.locator(".text")).to_have_text("A courier left two parcels at the door; nobody else came.")
    expect(summary.locator(".n")).to_have_text("37 captions")
    expect(summary.locator(".range")).to_have_text("00:00.0–10:00.0")

    page.fill("#question", "What was delivered?")
    page.fill("#ask-minutes", "15")
    page.click("#ask-button")
    answer = page.locator("#answers li").first
    expect(answer).to_have_attribute("data-state", "answered", timeout=WAIT_MS)
    expect(answer.locator(".about")).to_have_text("last 15 min · ")
    expect(answer.locator(".span")).to_contain_text("37 captions")
    ask = [m for m in server.received if m["type"] == "ask"][-1]
    assert ask["since"] == 900 and ask["stream"] == "door" and ask["question"] == "What was delivered?"
    assert "from" not in ask and "to" not in ask

    # Without minutes the ask stays about the live window: no since.
    page.fill("#ask-minutes", "")
    page.fill("#question", "And now?")
    page.click("#ask-button")
    expect(page.locator("#answers li").first).to_have_attribute("data-state", "answered", timeout=WAIT_MS)
    ask = [m for m in server.received if m["type"] == "ask"][-1]
    assert ask["question"] == "And now?" and "since" not in ask
    expect(page.locator("#answers li").first.locator(".span")).to_have_count(0)
    assert_clean(page, record)
