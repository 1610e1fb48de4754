#!/usr/bin/env python3
"""What a camera costs under ``[capture] decode = "all"`` and ``"sampled"`` (run through bench_capture.py).

    python tools/bench_capture.py --decode                 # CPU-seconds per stream-minute, both modes
    python tools/bench_capture.py --cameras 4,8,16 --camera-seconds 30
    python tools/bench_capture.py --cameras 8,40 --rtsp     # cameras over RTSP from GStreamer's server
    python tools/bench_capture.py --fidelity-minutes 10     # same frames under "sampled" as "all"?

**--decode**: each clip (1080p, made here and cached in ``--workdir``: 20-30 s each) is captured as fast
as it decodes (``realtime = false``, looped to a minute of stream, the default ``max_side`` 1344, a real
shared-memory ring) under both modes, sampling at 1 fps, interleaved round by round; the figure is
CPU time over all the capture's threads per minute of stream, best of the rounds. (A connection's
first GOP is decoded in full, before its keyframe interval is known: a camera pays that once.)
H.264 at keyframe intervals of 1, 2 and 10 s with and without B-frames, HEVC at 1 and 10 s, and a
CCTV-like clip (10 fps, a 25-s keyframe interval, a fixed view with sensor noise and one moving
object). Clips pan over the bundled photos, smoother than camera footage. ``moved s``: how far, at
most, a sampled frame lies from the one the sampler keeps of every frame for the same second (0: the
same frames). Goal: sampled at least 10x cheaper at a 1-s interval, 2x at 2 s, never dearer than all.

**--cameras**: N capture processes (the real ``capture_main``, spawned), each playing the 1080p 25-fps
1-s-GOP clip as live (paced, looped) into its own ring, and one reader here doing what the inference
process's frame tap does (headers of every frame, a :class:`~stream.sampler.Sampler` per stream,
pixels of the kept frames copied out). A count is sustained when, over the measured window, no
stream missed a sampled second, none fell behind real time by a second or more (its stream time
advanced at least as fast as the wall clock, less 1 s: a capture that cannot keep up re-anchors its
pacing, which shows as stream time lost) and no sampled frame reached the reader a second or more
after it left the decoder ("lag"). With ``--rtsp`` the cameras are RTSP clients of one real GStreamer
server (``tools/rtsp_server.py --mounts N``), each at its own mount point playing the clip, remuxed
to a long file, as is (parse and packetise only: a server that encoded per client would eat the
CPU the cameras are measured on); the server's own CPU is given separately. Memory per camera is
the capture process's PSS (shared libraries split among the processes that map them) plus its ring.
Prints a table per figure, then one JSON line.

**--fidelity-minutes M**: each 1080p clip (1-s and 10-s GOPs with and without B-frames, the CCTV-like
one, and any ``--input``) looped to M minutes of stream through the real capture path (``Capture`` from
the file, as fast as it decodes, into a real ring) under both modes; for every second, whether the
frame written under "sampled" is the frame the sampler keeps of everything "all" writes (same pts),
and where not, by how much it moved.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_model  # noqa: E402

from stream import democlip  # noqa: E402
from stream.capture import Capture, capture_main  # noqa: E402
from stream.ring import FrameRing, ring_name  # noqa: E402
from stream.sampler import SampleGrid, Sampler  # noqa: E402
from stream.sources import SourceOptions, SourceSpec  # noqa: E402

SIZE = (1920, 1080)
# name: (codec, fps, seconds, keyframe interval in seconds, B-frames, CCTV-like content)
CLIPS: dict[str, tuple[str, float, float, float, int, bool]] = {
    "h264_gop1_b3": ("libx264", 25, 20, 1, 3, False),
    "h264_gop1_b0": ("libx264", 25, 20, 1, 0, False),
    "h264_gop2_b3": ("libx264", 25, 20, 2, 3, False),
    "h264_gop2_b0": ("libx264", 25, 20, 2, 0, False),
    "h264_gop10_b3": ("libx264", 25, 20, 10, 3, False),
    "h264_gop10_b0": ("libx264", 25, 20, 10, 0, False),
    "hevc_gop1": ("libx265", 25, 20, 1, 3, False),
    "hevc_gop10": ("libx265", 25, 20, 10, 3, False),
    "cctv_10fps_gop25": ("libx264", 10, 30, 25, 0, True),
}


def cctv_frames(width: int, height: int, count: int, fps: float) -> Any:
    """A fixed camera: one photo as the scene, sensor noise on every frame, one dark figure crossing."""
    scene = cv2.resize(democlip.load_photos()[0], (width, height), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(1)
    for index in range(count):
        image = scene.astype(np.int16) + rng.normal(0, 3, scene.shape).astype(np.int16)
        x = int((index / fps * 80) % width)
        image[height // 2 : height // 2 + 260, x : x + 90] = (40, 38, 45)
        yield np.clip(image, 0, 255).astype(np.uint8)


def make_clip(
    path: Path, codec: str, fps: float, seconds: float, gop_s: float, bframes: int, cctv: bool
) -> Path:
    if path.exists():
        return path
    width, height = SIZE
    count, gop = round(fps * seconds), max(1, round(fps * gop_s))
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23", "g": str(gop)}
            stream.options |= {"x264-params": f"bframes={bframes}:scenecut=0:keyint_min={gop}"}
        else:
            params = f"keyint={gop}:min-keyint={gop}:bframes={bframes}:scenecut=0:log-level=error"
            stream.options = {"preset": "ultrafast", "crf": "26", "x265-params": params}
        source = (
            cctv_frames(width, height, count, fps)
            if cctv
            else democlip.frames(democlip.load_photos(), width, height, fps, count, stamp=False)
        )
        for index, image in enumerate(source):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)
    return path


class _Until:
    """The ring, until a frame at or after ``end`` seconds of stream time is written (then ``stop``).
    ``cpu_at_end`` is the process's CPU time when that frame was written: the capture decodes on
    until the watchdog sees the stop, and that overshoot is not part of ``end`` seconds of stream."""

    def __init__(self, ring: FrameRing, end: float, stop: threading.Event) -> None:
        self.ring, self.end, self.stop = ring, end, stop
        self.lossless = ring.lossless
        self.times: list[float] = []  # stream time of every frame written, up to ``end``
        self.cpu_at_end: float | None = None

    def write_with(self, height: int, width: int, fill: Any, pts: float, wall: float, **kwargs: Any) -> int:
        seq = self.ring.write_with(height, width, fill, pts, wall, **kwargs)
        if self.cpu_at_end is None:
            self.times.append(pts)
            if pts >= self.end:
                self.cpu_at_end = time.process_time()
                self.stop.set()
        return seq

    def write(self, image: Any, pts: float, wall: float, **kwargs: Any) -> int:
        return self.ring.write(image, pts, wall, **kwargs)

    def mark_ended(self, end: float | None = None) -> None:
        self.ring.mark_ended()


def capture_cost(path: Path, decode: str, stream_s: float) -> tuple[list[float], float]:
    """Stream times written and CPU seconds (all threads) of a Capture of ``stream_s`` seconds of the
    clip, looped as fast as it decodes, into a real ring."""
    ring = FrameRing.create(ring_name(uuid.uuid4().hex, "bench"), slots=8, max_height=1344, max_width=1344)
    try:
        stop = threading.Event()
        options = SourceOptions(realtime=False, loop=True, decode=decode, sample_fps=1.0)
        cpu = time.process_time()
        writer = _Until(ring, stream_s, stop)
        cap = Capture("bench", SourceSpec("file", str(path), str(path)), writer, options=options)
        cap.run(stop)
        cpu = (time.process_time() if writer.cpu_at_end is None else writer.cpu_at_end) - cpu
        if cap.error is not None:
            raise RuntimeError(f"capture of {path} failed: {cap.error}")
        return writer.times, cpu
    finally:
        ring.close()
        ring.unlink()


def fidelity(every: list[float], sampled: list[float]) -> float:
    """The largest distance between a sampled frame and the frame the sampler keeps of every frame
    for the same second (0: the very same frames)."""
    grid = SampleGrid(1.0)
    chosen = {b: t for t in every if (b := grid.offer(t)) is not None}
    grid = SampleGrid(1.0)
    moved = [
        abs(t - chosen[b]) for t in sampled if (b := grid.offer(t, keep=True)) is not None and b in chosen
    ]
    return max(moved, default=0.0)


def decode_main(workdir: Path, rounds: int = 3, stream_s: float = 60.0) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(
        f'capture CPU per stream-minute, decode = "all" vs "sampled" at 1 fps; {cpu_model()}, '
        f"{os.cpu_count()} CPUs, PyAV {av.__version__}, Python {platform.python_version()}; load "
        f"average {load:.1f} before; best of {rounds} rounds of {stream_s:g} s of stream (clips looped)"
    )
    print(
        f"{'clip':18} {'codec':7} {'fps':>3} {'GOP s':>5} {'B':>2} {'all cpu s/min':>13} "
        f"{'sampled cpu s/min':>17} {'ratio':>6} {'written all/sampled':>19} {'moved s':>7}"
    )
    figures: dict[str, Any] = {}
    for name, (codec, fps, seconds, gop_s, bframes, cctv) in CLIPS.items():
        path = workdir / f"decode_{name}_{SIZE[0]}x{SIZE[1]}_{seconds:g}s.mp4"
        if not path.exists():
            print(f"making {path} ...", file=sys.stderr, flush=True)
        make_clip(path, codec, fps, seconds, gop_s, bframes, cctv)
        best = {"all": float("inf"), "sampled": float("inf")}
        written: dict[str, list[float]] = {"all": [], "sampled": []}
        for _ in range(rounds):
            for decode in ("all", "sampled"):
                times, cpu = capture_cost(path, decode, stream_s)
                best[decode] = min(best[decode], cpu * 60 / stream_s)
                written[decode] = times
        moved = fidelity(written["all"], written["sampled"])
        ratio = best["all"] / best["sampled"]
        print(
            f"{name:18} {codec[3:]:7} {fps:>3g} {gop_s:>5g} {bframes:>2} {best['all']:>13.2f} "
            f"{best['sampled']:>17.2f} {ratio:>5.1f}x {len(written['all']):>9}/{len(written['sampled']):<9} "
            f"{moved:>7.2f}"
        )
        figures[name] = {
            "all_cpu_s_per_min": round(best["all"], 3),
            "sampled_cpu_s_per_min": round(best["sampled"], 3),
            "ratio": round(ratio, 2),
            "sampled_moved_s": round(moved, 3),
        }
    figures |= {
        "goal": {"h264_gop1": 10, "h264_gop2": 2},
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "pyav": av.__version__,
        "load_average_before": round(load, 2),
        "rounds": rounds,
    }
    print(json.dumps(figures))
    return 0


def fidelity_report(every: list[float], sampled: list[float], end: float, fps: float = 1.0) -> dict[str, Any]:
    """Sample by sample, over the grid times before ``end`` less a sampling period (both runs reached
    them): the frame the sampler keeps of every frame (``every``, what ``"all"`` writes) against what
    ``"sampled"`` wrote for the same moment: how many are the same frame (same pts), how many moved
    and by how much, and moments one side has and the other lacks."""
    last = (end - 1 / fps) * fps  # grid times before it are reached by both runs
    grid = SampleGrid(fps)
    chosen = {b: t for t in every if (b := grid.offer(t)) is not None and b < last}
    grid = SampleGrid(fps)
    got = {b: t for t in sampled if (b := grid.offer(t, keep=True)) is not None and b < last}
    common = [b for b in chosen if b in got]
    moved = [abs(got[b] - chosen[b]) for b in common]
    different = [m for m in moved if m > 1e-6]
    return {
        "samples": len(chosen),
        "same": len(moved) - len(different),
        "moved": len(different),
        "max_moved_s": round(max(moved, default=0.0), 4),
        "mean_moved_s": round(statistics.fmean(different), 4) if different else 0.0,
        "missing": sum(1 for b in chosen if b not in got),
        "extra": sum(1 for b in got if b not in chosen),
    }


FIDELITY_CLIPS = ("h264_gop1_b3", "h264_gop1_b0", "h264_gop10_b3", "h264_gop10_b0", "cctv_10fps_gop25")


def fidelity_main(workdir: Path, minutes: float, inputs: list[Path], names: list[str]) -> int:
    """``--fidelity-minutes``: each clip looped to ``minutes`` of stream through the real capture path
    (``Capture`` from the file, as fast as it decodes, into a real ring) under both modes."""
    workdir.mkdir(parents=True, exist_ok=True)
    clips: list[tuple[str, Path]] = []
    for name in names:
        codec, fps, seconds, gop_s, bframes, cctv = CLIPS[name]
        path = workdir / f"decode_{name}_{SIZE[0]}x{SIZE[1]}_{seconds:g}s.mp4"
        clips.append((name, make_clip(path, codec, fps, seconds, gop_s, bframes, cctv)))
    clips += [(path.stem, path) for path in inputs]
    stream_s = minutes * 60
    load = os.getloadavg()[0]
    print(
        f'sampled-frame fidelity over {minutes:g} min of stream per clip (looped), decode = "all" vs '
        f'"sampled" at 1 fps, through Capture into a real ring; {cpu_model()}, {os.cpu_count()} CPUs; '
        f"load average {load:.1f} before"
    )
    print(
        f"{'clip':22} {'GOP s':>5} {'B':>3} {'samples':>7} {'same pts':>8} {'moved':>5} {'max moved s':>11} "
        f"{'missing':>7} {'extra':>5} {'written all/sampled':>19} {'load':>5}"
    )
    figures: dict[str, Any] = {}
    for name, path in clips:
        gop, bframes = _gop(path), _has_bframes(path)
        decoded: dict[str, int] = {}
        written: dict[str, list[float]] = {}
        for decode in ("all", "sampled"):
            written[decode], _ = capture_cost(path, decode, stream_s)
            decoded[decode] = len(written[decode])
        report = fidelity_report(written["all"], written["sampled"], stream_s)
        report |= {"gop_s": gop, "bframes": bframes, "load_average": round(os.getloadavg()[0], 2)}
        print(
            f"{name:22} {gop:>5.2g} {'yes' if bframes else 'no':>3} {report['samples']:>7} "
            f"{report['same']:>8} {report['moved']:>5} {report['max_moved_s']:>11.3f} "
            f"{report['missing']:>7} {report['extra']:>5} {decoded['all']:>9}/{decoded['sampled']:<9} "
            f"{report['load_average']:>5.1f}",
            flush=True,
        )
        figures[name] = report
    print(
        json.dumps({"fidelity": figures, "minutes": minutes, "cpu": cpu_model(), "load_average_before": load})
    )
    return 0


def _gop(path: Path) -> float:
    """The clip's longest keyframe interval in seconds."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        keys = [float(p.pts * p.time_base) for p in container.demux(video) if p.size and p.is_keyframe]
    return max((b - a for a, b in zip(keys, keys[1:], strict=False)), default=0.0)


