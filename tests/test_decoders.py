"""stream/decoders.py: real decoding of real files (clips made from the committed photos) and over
real local HTTP servers (a remote file, MJPEG, HLS), through :func:`stream.sources.open_source`; and
every open or read error in one line that names the source once and the reason in words, from real
inputs (a text file, an empty file, an audio-only file, a refused port, HTTP servers answering 4xx/5xx).

RTSP has its own file (test_rtsp.py).
"""

from __future__ import annotations

import errno
import fractions
import http.server
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from realparts import load_tool, make_clip

from stream.decoders import ffmpeg_reason
from stream.errors import SourceError, SourceNotFound, SourceTimeout, UnsupportedSource
from stream.sources import SourceOptions, SourceSpec, open_source

msv = load_tool("make_sample_video")
FPS = 30
SIZE = (320, 180)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def clip(clips: Path) -> Path:
    """3 s, 320x180, 30 fps, H.264 in mp4, frame index stamped in."""
    return make_clip(clips / "clip.mp4", size="320x180", fps=FPS, seconds=3.0)


def read_all(source_text: str | Path | SourceSpec, **options: object) -> tuple[list, object]:
    spec = source_text if isinstance(source_text, SourceSpec) else str(source_text)
    with open_source(spec, SourceOptions(**options)) as source:  # type: ignore[arg-type]
        frames = list(source)
    return frames, source


# -- real files ----------------------------------------------------------------------------------------
def test_file_frames_are_rgb_in_order_with_pts(clip: Path) -> None:
    frames, source = read_all(clip, realtime=False)
    assert len(frames) == 90
    assert source.decode_errors == 0 and source.finite
    photos = msv.load_photos()
    expected = list(msv.frames(photos, *SIZE, FPS, 90))
    for index, frame in enumerate(frames):
        image = frame.image
        assert image.dtype == np.uint8 and image.shape == (180, 320, 3) and image.flags.c_contiguous
        assert msv.read_stamp(image) == index
        assert frame.pts == pytest.approx(index / FPS, abs=1e-3)
    assert np.all(np.diff([f.wall for f in frames]) >= 0)
    # Channel order: the decoded frame matches the RGB picture that was encoded (BGR would not).
    diff = np.abs(frames[45].image.astype(int) - expected[45].astype(int)).mean()
    swapped = np.abs(frames[45].image[..., ::-1].astype(int) - expected[45].astype(int)).mean()
    assert diff < 8 < swapped


def test_max_side_downscales_on_capture(clips: Path) -> None:
    clip = make_clip(clips / "wide.mp4", size="640x360", fps=FPS, seconds=1.0)
    frames, _ = read_all(clip, realtime=False, max_side=320)
    assert [f.image.shape for f in frames[:1]] == [(180, 320, 3)]
    assert [msv.read_stamp(f.image, made_width=640) for f in frames] == list(range(30))
    full, _ = read_all(clip, realtime=False, max_side=0)
    assert full[0].image.shape == (360, 640, 3)


def test_real_time_pacing(clip: Path) -> None:
    started = time.monotonic()
    frames, _ = read_all(clip, realtime=True, max_side=160)
    paced = time.monotonic() - started
    started = time.monotonic()
    read_all(clip, realtime=False, max_side=160)
    fast = time.monotonic() - started
    assert len(frames) == 90
    assert 2.8 < paced < 4.5, paced  # a 3-s clip (last frame at 2.967 s) plays in about 3 s
    assert fast < paced / 2, (fast, paced)
    # Frames are released at their pts: wall-clock spacing follows the timeline.
    walls = np.array([f.wall for f in frames])
    pts = np.array([f.pts for f in frames])
    assert np.abs((walls - walls[0]) - (pts - pts[0])).max() < 0.25


