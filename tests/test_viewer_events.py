"""Alert events in the viewer, in a real headless Chromium against a real gateway process on the real
zmq bus: markers on the timeline, the list of open and ended events with their thumbnails, and the
events-only view.

The feed (tests/browser.py) publishes the events the inference process publishes for an alert rule:
one ``event_id`` from ``start`` through ``update`` to ``end``, the start carrying a JPEG thumbnail
(docs/protocol.md's event fields).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
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

pytestmark = pytest.mark.integration

WAIT_MS = 15_000  # generous: two shared CPU cores


@dataclass(frozen=True, kw_only=True)
class StartEvent(messages.Event):
    """An event with its optional ``thumbnail`` (base64 JPEG, on ``start``), as the protocol gives it."""

    TYPE: ClassVar[str] = "event"
    thumbnail: str | None = None


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerFeed]:
    paths = RunPaths.create(root=tmp_path_factory.mktemp("run"))
    streams = [StreamPlay("cam0", thumbnails=photo_thumbnails()), StreamPlay("door")]
    with ViewerFeed(paths, streams, period=0.4) as running:
        yield running
    paths.remove()


@pytest.fixture(scope="module")
def gateway(feed: ViewerFeed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        feed.endpoints(), feed.asks_endpoint, run_dir=feed.paths.run_dir, status_interval=0.5
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("VIDNARRATE_SCREENSHOTS")
    return Path(configured) if configured else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as chromium:
        yield chromium


def event(
    feed: ViewerFeed, stream: str, event_id: str, state: str, text: str, **extra: Any
) -> messages.Event:
    now = time.time()
    t = feed.stream_time()
    message = StartEvent(
        stream=stream,
        rule="person_at_door",
        event_id=event_id,
        state=messages.EventState(state),
        t_start=round(t - 4.0, 3),
        t_end=round(t, 3),
        wall_start=now - 4.0,
        wall_end=now,
        score=0.91,
        text=text,
        **extra,
    )
    feed.publish("inference", message)
    return message


def last_subscribe(
    page: Any, sent: list[dict[str, Any]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The page's latest subscribe once it satisfies ``done`` (frames reach the test asynchronously)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        subscribes = [m for m in sent if m["type"] == "subscribe"]
        if subscribes and done(subscribes[-1]):
            return subscribes[-1]
        assert time.monotonic() < deadline, f"no such subscribe sent: {subscribes}"
        page.wait_for_timeout(50)  # lets Playwright deliver the page's events


def test_an_event_is_one_marker_and_one_list_line_from_start_to_end_with_its_thumbnail(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed
) -> None:
    page, record = open_page(browser, gateway.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    expect(page.locator('.tab[data-stream="cam0"]')).to_have_attribute(
        "aria-selected", "true", timeout=WAIT_MS
    )
    jpeg = base64.b64encode(photo_thumbnails()[1]).decode()
    eid = f"e-{time.time_ns()}"
    event(feed, "cam0", eid, "start", "a person stands at the door", thumbnail=jpeg)

    item = page.locator(f'#events li[data-event-id="{eid}"]')
    expect(item).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect(item.locator(".text")).to_have_text("a person stands at the door")
    expect(item.locator(".rule")).to_have_text("person_at_door")
    expect(item.locator(".event-thumb")).to_be_visible()
    assert page.eval_on_selector(f'#events li[data-event-id="{eid}"] img', "i => i.naturalWidth") == 320
    marker = page.locator(f'#timeline li.marker[data-event-id="{eid}"]')
    expect(marker).to_have_attribute("data-state", "open")
    expect(page.locator('.tab[data-stream="cam0"] .tab-events')).to_have_text("● 1 open")

    event(feed, "cam0", eid, "update", "the person rings the bell")
    expect(item.locator(".text")).to_have_text("the person rings the bell", timeout=WAIT_MS)
    event(feed, "cam0", eid, "end", "the person rings the bell")
    expect(item).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    expect(marker).to_have_attribute("data-state", "ended")
    expect(marker.locator(".event-state")).to_have_text("ended")
    expect(page.locator('.tab[data-stream="cam0"] .tab-events')).to_be_hidden()
    # One event, one line and one marker, however many messages it took; its thumbnail kept.
    expect(page.locator(f'#events li[data-event-id="{eid}"]')).to_have_count(1)
    expect(page.locator(f'#timeline li[data-event-id="{eid}"]')).to_have_count(1)
    expect(item.locator(".event-thumb")).to_be_visible()
    assert record.errors == [] and record.external() == []
    page.context.close()


def test_the_events_only_view_subscribes_to_events_and_lists_every_streams(
    browser: Any, gateway: GatewayProcess, feed: ViewerFeed, screenshots: Path
) -> None:
    page, record = open_page(browser)
    sent: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    page.goto(gateway.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    expect(page.locator('.tab[data-stream="door"]')).to_be_visible(timeout=WAIT_MS)
    tag = time.time_ns()
    jpeg = base64.b64encode(photo_thumbnails()[2]).decode()
    event(feed, "door", f"d-{tag}", "start", "someone at the door", thumbnail=jpeg)
    event(feed, "cam0", f"c-{tag}", "start", "someone on the street")
    event(feed, "cam0", f"c-{tag}", "end", "someone on the street")
    expect(page.locator(f'#timeline li[data-event-id="c-{tag}"]')).to_have_count(1, timeout=WAIT_MS)

    page.check("#events-only")
    subscribe = last_subscribe(page, sent, lambda m: "types" in m)
    assert subscribe["types"] == ["event", "status"] and subscribe["replay"] == 0
    expect(page.locator("#timeline")).to_be_hidden()
    expect(page.locator("#current")).to_be_hidden()
    listed = page.locator("#events li")
    # Both streams' events, the open one first.
    expect(page.locator(f'#events li[data-event-id="d-{tag}"]')).to_have_attribute("data-state", "open")
    expect(page.locator(f'#events li[data-event-id="c-{tag}"]')).to_have_attribute("data-state", "ended")
    assert listed.first.get_attribute("data-state") == "open"
    expect(page.locator(f'#events li[data-event-id="d-{tag}"] .r-stream')).to_have_text("door")
    save_screenshot(page, screenshots, "viewer-events")

    page.uncheck("#events-only")
    subscribe = last_subscribe(page, sent, lambda m: "types" not in m)
    assert "types" not in subscribe and subscribe["replay"] == 20
    expect(page.locator("#timeline")).to_be_visible()
    assert record.errors == [] and record.external() == []
    page.context.close()
