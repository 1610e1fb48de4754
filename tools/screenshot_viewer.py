#!/usr/bin/env python3
"""Screenshot the web viewer in Debian's headless Chromium (the picture in the README).

    python tools/screenshot_viewer.py                       # demo run -> docs/viewer.png
    python tools/screenshot_viewer.py --phone docs/viewer-phone.png
    python tools/screenshot_viewer.py --url 'http://127.0.0.1:8765/?token=...' --out shot.png

Demo mode (default) starts a real gateway process and feeds it through the real zmq bus with the test
suite's feed (tests/browser.py), which plays the capture and inference processes: the thumbnails are
real frames decoded from a sample clip of the committed photos (tools/make_sample_video.py), but the
caption and answer texts are written here, because no real model runs in this tool (the tiny test
model writes gibberish by design). ``--url`` instead photographs a running viewer, e.g. the URL that
``vidnarrate run`` prints, once it shows a caption.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import (  # noqa: E402  (tests/ is a folder of modules, not a package)
    GatewayProcess,
    StreamPlay,
    ViewerFeed,
    launch_chromium,
    open_page,
)

from stream import messages  # noqa: E402
from stream.bus import RunPaths  # noqa: E402
from stream.config import Config  # noqa: E402

CLIP_SECONDS = 24
STRIDE = 4.0
WINDOW = 16.0

# What a good model would say about each window of the demo clip (city railway 0-4 s, dogs in a park
# 4-8 s, dogs under a tree 8-12 s, then the same again). Written by hand: see the module docstring.
PARK_CAPTIONS = [
    "An elevated view over a city: a green-and-white commuter train runs along a rail cutting between "
    "two roads and passes under a concrete bridge; high-rise apartment blocks line the right side.",
    "The view cuts from the city railway to a park: two white, fluffy dogs stand side by side on grass "
    "covered with dry leaves; the dog on the left has its tongue out.",
    "The two white dogs now stand on the exposed roots of a large tree, both facing the camera; brown "
    "leaves cover the ground around them.",
    "Back over the city: the train has moved further along the cutting, cars are parked along the road "
    "on the left and a few cars drive on the road to the right.",
    "The park again: the two white dogs stand close to a tree trunk on the leaf-strewn grass, the left "
    "one panting with its tongue out, the right one standing still and looking ahead.",
    "Under a large tree with hanging aerial roots, two white Samoyed-like dogs stand on a mound of roots "
    "and dry leaves, side by side, looking at the camera with their mouths open.",
]
STATION_CAPTIONS = [
    "A commuter train waits in a rail cutting below a road bridge; traffic is light on both roads.",
    "The train leaves towards the bottom of the picture; a white car turns at the junction on the right.",
]
# Shown where the viewer names the model: these captions are not a model's output.
DEMO_MODEL = "demo run, scripted captions"
QUESTION = "How many dogs are there, and what are they doing?"
ANSWER = (
    "Two white dogs. They stand next to each other on the tree roots, looking at the camera with "
    "their mouths open; neither of them is moving much."
)


def _load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clip_thumbnails(workdir: Path, side: int) -> dict[int, bytes]:
    """Encode the demo clip (H.264), decode it again and shrink the frame at each whole second to a
    JPEG thumbnail with ``side`` pixels on its longest side, as the inference process does."""
    import av
    from PIL import Image

    clip = workdir / "demo.mp4"
    _load_tool("make_sample_video").make_video(
        clip, width=640, height=360, fps=30.0, seconds=CLIP_SECONDS, stamp=False
    )
    thumbs: dict[int, bytes] = {}
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            second = int(float(frame.time or 0.0) + 1e-6)  # the first frame of each second
            if second in thumbs:
                continue
            image = frame.to_image()
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            thumbs[second] = buffer.getvalue()
    return thumbs


def demo(out: Path, phone: Path | None, size: tuple[int, int]) -> None:
    side = Config().captions.thumbnail_side
    with tempfile.TemporaryDirectory(prefix="vidnarrate-shot-") as tmp:
        workdir = Path(tmp)
        thumbs = clip_thumbnails(workdir, side)
        paths = RunPaths.create(root=workdir)
        streams = [
            StreamPlay("park", fps=30.0, thumbnails=[thumbs[CLIP_SECONDS - 1]]),
            StreamPlay("station", fps=30.0, thumbnails=[thumbs[1]]),
        ]
        feed = ViewerFeed(
            paths, streams, period=0.5, answer=lambda stream, question: ANSWER, model=DEMO_MODEL
        )
        feed.started_wall = time.time() - CLIP_SECONDS  # stream time of the thumbnails: end of the clip
        with feed:
            gateway = GatewayProcess(
                feed.endpoints(), feed.asks_endpoint, run_dir=paths.run_dir, token=secrets.token_urlsafe(16)
            ).start()
            try:
                gateway.wait_for_replay(_publish_history(feed))
                with launch_chromium() as browser:
                    _shoot(browser, gateway.url, out, size, ask=True)
                    if phone is not None:
                        _shoot(browser, gateway.url, phone, (390, 844), ask=True)
            finally:
                gateway.stop()


def _publish_history(feed: ViewerFeed) -> int:
    """Captions every STRIDE seconds of the clip, as if the run had been going for CLIP_SECONDS;
    returns how many."""
    base = feed.started_wall
    for stream, texts, first_end in (
        ("park", PARK_CAPTIONS, STRIDE),
        ("station", STATION_CAPTIONS, CLIP_SECONDS - STRIDE),
    ):
        for seq, text in enumerate(texts):
            t_end = first_end + seq * STRIDE
            t_start = max(0.0, t_end - WINDOW)
            feed.publish(
                "inference",
                messages.Caption(
                    stream=stream,
                    seq=seq,
                    t_start=t_start,
                    t_end=t_end,
                    frame_times=[float(t) for t in range(int(t_start), int(t_end))],
                    wall_start=base + t_start,
                    wall_end=base + t_end + 0.9,
                    text=text,
                    model=feed.model,
                    latency_ms=900.0,
                ),
            )
    return len(PARK_CAPTIONS) + len(STATION_CAPTIONS)


def _shoot(browser: Any, url: str, out: Path, size: tuple[int, int], *, ask: bool) -> None:
    from playwright.sync_api import expect

    page, record = open_page(browser, url, viewport={"width": size[0], "height": size[1]})
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=30_000)
    expect(page.locator("#current")).to_have_attribute("data-kind", "caption", timeout=60_000)
    page.wait_for_function("() => document.getElementById('thumb').naturalWidth > 0", timeout=30_000)
    if ask:
        page.fill("#question", QUESTION)
        page.click("#ask-button")
        expect(page.locator("#answers li").first).to_have_attribute("data-state", "answered", timeout=30_000)
        page.locator("#question").blur()
    page.wait_for_timeout(300)
    external = record.external()
    if external or record.errors:
        raise SystemExit(
            f"the viewer misbehaved: external requests {external}, script errors {record.errors}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    page.context.close()
    print(f"wrote {out} ({size[0]}x{size[1]})")


def url_mode(url: str, out: Path, size: tuple[int, int]) -> None:
    with launch_chromium() as browser:
        _shoot(browser, url, out, size, ask=False)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 1280x800") from None
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "viewer.png", help="desktop screenshot")
    parser.add_argument("--phone", type=Path, help="also a phone-sized (390x844) screenshot here")
    parser.add_argument("--size", type=_size, default=(1280, 800), help="desktop viewport, WxH")
    parser.add_argument("--url", help="photograph this running viewer instead of the demo run")
    args = parser.parse_args(argv)
    if args.url:
        url_mode(args.url, args.out, args.size)
    else:
        demo(args.out, args.phone, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
