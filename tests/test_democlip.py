"""stream/democlip.py: clips made from the packaged photos, and the demo clip's cache (built once,
outside the installation, renamed into place so no run ever opens a half-written clip)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from stream import democlip

CLIP_NAME = f"demo-v{democlip.DEMO_VERSION}.mp4"


def decoded(path: Path) -> list[int]:
    """The stamp of every frame of ``path``."""
    with av.open(str(path)) as container:
        return [democlip.read_stamp(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]


def test_the_photos_are_package_data() -> None:
    photos = democlip.load_photos()
    assert len(photos) == 3
    assert all(p.ndim == 3 and p.shape[2] == 3 and max(p.shape[:2]) == 600 for p in photos)


def test_a_clip_carries_each_frame_index(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    assert democlip.make_video(out, width=320, height=180, fps=10.0, seconds=2.0) == 20
    assert decoded(out) == list(range(20))


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert democlip.cache_dir() == tmp_path / "vidnarrate"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says to ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert democlip.cache_dir() == tmp_path / "home" / ".cache" / "vidnarrate"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert democlip.cache_dir() == tmp_path / "home" / ".cache" / "vidnarrate"


@pytest.mark.slow
def test_the_demo_clip_is_built_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = democlip.demo_clip(tmp_path)
    assert clip == tmp_path / CLIP_NAME
    assert oct(clip.stat().st_mode & 0o777) == oct(0o644)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == democlip.DEMO_SIZE
        assert stream.frames == round(democlip.DEMO_SECONDS * democlip.DEMO_FPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLIP_NAME]

    def no_rebuild(*args: object, **kwargs: object) -> int:
        raise AssertionError("the cached clip was rebuilt")

    monkeypatch.setattr(democlip, "make_video", no_rebuild)
    assert democlip.demo_clip(tmp_path) == clip


def _fake_builder(written: list[Path], clip: Path) -> Callable[..., int]:
    def make_video(out: Path, **kwargs: object) -> int:
        assert not clip.exists(), "the clip's final name appeared before it was complete"
        assert out.parent == clip.parent and out != clip
        out.write_bytes(b"a complete clip")
        written.append(out)
        return 1

    return make_video


def test_a_clip_of_another_version_is_replaced_and_dead_partials_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = tmp_path / CLIP_NAME
    old = tmp_path / f"demo-v{democlip.DEMO_VERSION - 1}.mp4"
    old.write_bytes(b"an older builder's clip")
    dead = tmp_path / ".demo-dead.partial.mp4"
    dead.write_bytes(b"half")
    long_ago = time.time() - 3600
    os.utime(dead, (long_ago, long_ago))
    young = tmp_path / ".demo-busy.partial.mp4"  # another run building right now
    young.write_bytes(b"half")
    written: list[Path] = []
    monkeypatch.setattr(democlip, "make_video", _fake_builder(written, clip))

    assert democlip.demo_clip(tmp_path) == clip
    assert clip.read_bytes() == b"a complete clip"
    assert len(written) == 1 and not written[0].exists()  # renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CLIP_NAME, young.name])


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path, **kwargs: object) -> int:
        out.write_bytes(b"half a clip")
        raise ValueError("encoder failed")

    monkeypatch.setattr(democlip, "make_video", broken)
    with pytest.raises(ValueError, match="encoder failed"):
        democlip.demo_clip(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(
        democlip.VidnarrateError, match=r"demo source: cannot write its clip to .*XDG_CACHE_HOME"
    ):
        democlip.demo_clip(blocker / "vidnarrate")


@pytest.mark.slow
@pytest.mark.integration
def test_two_runs_starting_at_once_both_get_a_whole_clip(tmp_path: Path) -> None:
    """Both processes build (neither finds a clip), and each decodes every frame of what it got."""
    script = (
        "import sys, av; from pathlib import Path; from stream import democlip; "
        "democlip.DEMO_SECONDS = 2.0; "
        "clip = democlip.demo_clip(Path(sys.argv[1])); "
        "container = av.open(str(clip)); print(clip, sum(1 for _ in container.decode(video=0)))"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0].split() for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    frames = round(2.0 * democlip.DEMO_FPS)
    assert outputs == [[str(tmp_path / CLIP_NAME), str(frames)]] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLIP_NAME]