def _clip_with_gap(path: Path, *, gap: float, before: int = 15, after: int = 15, fps: int = 15) -> Path:
    """A real H.264 .mkv whose timestamps jump ``gap`` seconds forward after ``before`` frames (what a
    DVR's recording gap or concatenated segments look like)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, fps)
        for index in range(before + after):
            frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), index * 8, np.uint8), format="rgb24")
            frame.pts = index + (round(gap * fps) if index >= before else 0)
            frame.time_base = fractions.Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_a_host_name_that_does_not_resolve_is_said_so() -> None:
    for url in ("rtsp://no-such-camera.invalid/stream", "http://no-such-camera.invalid/live.m3u8"):
        with pytest.raises(SourceError, match="host 'no-such-camera.invalid' not found"):
            open_source(url, SourceOptions(open_timeout=3))


def test_a_forward_pts_jump_is_not_waited_out_when_played_as_live(tmp_path: Path) -> None:
    clip = _clip_with_gap(tmp_path / "gap.mkv", gap=3600.0)
    started = time.monotonic()
    frames, _ = read_all(clip, realtime=True)
    took = time.monotonic() - started
    assert len(frames) == 30
    assert took < 5.0, took  # two 1-s pieces of video, not an hour
    steps = np.diff([f.pts for f in frames])
    assert steps.max() == pytest.approx(3600.0 + 1 / 15, abs=0.01)  # the timeline keeps the gap
    # A gap up to MAX_PACING_GAP_S is waited out, as a slow file's frames are.
    clip = _clip_with_gap(tmp_path / "pause.mkv", gap=2.0, before=3, after=3)
    started = time.monotonic()
    frames, _ = read_all(clip, realtime=True)
    assert len(frames) == 6 and 2.0 < time.monotonic() - started < 4.0


def test_loop_replays_a_file_with_increasing_pts(clips: Path) -> None:
    clip = make_clip(clips / "short.mkv", size="160x90", fps=FPS, seconds=0.5)
    got = []
    with open_source(str(clip), SourceOptions(realtime=False, loop=True)) as source:
        for frame in source:
            got.append(frame)
            if len(got) == 40:
                break
    assert [msv.read_stamp(f.image) for f in got] == [i % 15 for i in range(40)]
    steps = np.diff([f.pts for f in got])
    assert steps.min() > 0.02 and steps.max() < 0.05


def scribble(src: Path, dst: Path, spots: tuple[float, ...] = (0.3, 0.5, 0.7), length: int = 3000) -> Path:
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(7)
    for spot in spots:
        offset = int(len(data) * spot)
        data[offset : offset + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_corrupt_packets_are_skipped_and_counted(clip: Path, tmp_path: Path) -> None:
    bad = scribble(clip, tmp_path / "corrupt.mp4")
    frames, source = read_all(bad, realtime=False)
    assert source.decode_errors > 0
    assert 60 < len(frames) < 90  # the damaged packets are gone, the rest decodes
    stamps = [msv.read_stamp(f.image) for f in frames]
    assert stamps[0] == 0 and max(stamps) >= 85  # it went on to the end of the file
    assert np.all(np.diff([f.pts for f in frames]) > 0)


def test_truncated_stream_file_plays_up_to_the_cut(clips: Path, tmp_path: Path) -> None:
    clip = make_clip(clips / "clip.ts", size="320x180", fps=FPS, seconds=3.0)
    data = clip.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames, _ = read_all(cut, realtime=False)
    assert 30 < len(frames) < 80
    stamps = [msv.read_stamp(f.image) for f in frames]
    # In order from the first frame; the very last one is cut mid-packet and may be concealed.
    assert stamps[:-1] == list(range(len(frames) - 1)) and stamps[-1] <= len(frames) - 1


def test_truncated_mp4_without_index_is_a_clear_error(clip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the moov index is at the end
    with pytest.raises(UnsupportedSource, match=r"cut\.mp4'?: not a video file"):
        open_source(str(cut))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(SourceNotFound, match=r"nope\.mp4'?: no such file") as info:
        open_source(str(path))
    assert isinstance(info.value, FileNotFoundError)


def test_directory_and_non_video_files(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedSource, match="is a directory"):
        open_source(str(tmp_path))
    text = tmp_path / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 50)
    with pytest.raises(UnsupportedSource, match=r"notes\.mp4.*not a video file"):
        open_source(str(text))


def _audio_only(path: Path) -> Path:
    """A real AAC file: one second of a tone, no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        samples = (np.sin(np.arange(16000) * 0.1) * 0.3).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = _audio_only(tmp_path / "tone.m4a")
    with pytest.raises(UnsupportedSource, match=r"tone\.m4a.*has no video stream"):
        open_source(str(path))


