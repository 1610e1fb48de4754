"""Replay after a restart, end to end: ``vidnarrate run`` twice on the same ``--store`` (real capture,
inference with the tiny model, recorder and gateway processes), the second run's viewer in a real
headless Chromium showing the first run's last captions marked as from an earlier run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import launch_chromium, open_page
from liverun import LiveRun, short_run_root, wait_for
from realparts import make_clip

from stream.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

WAIT_MS = 60_000  # the tiny model on two shared cores


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def stored_captions(path: Path) -> list[tuple[str, str]]:
    """(run id, text) of every stored caption of the stream, oldest first."""
    if not path.exists():
        return []
    with Store.open(path, readonly=True) as store:
        return [(row.run_id, row.text) for row in store.history("street", limit=None)]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_clip(tmp_path / "street.mp4", size="640x360", fps=25.0, seconds=20.0)


@pytest.fixture
def run_root() -> Iterator[Path]:
    with short_run_root() as root:
        yield root


def test_a_viewer_of_the_next_run_sees_the_last_runs_captions_marked_earlier(
    clip: Path, run_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "vidnarrate.db"
    extra = ["--store", str(store), "--window", "8", "--stride", "4", "--loop"]
    first = LiveRun([f"street={clip}"], run_root, extra=extra).start()
    try:
        wait_for(lambda: len(stored_captions(store)) >= 2, 120, "two captions of the first run in the store")
        assert first.stop() == 0, first.log()
    finally:
        first.kill()
    earlier = stored_captions(store)
    assert len({run for run, _ in earlier}) == 1

    second = LiveRun([f"street={clip}"], run_root, extra=extra).start()
    try:
        assert second.url is not None
        with launch_chromium() as browser:
            page, record = open_page(browser, second.url)
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            marked = page.locator("#timeline li.earlier, #current[data-kind='earlier']")
            expect(marked.first).to_be_visible(timeout=WAIT_MS)
            # Every caption shown as from an earlier run is one the first run stored.
            shown = page.locator("#timeline li.earlier .text").all_text_contents()
            if page.locator("#current").get_attribute("data-kind") == "earlier":
                shown.append(page.locator("#current-text").text_content() or "")
            assert shown and set(shown) <= {text for _, text in earlier}
            # The second run's own captions arrive live, unmarked, and push the earlier ones down.
            expect(page.locator("#current")).to_have_attribute("data-kind", "caption", timeout=WAIT_MS)
            expect(page.locator("#timeline li.earlier .earlier-tag").first).to_have_text("earlier run")
            assert record.errors == []
            assert record.external() == []
        assert second.stop() == 0, second.log()
    finally:
        second.kill()
