"""The viewer end to end: ``vidnarrate run`` on a sample file with the tiny model (real capture,
inference, gateway and supervisor processes), loaded in a real headless Chromium.

Unlike tests/test_viewer.py (a scripted feed), every caption, thumbnail, status figure and answer here
comes from the real pipeline; the tiny model's text is gibberish by design, so the assertions are
about it appearing, changing and being placed right, not about its words.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import launch_chromium, open_page, save_screenshot
from liverun import LiveRun, collect, of_type, short_run_root, wait_for
from realparts import make_clip

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

WAIT_MS = 60_000  # the tiny model on two shared cores: a caption every few seconds at best
FAST = {"pingIntervalMs": 500, "pongTimeoutMs": 3000, "reconnectBaseMs": 200, "reconnectMaxMs": 1000}


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    clip = make_clip(tmp_path_factory.mktemp("clips") / "street.mp4", size="640x360", fps=25.0, seconds=20.0)
    with short_run_root() as root:
        run = LiveRun(
            [f"street={clip}"], root, extra=["--window", "8", "--stride", "4", "--loop", "--stream-tokens"]
        )
        run.start()
        try:
            yield run
        finally:
            if run.proc is not None and run.proc.poll() is None:
                assert run.stop() == 0, run.log()
            run.kill()


def test_viewer_shows_the_live_pipeline_asks_and_survives_a_gateway_restart(
    live: LiveRun, tmp_path: Path
) -> None:
    screenshots = Path(os.environ.get("VIDNARRATE_SCREENSHOTS", tmp_path))
    assert live.url is not None
    with launch_chromium() as browser:
        page, record = open_page(browser, live.url, init_config=FAST)
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        tab = page.locator('.tab[data-stream="street"]')
        expect(tab.locator(".state")).to_have_text("live", timeout=WAIT_MS)

        # the thumbnail of a real sampled frame loads
        page.wait_for_function("() => document.getElementById('thumb').naturalWidth > 0", timeout=WAIT_MS)
        # captions appear, then the next one replaces the current one (the timeline keeps the old one)
        expect(page.locator("#current")).to_have_attribute("data-kind", "caption", timeout=WAIT_MS)
        first_range = page.locator("#current-range").text_content()
        page.wait_for_function(
            "(r) => document.getElementById('current-range').textContent !== r "
            "&& document.getElementById('current').dataset.kind === 'caption'",
            arg=first_range,
            timeout=WAIT_MS,
        )
        expect(page.locator("#timeline li").first).to_be_visible(timeout=WAIT_MS)
        assert re.search(r"\d\d:\d\d", page.locator("#current-range").text_content() or "")
        expect(page.locator("#model")).to_contain_text("tiny")
        save_screenshot(page, screenshots, "viewer-live-run")

        # an asked question gets its answer in place
        page.locator("#question").fill("What is happening?")
        page.locator("#question").press("Enter")
        expect(page.locator("#answers li").first).to_have_attribute("data-state", "answered", timeout=WAIT_MS)

        # the gateway is killed: the page says so, the supervisor restarts it, the page resumes
        status = of_type(collect(live.ws_url, lambda m: bool(of_type(m, "status")), timeout=15), "status")[-1]
        gateway_pid = status["processes"]["gateway"]["pid"]
        os.kill(gateway_pid, signal.SIGKILL)
        conn = page.locator("#conn")
        expect(conn).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        expect(conn).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        before = page.locator("#current-range").text_content()
        page.wait_for_function(
            "(r) => document.getElementById('current-range').textContent !== r", arg=before, timeout=WAIT_MS
        )
        wait_for(
            lambda: "gateway exited with code" in "".join(live.stderr), 10, "the supervisor's restart log"
        )
        assert record.errors == [], record.errors
        assert record.external() == [], record.external()
        page.context.close()