def test_unsupported_codec(clips: Path, tmp_path: Path) -> None:
    """A Matroska file whose video track names a codec FFmpeg does not know (ID patched in place)."""
    clip = make_clip(clips / "codec.mkv", size="160x90", fps=FPS, seconds=0.5)
    data = clip.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    odd = tmp_path / "odd.mkv"
    odd.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/ZZZ"))
    with pytest.raises(UnsupportedSource, match=r"odd\.mkv.*codec"):
        open_source(str(odd))


# -- errors: one line, the source once, the reason in words --------------------------------------------
def assert_one_line_naming_once(error: BaseException, thing: str, words: str) -> None:
    message = str(error)
    assert message.count(thing) == 1, message
    assert words in message, message
    assert "[Errno" not in message and "\n" not in message, message


def test_file_open_errors_say_why_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 50)
    notes = tmp_path / "notes.txt"  # FFmpeg would open it as ANSI art
    notes.write_text("these are not the frames you are looking for\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    cases: list[tuple[Path, type[SourceError], str]] = [
        (text, UnsupportedSource, "not a video file (FFmpeg could not find a video format in it)"),
        (notes, UnsupportedSource, "a text file, not a video"),
        (empty, UnsupportedSource, "an empty file (0 bytes), not a video"),
        (_audio_only(tmp_path / "tone.m4a"), UnsupportedSource, "has no video stream"),
        (folder, UnsupportedSource, "is a directory, not a video file"),
        (tmp_path / "gone.mp4", SourceNotFound, "no such file"),
    ]
    for path, kind, words in cases:
        with pytest.raises(kind) as info:
            open_source(str(path))
        assert str(info.value).startswith(f"file source {str(path)!r}: ")
        assert_one_line_naming_once(info.value, str(path), words)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_says_no_permission(clip: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(clip.read_bytes())
    locked.chmod(0)
    with pytest.raises(SourceError) as info:
        open_source(str(locked))
    assert_one_line_naming_once(info.value, str(locked), "no permission to read it")


def test_ffmpeg_reasons_carry_neither_errno_nor_path() -> None:
    """PyAV's exceptions as FFmpeg raises them (code, FFmpeg's message, the file or URL); those the
    real-input tests cannot reach here (EACCES as root, a reset connection, 5xx) included."""
    url = "rtsp://admin:hunter2@10.0.0.2/stream"
    cases = [
        (av.error.PermissionError(errno.EACCES, "Permission denied", "x.mp4"), "no permission to read it"),
        (
            av.error.ConnectionResetError(errno.ECONNRESET, "Connection reset by peer", url),
            "connection reset",
        ),
        (
            av.error.HTTPServerError(-1482175992, "Server returned 5XX Server Error reply", url),
            "a 5xx server",
        ),
        (
            av.error.HTTPUnauthorizedError(-825242872, "Server returned 401 Unauthorized", url),
            "401 Unauthorized",
        ),
        (av.error.OSError(errno.EIO, "Input/output error", url), "input/output error"),
        (
            av.error.PatchWelcomeError(-1163346256, "Not yet implemented in FFmpeg, patches welcome", url),
            "not yet implemented in FFmpeg, patches welcome",
        ),
    ]
    for exc, words in cases:
        reason = ffmpeg_reason(exc)
        assert words in reason and "Errno" not in reason and "hunter2" not in reason and "x.mp4" not in reason


def _refused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed: the kernel answers RST)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_refused_connection_is_said_in_words(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{_refused_port()}/stream"
    with pytest.raises(SourceError) as info:
        open_source(url, SourceOptions(open_timeout=5))
    assert not isinstance(info.value, SourceTimeout)
    assert str(info.value) == f"network source {url!r}: connection refused"


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET /CODE... with that HTTP status and no body."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(int(self.path.strip("/").split(".")[0]))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, "the server answered 401 Unauthorized (a wrong or missing user name and password)"),
        (403, "the server answered 403 Forbidden (access denied)"),
        (404, "the server answered 404 Not Found (nothing at that path)"),
        (503, "the server failed to answer (a 5xx server error)"),
    ],
)
def test_http_error_statuses_are_said_in_words(status: int, words: str) -> None:
    for url in serve(_StatusHandler):
        target = f"{url}/{status}.mp4"
        with pytest.raises(SourceError) as info:
            open_source(target, SourceOptions(open_timeout=5))
    assert str(info.value) == f"network source {target!r}: {words}"


