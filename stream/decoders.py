"""File and network sources decoded by PyAV, and FFmpeg's errors in words.

Each opens with the right options and timeouts, demuxes the first video stream, skips and counts
corrupt packets, and says why an open or a read failed in words (:func:`ffmpeg_reason`), naming the
source once. Given a :class:`~stream.decodeplan.Demand` (capture under ``[capture] decode =
"sampled"``), a source decodes only what the sampler can use (:class:`~stream.decodeplan.DecodePlan`
sets FFmpeg's ``skip_frame`` packet by packet); decoding runs on the hardware ``[capture] hwaccel``
names where there is one (:mod:`stream.hwdecode`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np

from .decodeplan import DecodePlan, Demand, Skip
from .errors import SourceError, SourceNotFound, SourceTimeout, UnsupportedSource
from .hwdecode import hwaccel_for
from .pacing import RealTimePacer
from .rgb import RGB_OVERRUN_BYTES, DirectRGB, resize, rotate, scaled_size
from .sourcespec import SourceOptions, SourceSpec
from .videosource import PendingFrame, VideoSource

log = logging.getLogger(__name__)

# A corrupt file may fail to demux at the same spot forever; give up after this many errors in a row.
MAX_CONSECUTIVE_ERRORS = 200

_AVFMT_NOTIMESTAMPS = 0x0080  # libavformat: the format has no timestamps of its own

# FFmpeg's errors in words, most specific first. PyAV's own message carries FFmpeg's error number
# (a four-letter tag read as an integer for its own errors) and the URL (password included): neither
# belongs in a message that already names the source. FFmpeg reports an RTSP server's status codes
# as the HTTP ones, hence the neutral "the server answered".
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (av.error.HTTPBadRequestError, "the server answered 400 Bad Request"),
    (
        av.error.HTTPUnauthorizedError,
        "the server answered 401 Unauthorized (a wrong or missing user name and password)",
    ),
    (av.error.HTTPForbiddenError, "the server answered 403 Forbidden (access denied)"),
    (av.error.HTTPNotFoundError, "the server answered 404 Not Found (nothing at that path)"),
    (av.error.HTTPTooManyRequestsError, "the server answered 429 Too Many Requests"),
    (av.error.HTTPClientError, "the server refused the request (a 4xx client error)"),
    (av.error.HTTPServerError, "the server failed to answer (a 5xx server error)"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset by the server"),
    (ConnectionAbortedError, "connection aborted"),
    (BrokenPipeError, "the connection broke"),
    (PermissionError, "no permission to read it"),
    (IsADirectoryError, "is a directory, not a video file"),
    (FileNotFoundError, "no such file"),
    (TimeoutError, "timed out"),
    (av.error.InvalidDataError, "invalid data"),
    (av.error.EOFError, "it ended unexpectedly"),
)


def ffmpeg_reason(exc: BaseException) -> str:
    """Why PyAV (or the OS) failed, in words: no error number, no file name or URL."""
    for kind, words in _REASONS:
        if isinstance(exc, kind):
            return words
    strerror = getattr(exc, "strerror", None)
    if not strerror:
        return str(exc)
    # "Input/output error" reads on after a colon as "input/output error"; an acronym stays as it is.
    return strerror[:1].lower() + strerror[1:] if strerror[1:2].islower() else strerror


class _PyAVSource(VideoSource):
    """Shared PyAV decoding: demux the first video stream, skip and count corrupt packets."""

    _container: Any
    _stream: Any

    def __init__(self, spec: SourceSpec, options: SourceOptions) -> None:
        super().__init__(spec, options)
        self._container = None
        self._direct = DirectRGB(spec.label)
        self._plan: DecodePlan | None = None
        self._pts_shift = 0.0  # added to the stream's pts (a looped file's), in packets and frames alike
        self._packet_end: float | None = None  # the latest packet time seen (frames may be skipped)
        # The earliest packet time of this pass over a file, unshifted: where a looped file starts
        # again, whether or not its first frames were decoded.
        self._packet_start: float | None = None
        self.frames_decoded = 0  # frames out of the decoder (skipped ones never are)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _pick_stream(self) -> None:
        container = self._container
        if not container.streams.video:
            self.close()
            raise UnsupportedSource(self._error("has no video stream"))
        stream = container.streams.video[0]
        if stream.codec_context is None:
            self.close()
            raise UnsupportedSource(self._error("its video codec is not one this FFmpeg build can decode"))
        self._stream = stream

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _packet_time(self, packet: Any) -> float | None:
        """The packet's time in the seconds its frame will be reported at (None: unknown)."""
        return None if packet.pts is None else float(packet.pts * packet.time_base) + self._pts_shift

    def _decoded(self) -> Iterator[tuple[Any, float]]:
        """(frame, wall) pairs, skipping corrupt packets. Raises SourceTimeout/SourceError on I/O.
        With a demand, packets the plan skips are not decoded and frames it cannot use are dropped."""
        container, stream = self._container, self._stream
        demux = container.demux(stream)
        consecutive = 0
        demand: Demand | None = self.demand
        if demand is not None and self._plan is None:  # one per source: a looped file keeps its GOP
            self._plan = DecodePlan(demand, self._frame_step())
        plan = self._plan if demand is not None else None
        skip = Skip.NONE
        stream.codec_context.skip_frame = skip.value
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.InvalidDataError as exc:
                consecutive = self._count_error(consecutive, "demux", exc)
                demux = container.demux(stream)  # continue reading after the bad spot
                continue
            except (av.ExitError, av.error.TimeoutError) as exc:
                reason = f"no data within the read timeout ({self.options.read_timeout:g} s)"
                raise SourceTimeout(self._error(reason)) from exc
            except (av.FFmpegError, OSError) as exc:
                raise SourceError(self._error(f"read failed: {ffmpeg_reason(exc)}")) from exc
            if plan is not None and demand is not None and packet.size:
                demand.arrived()
                when = self._packet_time(packet)
                if when is not None:
                    self._packet_end = when if self._packet_end is None else max(when, self._packet_end)
                    start = when - self._pts_shift
                    self._packet_start = (
                        start if self._packet_start is None else min(start, self._packet_start)
                    )
                wanted = plan.packet(when, packet.is_keyframe)
                if wanted is not skip:
                    skip = wanted
                    stream.codec_context.skip_frame = skip.value
            try:
                decoded = packet.decode()
            except (av.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError) as exc:
                consecutive = self._count_error(consecutive, "decode", exc)
                continue
            wall = time.time()
            for frame in decoded:
                consecutive = 0
                self.frames_decoded += 1
                if plan is not None and frame.time is not None:
                    if not plan.usable(float(frame.time) + self._pts_shift):
                        continue  # an open GOP's leading picture: it references skipped frames
                if frame.is_corrupt:
                    self.decode_errors += 1  # delivered anyway: a concealed frame beats a gap
                yield frame, wall

    def _count_error(self, consecutive: int, where: str, exc: Exception) -> int:
        self.decode_errors += 1
        consecutive += 1
        if self.decode_errors <= 3 or self.decode_errors % 100 == 0:
            reason = ffmpeg_reason(exc)
            log.warning("%s: %s error #%d skipped: %s", self.spec.label, where, self.decode_errors, reason)
        if consecutive >= MAX_CONSECUTIVE_ERRORS:
            last = ffmpeg_reason(exc)
            raise SourceError(self._error(f"{consecutive} {where} errors in a row, giving up (last: {last})"))
        return consecutive

    def _frame_step(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return 1.0 / float(rate) if rate else 1.0 / 30.0

    def _pts(self, frame: Any, last: float | None) -> float:
        """The frame's time in seconds; a frame without pts gets the previous one plus a frame."""
        if frame.time is not None:
            return float(frame.time)
        return 0.0 if last is None else last + self._frame_step()

    def _pending(self, frame: Any, pts: float, wall: float) -> PendingFrame:
        gap = None if self._plan is None else self._plan.gap(pts)
        rotation = frame.rotation
        width, height = frame.width, frame.height
        if round(rotation / 90.0) % 2:
            width, height = height, width
        width, height = scaled_size(width, height, self.options.max_side)
        return PendingFrame(
            height,
            width,
            pts,
            wall,
            fill=lambda out: self._fill(frame, rotation, out, 0),
            fill_padded=lambda out: self._fill(frame, rotation, out, RGB_OVERRUN_BYTES),
            gap=gap,
        )

    def _fill(self, frame: Any, rotation: int, out: np.ndarray, spare_after: int) -> None:
        """Convert ``frame`` to RGB into ``out``: straight into it when no rotation or scaling is
        needed and ``out`` is padded, else through a full-size scratch image that is then rotated and
        resized (or copied) into it."""
        same_size = (frame.height, frame.width) == out.shape[:2]
        if not rotation and same_size and self._direct.convert(frame, out, spare_after):
            return
        image = self._direct.scratch(frame)
        if image is None:
            image = frame.to_ndarray(format="rgb24")
        if rotation:
            image = rotate(image, rotation)
        resize(image, (out.shape[1], out.shape[0]), out)


class FileSource(_PyAVSource):
    """A file PyAV can read, at real-time pace by pts (default) or as fast as it decodes."""

    def _open(self) -> None:
        path = Path(self.spec.target)
        if not path.exists():
            raise SourceNotFound(self._error("no such file"))
        if path.is_dir():
            raise UnsupportedSource(self._error("is a directory, not a video file"))
        try:
            self._container = av.open(str(path), hwaccel=hwaccel_for(self.options.hwaccel))
        except PermissionError as exc:
            raise SourceError(self._error(ffmpeg_reason(exc))) from exc
        except av.InvalidDataError as exc:
            if path.stat().st_size == 0:
                reason = "an empty file (0 bytes), not a video"
            else:
                reason = "not a video file (FFmpeg could not find a video format in it)"
            raise UnsupportedSource(self._error(reason)) from exc
        except (av.FFmpegError, OSError) as exc:
            reason = f"not a video file FFmpeg can read ({ffmpeg_reason(exc)})"
            raise UnsupportedSource(self._error(reason)) from exc
        if self._container.format.name == "tty":
            # FFmpeg renders a long enough .txt (or .nfo, .asc) as ANSI art: not what anyone captions.
            self.close()
            raise UnsupportedSource(self._error("a text file, not a video"))
        self._pick_stream()
        self._stream.thread_type = "AUTO"

    def pending(self) -> Iterator[PendingFrame]:
        offset = 0.0  # added to pts when looping, so a looped file's pts keep increasing
        while True:
            first: float | None = None
            last: float | None = None
            pacer = RealTimePacer(self.spec.label) if self.options.realtime else None
            self._pts_shift = offset
            self._packet_start = None
            for frame, wall in self._decoded():
                raw = self._pts(frame, None if last is None else last - offset)
                first = raw if first is None else first
                pts = raw + offset
                if pacer is not None:
                    wall = pacer.wait(pts, wall)
                last = pts
                yield self._pending(frame, pts, wall)
            # The file's first and last frames, decoded or not: under decode = "sampled" a pass may
            # write no frame at all, and its first written frame need not be the file's first.
            if self._packet_start is not None:
                first = self._packet_start if first is None else min(first, self._packet_start)
            if last is None or self._packet_end is not None and self._packet_end > last:
                last = self._packet_end
            if not self.options.loop or last is None or first is None:
                return
            offset = last + self._frame_step() - first
            self.close()
            self._open()


class NetworkSource(_PyAVSource):
    """RTSP/HTTP(S)/HLS through PyAV with low-latency options and (open, read) timeouts."""

    def _open(self) -> None:
        url = self.spec.target
        scheme = url.split("://", 1)[0].lower()
        options = {"flags": "low_delay"}
        if scheme.startswith("rtsp"):
            # Small probing: the open takes ~0.1 s instead of ~3 s (SDP already carries the format);
            # nobuffer hands out packets as they come (it drops those read while probing: fine live).
            options |= {
                "rtsp_transport": self.options.rtsp_transport,
                "fflags": "nobuffer",
                "analyzeduration": "0",
                "probesize": "32768",
            }
        else:
            # No nobuffer here: it would drop the first second of a remote file or HLS playlist.
            options |= {"analyzeduration": "1000000", "probesize": "1000000"}
        started = time.monotonic()
        try:
            self._container = av.open(
                url,
                options=options,
                timeout=(self.options.open_timeout, self.options.read_timeout),
                hwaccel=hwaccel_for(self.options.hwaccel),
            )
        except av.ProtocolNotFoundError as exc:
            raise UnsupportedSource(self._error(f"this FFmpeg build cannot speak {scheme}://")) from exc
        except (av.ExitError, av.error.TimeoutError) as exc:
            raise SourceTimeout(self._error(f"no answer within {self.options.open_timeout:g} s")) from exc
        except (av.FFmpegError, OSError) as exc:
            # FFmpeg's RTSP client reports the interrupted wait for a server that accepted the
            # connection but never answered as "Invalid data": the elapsed time tells the truth.
            if time.monotonic() - started >= self.options.open_timeout:
                reason = f"no answer within {self.options.open_timeout:g} s"
                raise SourceTimeout(self._error(reason)) from exc
            raise SourceError(self._error(_unresolved_host(url) or _network_reason(exc))) from exc
        self._pick_stream()
        container = self._container
        # A remote file or an HLS VOD playlist ends; cameras, live playlists and live HTTP streams
        # don't. A remote file without a duration in its header (MPEG-TS) still has a known size.
        self.finite = not scheme.startswith("rtsp") and (
            container.duration is not None or (container.format.name != "hls" and container.size > 0)
        )
        # A format without timestamps (MJPEG over HTTP) gets made-up ones at an assumed 25 fps;
        # live, the clock since opening is the only true stream time.
        self._clock_pts = not self.finite and bool(container.format.flags & _AVFMT_NOTIMESTAMPS)
        self._opened_at = time.monotonic()
        # HTTP delivers a remote file or VOD playlist as fast as the network goes, and a live
        # playlist in segment-sized bursts: with ``realtime`` they are paced by pts, as a local file
        # is. RTSP already arrives at real time; pacing it would only add its start-up burst as delay.
        self._paced = self.options.realtime and not scheme.startswith("rtsp")

    def _packet_time(self, packet: Any) -> float | None:
        if self._clock_pts:  # the time its frame will get: the clock since opening
            return time.monotonic() - self._opened_at
        return super()._packet_time(packet)

    def pending(self) -> Iterator[PendingFrame]:
        last: float | None = None
        pacer = RealTimePacer(self.spec.label) if self._paced else None
        for frame, wall in self._decoded():
            last = time.monotonic() - self._opened_at if self._clock_pts else self._pts(frame, last)
            if pacer is not None:
                wall = pacer.wait(last, wall)
            yield self._pending(frame, last, wall)


def _unresolved_host(url: str) -> str | None:
    """FFmpeg reports a host name that does not resolve as a bare I/O error; say what it is."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return f"host {host!r} not found ({exc.strerror})"
    except OSError:
        return None
    return None


def _network_reason(exc: BaseException) -> str:
    """Data that is not a stream means the server speaks something else at that address."""
    if isinstance(exc, av.InvalidDataError):
        return "the server's answer is not a video stream FFmpeg can read"
    return ffmpeg_reason(exc)
