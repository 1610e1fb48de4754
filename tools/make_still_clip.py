#!/usr/bin/env python3
"""Make a static-camera clip: one real photo held still, with sensor noise and H.264 artefacts, and
an optional person-sized event in the middle.

    python tools/make_still_clip.py still.mp4 --seconds 120 --event 60:5
    python tools/make_still_clip.py quiet.mp4 --seconds 60 --no-event

What a fixed CCTV camera shows most of the time: nothing moves, yet no two frames are equal (fresh
sensor noise every frame, then lossy compression). The event is a cut-out of another real photo, a
tenth of the width by nearly half the height (a person near the camera), that walks across the
picture for the event's seconds and then is gone. Tests of the unchanged-scene gating
(:mod:`stream.change`) and ``tools/bench_gating.py`` build their clips with :func:`make_still_clip`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from stream.democlip import load_photos

_NOISE_BANK = 24  # distinct noise fields, picked at random per frame (drawing fresh ones is slow)


def _fit(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo cropped to the output's aspect (centred) and resized to it."""
    ph, pw = photo.shape[:2]
    aspect = width / height
    cw, ch = (pw, round(pw / aspect)) if pw / ph < aspect else (round(ph * aspect), ph)
    y0, x0 = (ph - ch) // 2, (pw - cw) // 2
    return cv2.resize(photo[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_AREA)


def make_still_clip(
    out: Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: float = 10.0,
    seconds: float = 60.0,
    event: tuple[float, float] | None = (30.0, 5.0),
    noise: float = 4.0,
    crf: int = 28,
    scene: int = 0,
    walker: float = 1.0,
    seed: int = 0,
) -> int:
    """Encode the clip to ``out``; returns its frame count. ``event``: (start, duration) in seconds of
    the walker, or None for a scene where nothing happens; ``noise``: the sensor noise's standard
    deviation in 8-bit levels; ``scene``: which bundled photo (sorted by name) is the scene;
    ``walker``: the walker's size, 1 for a person near the camera (4.5 % of the picture), 0.5 for one
    farther away (a quarter of that area)."""
    if width % 2 or height % 2:
        raise ValueError(f"size {width}x{height}: width and height must be even (yuv420p)")
    photos = load_photos()
    background = _fit(photos[scene % len(photos)], width, height).astype(np.int16)
    walker_w, walker_h = max(2, round(width / 10 * walker)), max(2, round(height * 0.45 * walker))
    donor = photos[(scene + 1) % len(photos)]
    cutout = cv2.resize(donor[: donor.shape[0] // 2, : donor.shape[1] // 4], (walker_w, walker_h))
    rng = np.random.default_rng(seed)
    bank = rng.normal(0.0, noise, size=(_NOISE_BANK, height, width, 3)).round().astype(np.int16)
    count = max(1, round(seconds * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(max(1, round(2 * fps)))}
        for index in range(count):
            image = background + bank[rng.integers(_NOISE_BANK)]
            t = index / fps
            if event is not None and event[0] <= t < event[0] + event[1]:
                x = round((t - event[0]) / event[1] * (width - walker_w))
                y = height - walker_h - height // 20
                image[y : y + walker_h, x : x + walker_w] = cutout
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return count


def _event(text: str) -> tuple[float, float]:
    try:
        start, duration = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"event {text!r} is not START:SECONDS, e.g. 30:5") from None
    return start, duration


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output file (.mp4, .mkv, ...)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--event", type=_event, default=(30.0, 5.0), help="START:SECONDS of the walker")
    parser.add_argument("--no-event", dest="event", action="store_const", const=None)
    parser.add_argument("--noise", type=float, default=4.0, help="sensor noise, 8-bit levels (sd)")
    parser.add_argument("--crf", type=int, default=28, help="libx264 quality (higher: more artefacts)")
    parser.add_argument("--scene", type=int, default=0, help="which bundled photo is the scene")
    parser.add_argument("--walker", type=float, default=1.0, help="walker size (1: near, 0.5: farther)")
    args = parser.parse_args(argv)
    try:
        count = make_still_clip(
            args.out,
            fps=args.fps,
            seconds=args.seconds,
            event=args.event,
            noise=args.noise,
            crf=args.crf,
            scene=args.scene,
            walker=args.walker,
        )
    except (OSError, ValueError) as exc:
        print(f"make_still_clip: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {count} frames, event {args.event}, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