def test_a_password_in_the_url_stays_out_of_http_errors() -> None:
    """PyAV's own message ends with the URL it was given, password and all."""
    for url in serve(_StatusHandler):
        target = url.replace("http://", "http://admin:hunter2@") + "/401.mp4"
        with pytest.raises(SourceError) as info:
            open_source(target, SourceOptions(open_timeout=5))
    message = str(info.value)
    assert "hunter2" not in message and "admin:***@127.0.0.1" in message
    assert_one_line_naming_once(info.value, "127.0.0.1", "401 Unauthorized")


def test_a_server_that_speaks_something_else_is_said_so() -> None:
    """An HTTP server where an RTSP camera was expected: FFmpeg reads its answer as invalid data."""
    for url in serve(_StatusHandler):
        target = url.replace("http://", "rtsp://") + "/404"
        with pytest.raises(SourceError) as info:
            open_source(target, SourceOptions(open_timeout=5))
    words = "the server's answer is not a video stream FFmpeg can read"
    assert str(info.value) == f"network source {target!r}: {words}"


# -- http(s): a remote file, MJPEG, HLS, from real local servers ---------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


class _RangeHandler(_QuietHandler):
    """Static files with HTTP range requests, as every real web server answers them (FFmpeg seeks to
    an mp4's index at the end of the file that way); the stdlib handler ignores ``Range``."""

    def send_head(self):  # type: ignore[no-untyped-def]
        header = self.headers.get("Range", "")
        path = Path(self.translate_path(self.path))
        if not header.startswith("bytes=") or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, _, last = header[len("bytes=") :].partition("-")
        start, end = int(first or 0), min(int(last) if last else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return None
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return _Limited(handle, end - start + 1)


class _Limited:
    """A file object that reads at most ``left`` bytes (copyfile reads until EOF)."""

    def __init__(self, handle, left: int) -> None:  # type: ignore[no-untyped-def]
        self.handle, self.left = handle, left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.handle.close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(handler: type[http.server.BaseHTTPRequestHandler] | partial) -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def file_server(clips: Path) -> Iterator[str]:
    yield from serve(partial(_RangeHandler, directory=str(clips)))


def test_http_file_is_finite(clip: Path, file_server: str) -> None:
    frames, source = read_all(f"{file_server}/{clip.name}", realtime=False)
    assert source.finite  # it has a duration: the end is the end, not a drop
    assert [msv.read_stamp(f.image) for f in frames] == list(range(90))


def test_http_file_is_paced_at_real_time_when_live(clip: Path, file_server: str) -> None:
    """``vidnarrate run`` on a remote file plays it as live, like a local file: not one burst that a
    live ring would mostly drop."""
    frames, _ = read_all(f"{file_server}/{clip.name}", realtime=True)
    assert len(frames) == 90
    stream_span = frames[-1].pts - frames[0].pts
    assert frames[-1].wall - frames[0].wall >= 0.9 * stream_span


def test_http_transport_stream_without_duration_is_finite(clip: Path, clips: Path) -> None:
    """MPEG-TS carries no duration (served without range requests FFmpeg cannot estimate one), but a
    remote .ts has a size: its end is the end, not a drop to reconnect to (that replayed it forever)."""
    ts = clips / "clip.ts"
    with av.open(str(clip)) as src, av.open(str(ts), "w", format="mpegts") as out:
        out_stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out_stream
                out.mux(packet)
    for url in serve(partial(_QuietHandler, directory=str(clips))):
        frames, source = read_all(f"{url}/{ts.name}", realtime=False)
    assert source.finite
    assert [msv.read_stamp(f.image) for f in frames] == list(range(90))


def test_http_404_names_the_url(file_server: str) -> None:
    with pytest.raises(SourceError, match=r"missing\.mp4'?: the server answered 404 Not Found"):
        open_source(f"{file_server}/missing.mp4")


def test_hls_playlist(clips: Path, tmp_path: Path) -> None:
    clip = make_clip(clips / "clip.mp4", size="320x180", fps=FPS, seconds=3.0)
    hls = tmp_path / "hls"
    hls.mkdir()
    with (
        av.open(str(clip)) as src,
        av.open(
            str(hls / "index.m3u8"), "w", format="hls", options={"hls_time": "1", "hls_playlist_type": "vod"}
        ) as out,
    ):
        in_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    assert len(list(hls.glob("*.ts"))) >= 2
    for url in serve(partial(_QuietHandler, directory=str(hls))):
        frames, source = read_all(f"{url}/index.m3u8", realtime=False)
    assert source.finite  # a VOD playlist ends
    assert [msv.read_stamp(f.image) for f in frames] == list(range(90))


class _MjpegHandler(http.server.BaseHTTPRequestHandler):
    """An MJPEG IP camera: multipart/x-mixed-replace JPEGs at ``fps``, endless, stamped frames."""

    fps = 20.0

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        photos = msv.load_photos()
        index = 0
        try:
            while True:
                image = next(msv.frames(photos, 320, 240, 20, 1))
                msv.draw_stamp(image, index, index / self.fps)
                bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
                assert ok
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg.tobytes()
                    + b"\r\n"
                )
                index += 1
                time.sleep(1 / self.fps)
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_mjpeg_over_http_is_live() -> None:
    for url in serve(_MjpegHandler):
        with open_source(f"{url}/video.mjpg", SourceOptions(open_timeout=5, read_timeout=2)) as source:
            assert not source.finite  # a camera: its end would be a drop
            got = []
            for frame in source:
                got.append(frame)
                if len(got) == 10:
                    break
    assert [msv.read_stamp(f.image) for f in got] == list(range(10))
    assert got[0].image.shape == (240, 320, 3)


class _SlowMjpegHandler(_MjpegHandler):
    fps = 8.0


def test_mjpeg_over_http_is_timed_by_the_clock() -> None:
    """MJPEG has no timestamps; FFmpeg's made-up ones assume 25 fps, which would put an 8-fps
    camera's captions 3x too early in stream time. Live, the clock is the stream time."""
    for url in serve(_SlowMjpegHandler):
        with open_source(f"{url}/video.mjpg", SourceOptions(open_timeout=5, read_timeout=2)) as source:
            got = []
            for frame in source:
                got.append(frame)
                if len(got) == 12:
                    break
    pts_span, wall_span = got[-1].pts - got[0].pts, got[-1].wall - got[0].wall
    assert wall_span > 1.2  # 11 frames at 8 fps
    assert abs(pts_span - wall_span) < 0.1, (pts_span, wall_span)