def _has_bframes(path: Path) -> bool:
    """Whether frames leave the decoder in another order than their packets came (B-frames)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        packets = [p.pts for p in container.demux(video) if p.size and p.pts is not None][:100]
    return packets != sorted(packets)


# -- cameras per box -------------------------------------------------------------------------------
def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def looped_copy(clip: Path, seconds: float) -> Path:
    """The clip repeated (remuxed, never re-encoded) to at least ``seconds``: what the RTSP server
    plays, since a served file ends and a camera does not."""
    path = clip.with_name(f"{clip.stem}_looped_{seconds:.0f}s.mp4")
    if path.exists():
        return path
    partial = path.with_suffix(".part.mp4")
    with av.open(str(clip)) as source, av.open(str(partial), "w") as out:
        video = source.streams.video[0]
        packets = [packet for packet in source.demux(video) if packet.size and packet.pts is not None]
        span = max(p.pts + (p.duration or 0) for p in packets) - min(p.pts for p in packets)
        target = out.add_stream_from_template(video)
        loops = int(seconds / float(span * video.time_base)) + 1
        for loop in range(loops):
            for packet in packets:
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts = packet.pts + loop * span, packet.dts + loop * span
                copy.duration, copy.is_keyframe = packet.duration, packet.is_keyframe
                copy.time_base, copy.stream = packet.time_base, target
                out.mux(copy)
    partial.rename(path)
    return path


class RtspCameras:
    """tools/rtsp_server.py serving ``count`` mount points of one pre-encoded file (no re-encode)."""

    def __init__(self, clip: Path, count: int) -> None:
        server = Path(__file__).resolve().parent / "rtsp_server.py"
        args = ["/usr/bin/python3", str(server), "--port", "0", "--file", str(clip), "--mounts", str(count)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        first = line.split(" ", 1)[1]
        self.urls = [first[: -len("0")] + str(index) for index in range(count)]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def camera_run(
    clip: Path, count: int, decode: str, seconds: float, server: RtspCameras | None = None, nice: int = 0
) -> dict[str, Any]:
    """``count`` live cameras for ``seconds`` after all are live: the clip paced and looped, or the
    RTSP ``server``'s mount points."""
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    rings = [
        FrameRing.create(ring_name(uuid.uuid4().hex, f"cam{i}"), slots=8, max_height=1344, max_width=1344)
        for i in range(count)
    ]
    options = SourceOptions(loop=True, decode=decode, sample_fps=1.0, nice=nice)
    procs = [
        spawn.Process(
            target=capture_main,
            args=(f"cam{i}", server.urls[i] if server else str(clip), ring.name, None, options, stop),
            daemon=True,
        )
        for i, ring in enumerate(rings)
    ]
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + 60 + 5 * count
        while any(ring.head_seq < 0 for ring in rings):  # all live
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} cameras: not all live within {deadline:.0f} s")
            time.sleep(0.1)
        samplers = [Sampler(fps=1.0, window=16, stride=4, presampled=decode == "sampled") for _ in rings]
        cursors = [ring.head_seq for ring in rings]
        first: list[tuple[float, float] | None] = [None] * count  # (wall, stream time) at the start
        last: list[tuple[float, float] | None] = [None] * count
        buckets: list[list[int]] = [[] for _ in rings]
        cpu_before = sum(_cpu_s(p.pid or 0) for p in procs)
        server_before = _cpu_s(server.proc.pid) if server else 0.0
        reader_before = time.process_time()  # this process: the frame tap's work
        lags: list[float] = []  # wall time from decode to the reader, of the sampled frames
        started = time.monotonic()
        looked = started  # when the reader last looked at the rings: a long gap is the reader's lag
        reader_gap = 0.0
        while time.monotonic() - started < seconds:
            idle = True
            reader_gap, looked = max(reader_gap, time.monotonic() - looked), time.monotonic()
            for i, ring in enumerate(rings):
                head = ring.head_seq
                for seq in range(max(cursors[i] + 1, head - ring.slots + 1), head + 1):
                    info = ring.info(seq)
                    if info is None:
                        continue
                    idle = False
                    now = time.time()
                    first[i] = first[i] or (now, info.pts)
                    last[i] = (now, info.pts)
                    sample, _ = samplers[i].offer(seq, info.pts, info.wall)
                    if sample is not None and ring.read(seq) is not None:
                        buckets[i].append(sample.bucket)
                        lags.append(now - info.wall)
                cursors[i] = head
            if idle:
                time.sleep(0.01)
        cpu = sum(_cpu_s(p.pid or 0) for p in procs) - cpu_before
        server_cpu = (_cpu_s(server.proc.pid) - server_before) if server else 0.0
        reader_cpu = time.process_time() - reader_before
        load = os.getloadavg()[0]
        pss = [_pss_kib(p.pid or 0) for p in procs]
        ring_mib = (Path("/dev/shm") / rings[0].name).stat().st_size / 2**20
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        for ring in rings:
            ring.close()
            ring.unlink()
    missed = [max(0, b[-1] - b[0] + 1 - len(b)) if b else 1 for b in buckets]
    behind = []
    for start, end in zip(first, last, strict=True):
        if start is None or end is None:
            behind.append(float("inf"))
        else:
            behind.append((end[0] - start[0]) - (end[1] - start[1]))
    return {
        "cameras": count,
        "decode": decode,
        "sustained": max(missed) == 0 and max(behind) < 1.0 and max(lags, default=float("inf")) < 1.0,
        "missed_samples": sum(missed),
        "worst_behind_s": round(max(behind), 2),
        "cpu_share": round(cpu / seconds / (os.cpu_count() or 1), 3),
        "server_cpu_share": round(server_cpu / seconds / (os.cpu_count() or 1), 3),
        "reader_cpu_share": round(reader_cpu / seconds / (os.cpu_count() or 1), 3),
        "reader_longest_gap_s": round(reader_gap, 3),
        "worst_lag_s": round(max(lags, default=float("inf")), 3),
        "load_average": round(load, 2),
        "pss_mib_per_camera": round(statistics.median(pss) / 1024, 1),
        "ring_mib_per_camera": round(ring_mib, 1),
    }


