"""stream/devices.py: the webcam code path through OpenCV (the screen, which needs an X server, has
its own file: test_screen.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from realparts import load_tool, make_clip

from stream.errors import SourceError, SourceNotFound
from stream.sources import SourceOptions, SourceSpec, open_source

msv = load_tool("make_sample_video")
FPS = 30
SIZE = (320, 180)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s, 320x180, 30 fps, H.264 in mp4, frame index stamped in."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", size="320x180", fps=FPS, seconds=3.0)


def test_webcam_path_through_opencv(clip: Path) -> None:
    """There is no camera on these machines: the one boundary we cannot reach is the V4L2 device
    itself. WebcamSource is driven here with a target OpenCV opens the same way (a file path through
    cv2.VideoCapture(target, CAP_ANY)), so everything after the device (reads, BGR->RGB, downscale,
    timestamps, end of stream) runs for real."""
    spec = SourceSpec("webcam", str(clip), "webcam-test")
    with open_source(spec, SourceOptions(max_side=160)) as source:
        frames = list(source)
    assert not source.finite  # a camera that stops delivering is a drop, not an end
    assert len(frames) == 90
    assert frames[0].image.shape == (90, 160, 3) and frames[0].image.flags.c_contiguous
    assert [msv.read_stamp(f.image, made_width=320) for f in frames] == list(range(90))
    assert np.all(np.diff([f.pts for f in frames]) > 0)
    photos = msv.load_photos()
    expected = cv2.resize(next(msv.frames(photos, *SIZE, FPS, 1)), (160, 90), interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0].image.astype(int) - expected.astype(int)).mean() < 10  # RGB, not BGR


def test_webcam_that_does_not_exist() -> None:
    with pytest.raises(SourceNotFound, match="/dev/video97.*no such device"):
        open_source("/dev/video97")
    with pytest.raises(SourceError, match="webcam:63.*OpenCV cannot open it"):
        open_source("webcam:63")
