"""stream/sourcespec.py: what a user's source string means, what is refused and how it is said,
passwords kept out of labels and errors, and the checks on SourceOptions."""

from __future__ import annotations

import pytest

from stream.errors import ConfigError, SourceError, UnsupportedSource
from stream.sourcespec import SourceOptions, parse_source, redact


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("clip.mp4", "file", "clip.mp4"),
        ("/data/cam 1.mkv", "file", "/data/cam 1.mkv"),
        ("dir/with:colon.ts", "file", "dir/with:colon.ts"),
        ("file:///data/x.mp4", "file", "/data/x.mp4"),
        ("rtsp://10.0.0.2:554/stream1", "network", "rtsp://10.0.0.2:554/stream1"),
        ("RTSPS://cam.local/live", "network", "RTSPS://cam.local/live"),
        ("http://cam.local/video.mjpg", "network", "http://cam.local/video.mjpg"),
        ("https://example.org/live/index.m3u8", "network", "https://example.org/live/index.m3u8"),
        ("webcam", "webcam", "0"),
        ("webcam:0", "webcam", "0"),
        ("webcam:02", "webcam", "2"),
        ("webcam:/dev/video3", "webcam", "/dev/video3"),
        ("/dev/video0", "webcam", "/dev/video0"),
        ("screen", "screen", ""),
        ("screen::99", "screen", ":99"),
        ("screen:99", "screen", ":99"),
        ("screen::1.0", "screen", ":1.0"),
        ("  screen::5 ", "screen", ":5"),
    ],
)
def test_parse_source(text: str, kind: str, target: str) -> None:
    spec = parse_source(text)
    assert (spec.kind, spec.target) == (kind, target)
    assert spec.live == (kind != "file")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty source"),
        ("   ", "empty source"),
        ("ftp://host/x.mp4", "unsupported scheme ftp://"),
        ("udp://239.0.0.1:1234", "unsupported scheme udp://"),
        ("rtsp:///path", "without a host"),
        ("webcam:front", "not a number"),
        ("screen:nope", "not an X display"),
        ("file://", "without a path"),
    ],
)
def test_parse_source_rejects_with_a_clear_message(text: str, reason: str) -> None:
    with pytest.raises(UnsupportedSource) as info:
        parse_source(text)
    message = str(info.value)
    assert reason in message
    if text.strip():
        assert repr(text) in message or text in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, SourceError)


def test_unknown_scheme_lists_what_is_accepted() -> None:
    message = str(pytest.raises(UnsupportedSource, parse_source, "gopher://x/y").value)
    for accepted in ("rtsp://", "rtsps://", "http://", "https://", "webcam:N", "/dev/videoN", "screen"):
        assert accepted in message


def test_passwords_never_appear_in_labels_or_errors() -> None:
    assert redact("rtsp://admin:hunter2@10.0.0.2:554/s") == "rtsp://admin:***@10.0.0.2:554/s"
    assert redact("rtsp://10.0.0.2/s") == "rtsp://10.0.0.2/s"
    assert "hunter2" not in parse_source("rtsp://admin:hunter2@cam/s").label
    message = str(pytest.raises(UnsupportedSource, parse_source, "ftp://u:hunter2@h/x").value)
    assert "hunter2" not in message


def test_source_options_are_checked_by_the_config_validator() -> None:
    SourceOptions(max_side=0)  # no limit
    for bad, message in (
        ({"max_side": -1}, "source.max_side: -1 is not 0 (no limit) or at least 16"),
        ({"max_side": 8}, "source.max_side: 8 is not 0 (no limit) or at least 16"),
        ({"read_timeout": 0}, "source.read_timeout: 0 is out of range (0, inf)"),
        ({"open_timeout": float("nan")}, "source.open_timeout: nan is out of range (0, inf)"),
        ({"fps_hint": -1.0}, "source.fps_hint: -1.0 is out of range (0, inf)"),
        ({"rtsp_transport": "http"}, "source.rtsp_transport: 'http' is not one of tcp, udp"),
    ):
        with pytest.raises(ConfigError) as info:
            SourceOptions(**bad)  # type: ignore[arg-type]
        assert str(info.value) == message