def gop1_clip(workdir: Path) -> Path:
    """The 1080p 25-fps H.264 clip with a 1-s GOP and B-frames: what a typical IP camera sends."""
    codec, fps, clip_s, gop_s, bframes, cctv = CLIPS["h264_gop1_b3"]
    return make_clip(
        workdir / f"decode_h264_gop1_b3_{SIZE[0]}x{SIZE[1]}_{clip_s:g}s.mp4",
        codec,
        fps,
        clip_s,
        gop_s,
        bframes,
        cctv,
    )


def cameras_main(
    workdir: Path, counts: list[int], seconds: float, modes: list[str], rtsp: bool = False, nice: int = 0
) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    clip = gop1_clip(workdir)
    # The served file outlasts the slowest start (the live deadline in camera_run) plus the window.
    served = looped_copy(clip, 60 + 5 * max(counts) + seconds + 10) if rtsp else clip
    how = "RTSP from one GStreamer server (one mount each, the file re-served as is)" if rtsp else "files"
    load = os.getloadavg()[0]
    print(
        f"cameras per box: 1080p 25-fps H.264 (1-s GOP, B-frames) {how} played as live, 1-fps sampling, "
        f"captures at nice {nice}; "
        f"{cpu_model()}, {os.cpu_count()} CPUs; load average {load:.1f} before; {seconds:g} s each"
    )
    print(
        f"{'decode':8} {'cameras':>7} {'sustained':>9} {'missed':>6} {'behind s':>8} {'lag s':>6} "
        f"{'cpu share':>9} {'server cpu':>10} {'reader cpu':>10} {'PSS MiB/cam':>11} {'ring MiB/cam':>12} "
        f"{'load':>5}"
    )
    results = []
    for decode in modes:
        for count in counts:
            server = RtspCameras(served, count) if rtsp else None
            try:
                result = camera_run(clip, count, decode, seconds, server, nice)
            finally:
                if server is not None:
                    server.close()
            results.append(result | {"rtsp": rtsp, "capture_nice": nice})
            print(
                f"{decode:8} {count:>7} {str(result['sustained']):>9} {result['missed_samples']:>6} "
                f"{result['worst_behind_s']:>8.2f} {result['worst_lag_s']:>6.2f} {result['cpu_share']:>9.0%} "
                f"{result['server_cpu_share']:>10.0%} {result['reader_cpu_share']:>10.0%} "
                f"{result['pss_mib_per_camera']:>11.1f} "
                f"{result['ring_mib_per_camera']:>12.1f} {result['load_average']:>5.1f}",
                flush=True,
            )
            print(f"         reader's longest gap between looks: {result['reader_longest_gap_s']:.2f} s")
            if not result["sustained"]:
                break  # more cameras will not do better
    best = {
        mode: max((r["cameras"] for r in results if r["decode"] == mode and r["sustained"]), default=0)
        for mode in modes
    }
    print(
        json.dumps(
            {
                "most_cameras_sustained": best,
                "source": "rtsp" if rtsp else "file",
                "runs": results,
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "load_average_before": round(load, 2),
                "seconds": seconds,
            }
        )
    )
    return 0
