"""FrameRing across real processes (spawn, as the app uses) on real shared memory.

Torn-read detection, lossless delivery to slow readers, crashed readers and writers, stale segments
of a SIGKILLed run, and no resource_tracker noise or leaked /dev/shm entries.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.ring import FrameRing, remove_stale_rings, ring_name

REPO_ROOT = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux) to check for leaks"),
]

CTX = mp.get_context("spawn")
H, W = 120, 160
PERIOD = 251  # frame content repeats every PERIOD seqs (7 * k is never 0 mod 251 for small k)


# -- frames whose every byte derives from their seq ------------------------------------------------


def shape_for(seq: int) -> tuple[int, int]:
    k = seq % PERIOD
    return H - k % 3, W - k % 5


def frame_for(seq: int) -> np.ndarray:
    h, w = shape_for(seq)
    base = np.arange(h)[:, None, None] * 3 + np.arange(w)[None, :, None] + np.arange(3)[None, None, :]
    return ((base + (seq % PERIOD) * 7) % PERIOD).astype(np.uint8)


def frame_pool() -> list[np.ndarray]:
    """frame_for(seq) is pool[seq % PERIOD]: precomputed so the writer runs at full speed."""
    return [frame_for(k) for k in range(PERIOD)]


# -- child process mains (module level: spawn imports this module) ---------------------------------


def live_writer(name: str, progress: list[Any], enough: int, conn: Connection) -> None:
    """Lap the ring as fast as possible until every reader has checked ``enough`` frames (60 s at most)."""
    ring = FrameRing.attach(name)
    pool = frame_pool()
    conn.send("ready")
    conn.recv()
    written = 0
    end = time.monotonic() + 60
    while time.monotonic() < end and min(p.value for p in progress) < enough:
        seq = ring.head_seq + 1
        assert ring.write(pool[seq % PERIOD], seq / 30, time.time()) == seq
        written += 1
    ring.mark_ended()
    conn.send(written)
    ring.close()


def checking_reader(name: str, how: str, progress: Any, conn: Connection) -> None:
    """Read until the ring ends, checking every frame against the pattern its seq implies."""
    ring = FrameRing.attach(name)
    pool = frame_pool()
    conn.send("ready")
    stats = {"ok": 0, "bad": 0, "gone": 0, "shapes": set()}

    def check(frame: Any) -> None:
        if frame is None:
            stats["gone"] += 1
            return
        good = np.array_equal(frame.image, pool[frame.seq % PERIOD]) and frame.pts == frame.seq / 30
        stats["ok" if good else "bad"] += 1
        stats["shapes"].add(frame.image.shape)
        progress.value += 1

    last = -1
    while not (ring.ended and ring.head_seq <= last):
        head = ring.head_seq
        if head < 0:
            time.sleep(0.001)
            continue
        if how == "latest":
            frame = ring.latest()
            check(frame)
            if head - ring.slots + 1 >= 0:  # the oldest frame: the slot the writer takes next
                check(ring.read(head - ring.slots + 1))
                info = ring.info(head - ring.slots + 1)
                if info is not None:  # metadata only: as consistent as a full read
                    good = (info.height, info.width) == shape_for(info.seq) and info.pts == info.seq / 30
                    stats["ok" if good else "bad"] += 1
            last = frame.seq
        else:
            frames = ring.since(last)
            for f in frames:
                check(f)
            last = frames[-1].seq if frames else last
    stats["shapes"] = len(stats["shapes"])
    conn.send(stats)
    ring.close()


def lossless_reader(name: str, max_delay: float, conn: Connection) -> None:
    ring = FrameRing.attach(name)
    rid = ring.register_reader()
    pool = frame_pool()
    conn.send("ready")
    seqs, bad, last = [], 0, -1
    rng = random.Random(max_delay)
    while ring.wait_for(last, timeout=30):
        frame = ring.read(last + 1)
        if frame is None:  # lossless must never lose one: record and resync to show the gap
            seqs.append(-1)
            last = ring.head_seq
            continue
        bad += not np.array_equal(frame.image, pool[frame.seq % PERIOD])
        seqs.append(frame.seq)
        last = frame.seq
        ring.release(rid, last)
        time.sleep(rng.uniform(0, max_delay))
    conn.send({"seqs": seqs, "bad": bad})
    ring.close()


def counted_writer(name: str, count: int, conn: Connection) -> None:
    ring = FrameRing.attach(name)
    pool = frame_pool()
    seqs = [ring.write(pool[seq % PERIOD], seq / 30, time.time(), timeout=30) for seq in range(count)]
    ring.mark_ended()
    conn.send(seqs)
    ring.close()


def endless_writer(name: str, conn: Connection) -> None:
    ring = FrameRing.attach(name)
    pool = frame_pool()
    while True:
        seq = ring.head_seq + 1
        ring.write(pool[seq % PERIOD], seq / 30, time.time())
        if seq == 20:
            conn.send("ready")


def hanging_reader(name: str, conn: Connection) -> None:
    ring = FrameRing.attach(name)
    conn.send(ring.register_reader())
    time.sleep(120)


def creator_that_gets_killed(name: str, conn: Connection) -> None:
    ring = FrameRing.create(name, slots=2, max_height=H, max_width=W)
    ring.write(frame_for(0), 0.0, time.time())
    conn.send("ready")
    time.sleep(120)


# -- fixtures ---------------------------------------------------------------------------------------

Start = Callable[..., tuple[Any, Connection]]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a spawn child with a pipe as its last argument; kill and reap leftovers at teardown."""
    procs: list[Any] = []

    def _start(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
        parent, child = CTX.Pipe()
        proc = CTX.Process(target=target, args=(*args, child), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        return proc, parent

    yield _start
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


@pytest.fixture
def run_id() -> Iterator[str]:
    """A run id for this test's rings; afterwards none of them may be left in /dev/shm."""
    rid = uuid.uuid4().hex
    yield rid
    prefix = ring_name(rid, "x")[:12]
    leaked = [p.name for p in SHM.iterdir() if p.name.startswith(prefix)]
    for name in leaked:
        (SHM / name).unlink()
    assert not leaked, f"leaked shared memory: {leaked}"


def recv(conn: Connection, timeout: float = 60) -> Any:
    assert conn.poll(timeout), "child process did not answer in time"
    return conn.recv()


def python_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter with warnings as errors, as a separate program would."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- tests ------------------------------------------------------------------------------------------


def test_child_attaches_reads_and_exits_without_tracker_noise_and_parent_keeps_the_ring(run_id: str) -> None:
    name = ring_name(run_id, "cam0")
    ring = FrameRing.create(name, slots=4, max_height=H, max_width=W)
    for seq in range(6):
        ring.write(frame_for(seq), seq / 30, 1000.0 + seq)
    reader = """
        import sys
        from stream.ring import FrameRing
        ring = FrameRing.attach(sys.argv[1])
        frames = ring.since(-1)
        print([f.seq for f in frames], int(ring.latest().image.sum()))
        del frames
        if sys.argv[2] == "close":
            ring.close()
        """
    expected = f"[2, 3, 4, 5] {int(frame_for(5).astype(np.int64).sum())}\n"
    for how in ("close", "just-exit"):  # a reader that forgets close() must not unlink or warn either
        child = python_child(reader, name, how)
        assert (child.returncode, child.stderr, child.stdout) == (0, "", expected)
        assert (SHM / name).exists()
        np.testing.assert_array_equal(ring.read(5).image, frame_for(5))
    ring.close()
    ring.unlink()
    assert not (SHM / name).exists()


def test_child_that_creates_writes_and_unlinks_is_silent(run_id: str) -> None:
    child = python_child(
        """
        import sys
        import numpy as np
        from stream.ring import FrameRing
        with FrameRing.create(sys.argv[1], slots=2, max_height=8, max_width=8) as ring:
            ring.write(np.zeros((8, 8, 3), np.uint8), 0.0, 0.0)
            with FrameRing.attach(sys.argv[1]) as again:
                assert again.latest().seq == 0
        """,
        ring_name(run_id, "cam0"),
    )
    assert (child.returncode, child.stderr) == (0, "")


def test_readers_never_get_a_torn_frame_under_heavy_overwrite(run_id: str, start: Start) -> None:
    """A writer laps a 3-slot ring as fast as it can; two readers in other processes check every byte
    of every frame they get (pattern from its seq, shape varying with it): never a mismatch."""
    name = ring_name(run_id, "cam0")
    with FrameRing.create(name, slots=3, max_height=H, max_width=W):
        progress = [CTX.Value("q", 0, lock=False) for _ in range(2)]
        readers = [
            start(checking_reader, name, how, count)
            for how, count in zip(("latest", "since"), progress, strict=True)
        ]
        for _, conn in readers:
            assert recv(conn) == "ready"
        writer, wconn = start(live_writer, name, progress, 500)
        assert recv(wconn) == "ready"
        wconn.send("go")
        written = recv(wconn)
        results = [recv(conn) for _, conn in readers]
        for proc, _ in [*readers, (writer, None)]:
            proc.join(10)
            assert proc.exitcode == 0
    assert written > 1000
    for stats in results:
        assert stats["bad"] == 0, stats
        assert stats["ok"] >= 500, stats
        assert stats["shapes"] > 1
    # The readers raced the writer for real: frames overwritten while being read were refused.
    assert sum(stats["gone"] for stats in results) > 0, results


def test_lossless_ring_delivers_every_frame_to_slow_and_fast_readers(run_id: str, start: Start) -> None:
    name = ring_name(run_id, "file")
    count = 300
    with FrameRing.create(name, slots=3, max_height=H, max_width=W, lossless=True):
        readers = [start(lossless_reader, name, delay) for delay in (0.004, 0.0)]
        for _, conn in readers:
            assert recv(conn) == "ready"
        writer, wconn = start(counted_writer, name, count)
        assert recv(wconn) == list(range(count))
        for _, conn in readers:
            result = recv(conn)
            assert result["seqs"] == list(range(count))
            assert result["bad"] == 0
        for proc, _ in [*readers, (writer, None)]:
            proc.join(10)
            assert proc.exitcode == 0


def test_live_ring_drops_oldest_for_a_slow_reader(run_id: str, start: Start) -> None:
    name = ring_name(run_id, "cam0")
    with FrameRing.create(name, slots=3, max_height=H, max_width=W) as ring:
        writer, wconn = start(counted_writer, name, 200)
        recv(wconn)
        writer.join(10)
        assert ring.read(0) is None  # overwritten long ago
        assert [f.seq for f in ring.since(-1)] == [197, 198, 199]
        assert ring.ended


def test_a_dead_reader_stops_holding_back_a_lossless_writer(
    run_id: str, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    name = ring_name(run_id, "file")
    with FrameRing.create(name, slots=2, max_height=H, max_width=W, lossless=True) as ring:
        mine = ring.register_reader()
        dead, conn = start(hanging_reader, name)
        recv(conn)
        ring.write(frame_for(0), 0.0, 0.0)
        ring.write(frame_for(1), 0.0, 0.0)
        ring.release(mine, 1)
        assert ring.write(frame_for(2), 0.0, 0.0, timeout=0.1) == -1  # the other reader has not read 0
        os.kill(dead.pid, signal.SIGKILL)
        dead.join(10)
        t0 = time.monotonic()
        assert ring.write(frame_for(2), 0.0, 0.0, timeout=10) == 2
        assert time.monotonic() - t0 < 5  # reaped within a few checks (every 0.25 s), not after the timeout
        assert f"pid {dead.pid}) died" in caplog.text


def test_restarted_writer_reattaches_and_continues_the_sequence(run_id: str, start: Start) -> None:
    """Capture killed mid-stream (possibly mid-write) and restarted: seqs continue, no torn frame."""
    name = ring_name(run_id, "cam0")
    with FrameRing.create(name, slots=4, max_height=H, max_width=W) as ring:
        first, conn = start(endless_writer, name)
        recv(conn)
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
        head = ring.head_seq
        assert head >= 20
        second, conn = start(counted_writer, name, 10)
        assert recv(conn) == list(range(head + 1, head + 11))
        second.join(10)
        frames = ring.since(-1)
        assert [f.seq for f in frames] == list(range(head + 7, head + 11))
        for f in frames:
            np.testing.assert_array_equal(f.image, frame_for(f.seq - head - 1))


def test_sigkilled_run_leaves_a_segment_that_remove_stale_rings_removes(run_id: str, start: Start) -> None:
    stale = ring_name(run_id, "cam0")
    creator, conn = start(creator_that_gets_killed, stale)
    assert recv(conn) == "ready"
    os.kill(creator.pid, signal.SIGKILL)
    # Not joined yet: a zombie (exited, unreaped) holds its pid and must count as dead.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{creator.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "killed child never became a zombie"
        time.sleep(0.01)
    assert (SHM / stale).exists()  # nobody cleaned up: the creator had no chance
    with FrameRing.create(ring_name(run_id, "live"), slots=2, max_height=8, max_width=8) as alive:
        not_a_ring = SHM / ring_name(run_id, "junk")
        not_a_ring.write_bytes(b"\0" * 8192)
        try:
            removed = remove_stale_rings()
            assert stale in removed
            assert not (SHM / stale).exists()
            assert (SHM / alive.name).exists()  # its creator (this process) is alive
            assert not_a_ring.exists() and not_a_ring.name not in removed
        finally:
            not_a_ring.unlink()
            creator.join(10)
    assert stale not in remove_stale_rings()


@pytest.mark.slow
def test_bench_ring_runs_and_ends_with_its_json_figures() -> None:
    """The benchmark tool itself (tiny frames, short runs): it must keep working, not be fast here."""
    bench = subprocess.run(
        [
            sys.executable,
            "tools/bench_ring.py",
            "--seconds",
            "0.3",
            "--rounds",
            "1",
            "--height",
            "72",
            "--width",
            "128",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bench.returncode == 0, bench.stderr
    figures = json.loads(bench.stdout.strip().splitlines()[-1])
    assert figures["ring_fps"] > 0 and figures["queue_fps"] > 0 and figures["memcpy_fps"] > 0
    assert figures["ring_bad_frames"] == figures["ring_lossless_missed"] == figures["queue_bad_frames"] == 0
    assert "ring lossless" in bench.stdout
