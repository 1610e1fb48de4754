#!/usr/bin/env python3
"""Make a test/demo video from the bundled photos (see :mod:`stream.democlip`).

    python tools/make_sample_video.py out.mp4 --size 640x360 --fps 30 --seconds 20
    python tools/make_sample_video.py out.mp4 --size 1920x1080 --seconds 10 --no-stamp

Tests and the other tools load this script for :mod:`stream.democlip`'s clip builder and stamp
reader, which it re-exports under their own names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stream.democlip import draw_stamp, frames, load_photos, make_video, read_stamp

__all__ = ["draw_stamp", "frames", "load_photos", "main", "make_video", "read_stamp"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x360") from None
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output file (.mp4, .mkv, .ts, ...)")
    parser.add_argument("--size", type=_size, default=(640, 360), help="WIDTHxHEIGHT (default 640x360)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--codec", default="libx264", help="encoder: libx264 (default), mjpeg, mpeg4, ...")
    parser.add_argument("--crf", type=int, default=23, help="libx264 quality (lower is better)")
    parser.add_argument("--preset", default="veryfast", help="libx264 preset")
    parser.add_argument("--gop", type=int, default=None, help="key frame interval in frames (default 2 s)")
    parser.add_argument("--pix-fmt", default=None, help="pixel format (default yuv420p; yuvj420p for mjpeg)")
    parser.add_argument("--x264-params", default="", help="e.g. colormatrix=bt709:fullrange=on")
    parser.add_argument("--no-stamp", dest="stamp", action="store_false", help="no frame counter burnt in")
    parser.add_argument(
        "--photo",
        dest="photos",
        type=Path,
        action="append",
        help="photo to use (repeatable; default the bundled stream/demo/*.jpg)",
    )
    args = parser.parse_args(argv)
    width, height = args.size
    try:
        count = make_video(
            args.out,
            width=width,
            height=height,
            fps=args.fps,
            seconds=args.seconds,
            codec=args.codec,
            crf=args.crf,
            preset=args.preset,
            gop=args.gop,
            stamp=args.stamp,
            photos=args.photos,
            pix_fmt=args.pix_fmt,
            x264_params=args.x264_params,
        )
    except (OSError, ValueError) as exc:
        print(f"make_sample_video: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {count} frames, {width}x{height} @ {args.fps:g} fps, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
