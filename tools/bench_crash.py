#!/usr/bin/env python3
"""Crash test of the caption store: SIGKILL a whole run mid-stream, then count what a client saw
against what the store kept.

    python tools/bench_crash.py                        # 5 kills, 3 streams
    python tools/bench_crash.py --rounds 10 --streams 8 --captions 40

Each round starts a real ``vidnarrate run --model tiny`` on ``--streams`` looped clips with the store
at one file (the same file every round: each round also opens what the previous SIGKILL left). A
websocket client records every caption it receives and when. Once it has ``--captions`` captions
(plus a random fraction of a stride, so the kill lands anywhere between two captions), the whole run
is SIGKILLed at once: its process group (the supervisor and every child) and, in case one left the
group, every pid its last ``status`` listed and every process below the supervisor; the round checks
that none of them survives. Then the
store is opened as any SQLite client would open it and each received caption is looked up.

The goal (issue 11): every caption received more than ``--margin`` (1 s) before the kill is in the
store. Captions received within the margin may still sit in the recorder's batch (it commits at most
about 0.5 s behind), so they are counted apart. Prints a table, then one JSON line; exits 1 when any
caption older than the margin is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchrun import free_port, start_run  # noqa: E402

from stream.democlip import make_video  # noqa: E402
from stream.ring import remove_stale_rings  # noqa: E402

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")


@dataclass(frozen=True)
class Seen:
    """A caption as the client received it: the store's key for it, and when it arrived."""

    stream: str
    seq: int
    wall_end: float
    received: float  # Unix seconds


@dataclass
class Round:
    received: list[Seen]
    killed_at: float
    stored: int  # of the received captions, how many the store has
    missing: list[tuple[Seen, float]]  # (caption, its age at the kill, seconds) not in the store
    margin: float
    pids: list[int] = field(default_factory=list)  # every process of the run that was killed

    @property
    def old(self) -> list[Seen]:
        """The captions received more than ``margin`` before the kill: the ones that must be stored."""
        return [s for s in self.received if self.killed_at - s.received > self.margin]

    @property
    def youngest_stored(self) -> float | None:
        """The age at the kill of the last caption received that the store has (seconds)."""
        lost = {id(s) for s, _ in self.missing}
        ages = [self.killed_at - s.received for s in self.received if id(s) not in lost]
        return min(ages) if ages else None

    @property
    def missing_old(self) -> list[tuple[Seen, float]]:
        return [(s, age) for s, age in self.missing if age > self.margin]


