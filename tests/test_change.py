"""stream/change.py: the change measure on real photos, with real sensor-like noise and real codecs
(JPEG through OpenCV, H.264 through PyAV's libx264)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from realparts import load_tool

from stream.captioning import CaptionSettings
from stream.change import NOISE_FLOOR, SIGNATURE_SIZE, changed_share, signature, window_change
from stream.democlip import load_photos

THRESHOLD = CaptionSettings(prompt="x").unchanged_threshold  # the default users get
still = load_tool("make_still_clip")


def scene(width: int = 1280, height: int = 720) -> np.ndarray:
    return cv2.resize(load_photos()[0], (width, height), interpolation=cv2.INTER_AREA)


def noisy(image: np.ndarray, rng: np.random.Generator, sd: float) -> np.ndarray:
    return np.clip(image + rng.normal(0, sd, image.shape), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.asarray(cv2.imdecode(data, cv2.IMREAD_UNCHANGED))


def with_person(image: np.ndarray, x: float) -> np.ndarray:
    """A person-sized patch (a tenth of the width, 45 % of the height) of another real photo at ``x``."""
    h, w = image.shape[:2]
    pw, ph = w // 10, h * 9 // 20
    donor = cv2.resize(load_photos()[1], (pw, ph), interpolation=cv2.INTER_AREA)
    out = image.copy()
    left = round(x * (w - pw))
    out[h - ph - h // 20 : h - h // 20, left : left + pw] = donor
    return out


def test_signature_is_a_small_grayscale_thumbnail_of_any_frame() -> None:
    for width, height in ((1280, 720), (640, 480), (333, 1001)):
        sig = signature(scene(width, height))
        assert sig.shape == (SIGNATURE_SIZE[1], SIGNATURE_SIZE[0]) and sig.dtype == np.uint8
    with pytest.raises(ValueError, match="RGB uint8"):
        signature(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        signature(np.zeros((10, 10, 3), np.float32))


def test_sensor_noise_and_jpeg_artefacts_stay_below_the_threshold() -> None:
    rng = np.random.default_rng(1)
    base = scene()
    frames = [jpeg(noisy(base, rng, sd), quality) for sd in (4, 8, 12) for quality in (90, 50, 25)]
    sigs = [signature(f) for f in frames]
    # the raw frames do differ everywhere: the measure is what makes them equal
    assert np.mean(np.abs(frames[0].astype(int) - frames[-1].astype(int)) > NOISE_FLOOR) > 10 * THRESHOLD
    assert window_change(sigs, sigs) < THRESHOLD / 2


def test_h264_of_a_still_scene_stays_below_and_a_person_walking_in_is_above(tmp_path: Path) -> None:
    clip = tmp_path / "still.mp4"
    still.make_still_clip(clip, seconds=12, fps=5, event=(6.0, 3.0), noise=8.0, crf=35)
    quiet, event = [], []
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 5 == 0:
                t = index / 5
                (event if 6.0 <= t < 9.0 else quiet).append(signature(frame.to_ndarray(format="rgb24")))
    assert len(quiet) == 9 and len(event) == 3
    assert window_change(quiet, quiet) < THRESHOLD / 2
    for frame in event:
        assert window_change([frame], quiet) > 2 * THRESHOLD


def test_a_person_sized_change_is_above_the_threshold_wherever_it_is() -> None:
    rng = np.random.default_rng(2)
    base = scene()
    empty = signature(jpeg(noisy(base, rng, 6), 60))
    for x in (0.0, 0.3, 0.7, 1.0):
        person = signature(jpeg(noisy(with_person(base, x), rng, 6), 60))
        assert changed_share(empty, person) > 2 * THRESHOLD


def test_a_window_is_as_changed_as_its_most_changed_frame_against_any_reference_frame() -> None:
    rng = np.random.default_rng(3)
    base = scene(640, 360)
    empty = [signature(noisy(base, rng, 4)) for _ in range(4)]
    person = signature(with_person(base, 0.5))
    assert window_change(empty[:2], empty[2:]) < THRESHOLD
    # one frame with the person, in the window or in the reference, makes the pair changed
    assert window_change([*empty[:2], person], empty[2:]) > THRESHOLD
    assert window_change(empty[:2], [*empty[2:], person]) > THRESHOLD
    assert window_change([], empty) == 1.0 and window_change(empty, []) == 1.0
    # a global brightness step (lights on) is a change of the whole picture
    brighter = signature(np.clip(base.astype(int) + 40, 0, 255).astype(np.uint8))
    assert window_change([brighter], empty) > 0.5
