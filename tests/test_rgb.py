"""stream/rgb.py: the downscale and rotation helpers, and libswscale's direct conversion into a
caller's array: PyAV's exact pixels, never a byte past the target, PyAV's own conversion where they
would differ. Clips are real H.264/MJPEG files made from the committed photos."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from realparts import make_clip

from stream.rgb import RGB_OVERRUN_BYTES, DirectRGB, padded_rgb, resize, rotate, scaled_size
from stream.sources import SourceOptions, VideoFrame, open_source

FPS = 30


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def clip(clips: Path) -> Path:
    """3 s, 320x180, 30 fps, H.264 in mp4, frame index stamped in."""
    return make_clip(clips / "clip.mp4", size="320x180", fps=FPS, seconds=3.0)


def read_all(path: Path, **options: object) -> list[VideoFrame]:
    with open_source(str(path), SourceOptions(**options)) as source:  # type: ignore[arg-type]
        return list(source)


# -- pixel helpers -------------------------------------------------------------------------------------
def test_scaled_size_keeps_aspect_and_limits_the_long_side() -> None:
    assert scaled_size(1920, 1080, 1344) == (1344, 756)
    assert scaled_size(1080, 1920, 1344) == (756, 1344)
    assert scaled_size(640, 360, 1344) == (640, 360)
    assert scaled_size(4000, 3000, 0) == (4000, 3000)
    assert scaled_size(5000, 10, 100) == (100, 1)


def test_resize_and_rotate() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = (255, 0, 0)
    small = resize(image, (50, 25))
    assert small.shape == (25, 50, 3) and small.flags.c_contiguous
    assert small[:, :20, 0].min() == 255 and small[:, 30:, 0].max() == 0
    assert resize(image, (200, 100)) is image
    tiny = resize(image, (20, 10))  # factor < 1/2: area averaging
    assert tiny[:, :9, 0].min() == 255
    # FFmpeg's display rotation is counterclockwise: +90 turns the left (red) half to the bottom.
    turned = rotate(image, 90)
    assert turned.shape == (200, 100, 3) and turned.flags.c_contiguous
    assert turned[150:, :, 0].min() == 255 and turned[:50, :, 0].max() == 0
    assert rotate(image, 0) is image
    assert rotate(image, -180)[:, 150:, 0].min() == 255


# -- direct RGB conversion (libswscale into the caller's array) ----------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs", "pix_fmt", "colorspace", "color_range"),
    [
        ("plain.mp4", {}, "yuv420p", 2, 0),  # untagged: BT.601, limited range
        ("bt709.mp4", {"x264_params": "colorprim=bt709:transfer=bt709:colormatrix=bt709"}, "yuv420p", 1, 1),
        ("full.mp4", {"x264_params": "fullrange=on:colormatrix=bt709"}, "yuvj420p", 1, 2),
        ("444.mp4", {"pix_fmt": "yuv444p"}, "yuv444p", 2, 0),
        ("422.mp4", {"pix_fmt": "yuv422p"}, "yuv422p", 2, 0),
        ("mjpeg.avi", {"codec": "mjpeg"}, "yuvj420p", None, 2),
    ],
)
def test_direct_rgb_gives_exactly_pyavs_pixels(
    clips: Path, name: str, kwargs: dict[str, str], pix_fmt: str, colorspace: int | None, color_range: int
) -> None:
    clip = make_clip(clips / name, size="320x180", fps=FPS, seconds=0.2, **kwargs)
    direct = DirectRGB(name)
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            assert frame.format.name == pix_fmt and int(frame.color_range) == color_range
            assert colorspace is None or int(frame.colorspace) == colorspace
            out = padded_rgb(frame.height, frame.width)
            assert direct.convert(frame, out, RGB_OVERRUN_BYTES)
            assert np.array_equal(out, frame.to_ndarray(format="rgb24"))
    assert list(direct._checked.values()) == [True]  # verified once, then used without PyAV


def test_direct_rgb_falls_back_to_pyav_when_it_differs(clips: Path) -> None:
    """An odd-width frame: swscale's unaligned path differs from PyAV's (aligned) output in the last
    bits, the first-frame check notices, and PyAV's conversion is used from then on."""
    clip = make_clip(clips / "odd.mp4", size="322x182", fps=FPS, seconds=0.2)
    frames = read_all(clip, realtime=False)
    with av.open(str(clip)) as container:
        expected = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == len(expected) == 6
    assert all(np.array_equal(f.image, e) for f, e in zip(frames, expected, strict=True))


@pytest.mark.parametrize("size", ["360x200", "1000x64", "1080x32"])  # widths not a multiple of 16
def test_conversion_never_writes_past_its_target(clips: Path, size: str) -> None:
    """libswscale's vector stores overrun the last row at such widths (42 bytes at 360 px): into
    padding when the target has it (``fill_padded``, ring slots), never past a bare target."""
    clip = make_clip(clips / f"w{size}.mp4", size=size, fps=FPS, seconds=0.2)
    with av.open(str(clip)) as container:
        expected = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    canary = 4 * RGB_OVERRUN_BYTES
    with open_source(str(clip), SourceOptions(realtime=False)) as source:
        for index, pending in enumerate(source.pending()):
            frame_bytes = pending.height * pending.width * 3
            memory = np.full(frame_bytes + canary, 0xA5, np.uint8)
            bare = memory[:frame_bytes].reshape(pending.height, pending.width, 3)
            pending.fill(bare)
            assert np.array_equal(bare, expected[index])
            assert (memory[frame_bytes:] == 0xA5).all(), "fill wrote past the end of its target"
            memory[:] = 0xA5
            assert pending.fill_padded is not None
            pending.fill_padded(bare)
            assert np.array_equal(bare, expected[index])
            assert (memory[frame_bytes + RGB_OVERRUN_BYTES :] == 0xA5).all()
    assert index == len(expected) - 1


def test_direct_rgb_needs_a_padded_target(clip: Path) -> None:
    direct = DirectRGB("pad")
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0))
    out = padded_rgb(frame.height, frame.width)
    assert not direct.convert(frame, out, RGB_OVERRUN_BYTES - 1)
    assert direct.convert(frame, out, RGB_OVERRUN_BYTES)


def test_pending_frames_fill_any_target(clip: Path) -> None:
    """What capture does: convert straight into a (ring slot) array; same pixels as iterating."""
    with open_source(str(clip), SourceOptions(realtime=False, max_side=160)) as source:
        slots = []
        for pending in source.pending():
            assert (pending.height, pending.width) == (90, 160)
            slot = np.zeros((pending.height, pending.width, 3), np.uint8)
            pending.fill(slot)
            slots.append(slot)
    frames = read_all(clip, realtime=False, max_side=160)
    assert len(slots) == len(frames) == 90
    assert all(np.array_equal(s, f.image) for s, f in zip(slots, frames, strict=True))