class Client:
    """A websocket client on its own thread: every caption with its arrival time, the last status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.captions: list[Seen] = []
        self.processes: dict[str, Any] = {}
        self.closed = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._read(),), daemon=True)

    def start(self) -> Client:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    async def _read(self) -> None:
        try:
            async with websockets.connect(self.url, max_size=None) as ws:
                await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
                async for raw in ws:
                    arrived = time.time()
                    message = json.loads(raw)
                    if message.get("type") == "caption":
                        self.captions.append(
                            Seen(message["stream"], message["seq"], message["wall_end"], arrived)
                        )
                    elif message.get("type") == "status":
                        self.processes = message["processes"]
        except (OSError, websockets.ConnectionClosed):
            pass  # the run was killed under it: the point of the exercise
        finally:
            self.closed.set()


def make_clips(folder: Path, count: int) -> list[Path]:
    clip = folder / "clip.mp4"
    if not clip.exists():
        make_video(clip, width=320, height=240, fps=25.0, seconds=12.0)
    return [clip] * count


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent's wait() is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc): the children and anything they started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def crash_round(
    clips: list[Path],
    store: Path,
    run_root: Path,
    *,
    captions: int,
    margin: float = 1.0,
    stride: float = 2.0,
    timeout: float = 600.0,
    rng: random.Random | None = None,
) -> Round:
    """One run, killed once ``captions`` captions have arrived (within ``timeout`` seconds of its
    start); what the store kept of them."""
    rng = rng or random.Random()
    port = free_port()
    args = [str(VIDNARRATE), "run", "--model", "tiny", "--port", str(port), "--store", str(store), "--loop"]
    args += ["--window", str(2 * stride), "--stride", str(stride), "--log-level", "WARNING"]
    args += ["--set", "captions.max_new_tokens=6", "--set", "captions.thumbnail_side=160"]
    for i, clip in enumerate(clips):
        args += ["--source", f"cam{i}={clip}"]
    proc, ready = start_run(args, run_root)
    client: Client | None = None
    try:
        deadline = time.monotonic() + timeout
        if not ready.wait(timeout):
            raise RuntimeError(f"vidnarrate run printed no viewer URL in {timeout:.0f} s")
        client = Client(f"ws://127.0.0.1:{port}/ws").start()
        while len(client.captions) < captions or not client.processes:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the run exited with {proc.returncode} after {len(client.captions)} captions"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(client.captions)} of {captions} captions in {timeout:.0f} s")
            time.sleep(0.05)
        # Land anywhere between two captions of a stream, not just after one.
        time.sleep(rng.uniform(0.0, stride))
        reported = {p["pid"] for p in client.processes.values() if p.get("pid")}
        pids = sorted({proc.pid} | reported | set(descendants(proc.pid)))
        killed_at = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
        client.closed.wait(30)
        # Children are reaped by init once their parent is gone; give that a moment on a busy box.
        gone_by = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < gone_by:
            time.sleep(0.05)
        survivors = [pid for pid in pids if alive(pid)]
        if survivors:
            raise RuntimeError(f"processes of the run survived SIGKILL: {survivors}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
        if client is not None:
            client.join(10)
        remove_stale_rings()  # the shared memory a SIGKILLed run leaves (its run dir is in run_root)
    received = [s for s in client.captions if s.received < killed_at]
    with contextlib.closing(sqlite3.connect(store)) as db:  # recovers the WAL the kill left
        rows = db.execute("SELECT stream, seq, wall_end FROM messages WHERE kind = 'caption'").fetchall()
    kept = {(stream, seq, wall_end) for stream, seq, wall_end in rows}
    missing = [(s, killed_at - s.received) for s in received if (s.stream, s.seq, s.wall_end) not in kept]
    return Round(received, killed_at, len(received) - len(missing), missing, margin, pids)


def main() -> int:
    from machine_info import cpu_model  # tools/ is on the path when this runs as a script

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs to kill (default 5)")
    parser.add_argument("--streams", type=int, default=3, help="looped clips per run (default 3)")
    parser.add_argument(
        "--captions", type=int, default=12, help="captions received before a kill (default 12)"
    )
    parser.add_argument("--margin", type=float, default=1.0, help="seconds before the kill (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="vn-crash-") as work:
        folder = Path(work)
        clips = make_clips(folder, args.streams)
        store = folder / "store" / "crash.db"
        for i in range(args.rounds):
            r = crash_round(clips, store, folder, captions=args.captions, margin=args.margin, rng=rng)
            rounds.append(r)
            print(f"round {i + 1}: {len(r.received)} received, {len(r.missing)} missing", file=sys.stderr)
    print(f"crash test: {args.rounds} SIGKILLs of a whole run, {args.streams} streams, tiny model")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs")
    header = (
        "round",
        "procs",
        "received",
        "stored",
        "missing",
        f">{args.margin:g} s old",
        "youngest stored s",
    )
    print("{:>5} {:>5} {:>8} {:>6} {:>7} {:>9} {:>17} {}".format(*header, "missing: age at the kill, s"))
    for i, r in enumerate(rounds, 1):
        ages = ", ".join(f"{age:.2f}" for _, age in sorted(r.missing, key=lambda m: m[1])) or "-"
        young = "-" if r.youngest_stored is None else f"{r.youngest_stored:.2f}"
        cells = (i, len(r.pids), len(r.received), r.stored, len(r.missing), len(r.old), young, ages)
        print("{:5} {:5} {:8} {:6} {:7} {:9} {:>17} {}".format(*cells))
    missing_ages = [age for r in rounds for _, age in r.missing]
    figures = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "streams": args.streams,
        "margin_s": args.margin,
        "received": sum(len(r.received) for r in rounds),
        "stored": sum(r.stored for r in rounds),
        "missing": len(missing_ages),
        "received_before_margin": sum(len(r.old) for r in rounds),
        "missing_before_margin": sum(len(r.missing_old) for r in rounds),
        "max_missing_age_s": round(max(missing_ages), 3) if missing_ages else None,
        "youngest_stored_age_s": min(
            (round(r.youngest_stored, 3) for r in rounds if r.youngest_stored is not None), default=None
        ),
    }
    verdict = "every" if not figures["missing_before_margin"] else "NOT every"
    print(f"{verdict} caption received more than {args.margin:g} s before the kill is in the store")
    print(json.dumps(figures))
    return 1 if figures["missing_before_margin"] else 0


if __name__ == "__main__":
    sys.exit(main())
