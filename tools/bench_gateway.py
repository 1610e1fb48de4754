#!/usr/bin/env python3
"""Benchmark the websocket gateway: many clients on loopback receiving captions from the real bus.

The gateway runs as its own process (``gateway_main``, as ``vidnarrate run`` starts it), reading a
real zmq publisher in this process that sends captions at ``--rate`` per second, each stamped with
its publish wall time. The websocket clients live in ``--procs`` separate processes, several hundred
connections each on one asyncio loop, and record publish -> receive latency. Two phases:

1. every client reads;
2. ``--slow-fraction`` of the clients never read at all (tiny receive buffers, so their backpressure
   reaches the gateway within seconds): the measurement starts once the gateway reports them behind
   (messages queued for them because their sockets are full); the readers' latency must barely move.

Reported per phase: p50/p99/max delivery latency over the readers, messages each reader missed,
the gateway's CPU (% of one core, from /proc/<pid>/stat) and the clients' CPU, the clients the
gateway had fallen behind for, and its drop / slow-close counters. A table, then one JSON line.
The clients are real websocket clients kept thin (see below): on a 2-core machine they share the
CPU with the gateway, and their cost is part of every latency figure.

    .venv/bin/python tools/bench_gateway.py                 # 1000 clients, 10 msg/s, 15 s per phase
    .venv/bin/python tools/bench_gateway.py --clients 100 --duration 3   # a quick look
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine_info import cpu_model  # noqa: E402

from stream import messages  # noqa: E402
from stream.bus import Publisher, RunPaths  # noqa: E402
from stream.gateway import gateway_main  # noqa: E402
from stream.gateway_options import GatewayOptions  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# A realistic dense caption is a few hundred characters.
CAPTION_TEXT = (
    "A person in a red jacket walks from the left edge of the frame toward the parked van, "
    "stops beside the rear door, looks over their shoulder at the street and then opens the "
    "door with their right hand. Two cyclists pass behind them in the bike lane; the traffic "
    "light at the far corner turns green and a delivery truck starts to move. "
) * 2


# -- client processes ------------------------------------------------------------------------------
# The clients are measuring instruments. Each is a real websocket client (websockets' Sans-I/O
# ClientProtocol: the handshake is checked, frames are parsed), but thin: no task and no future per
# message and only the timestamp is read, so that on a small machine the figures show the gateway
# rather than the cost of 500 Python clients per process.

# A caption's wall_end is its publish time here; measured captions name the model "bench-measure".
_WALL_KEY = b'"wall_end":'
_MEASURE = b'"model":"bench-measure"'


class _BenchClient(asyncio.Protocol):
    def __init__(self, uri: str, latencies: array.array, counts: list[int], *, read: bool) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.ws = ClientProtocol(parse_uri(uri), max_size=None)
        self.latencies = latencies
        self.counts = counts
        self.read = read
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        now = time.time()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT and _MEASURE in event.data:
                    at = event.data.index(_WALL_KEY) + len(_WALL_KEY)
                    end = min(i for i in (event.data.find(b",", at), event.data.find(b"}", at)) if i > 0)
                    self.latencies.append(now - float(event.data[at:end]))
                    self.counts[0] += 1
            elif isinstance(event, Response) and not self.opened.done():
                if self.ws.handshake_exc is not None:
                    self.opened.set_exception(self.ws.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()

    def send_text(self, text: str) -> None:
        self.ws.send_text(text.encode())
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))


def clients_main(
    port: int, count: int, slow: int, ready: Any, stop: Any, results: Any, received: Any
) -> None:
    """``count`` websocket clients on one loop; the first ``slow`` of them never read. ``received``
    (a shared integer) follows how many measured messages they have received."""
    _raise_nofile(count + 256)
    asyncio.run(_clients(port, count, slow, ready, stop, results, received))


async def _clients(
    port: int, count: int, slow: int, ready: Any, stop: Any, results: Any, received: Any
) -> None:
    loop = asyncio.get_running_loop()
    uri = f"ws://127.0.0.1:{port}/ws"
    subscribe = json.dumps({"type": "subscribe", "streams": "*"})
    gate = asyncio.Semaphore(64)  # handshakes in flight
    latencies = array.array("d")
    counts = [0]

    async def open_one(index: int) -> _BenchClient:
        reads = index >= slow
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if not reads:  # a tiny receive window: its backpressure reaches the gateway within seconds
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        async with gate:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, client = await loop.create_connection(
                lambda: _BenchClient(uri, latencies, counts, read=reads), sock=sock
            )
            await asyncio.wait_for(client.opened, 120)
            client.send_text(subscribe)
        if not reads:
            assert client.transport is not None
            client.transport.pause_reading()  # and never again
        return client

    clients = await asyncio.gather(*(open_one(i) for i in range(count)))
    cpu_start, wall_start = time.process_time(), time.monotonic()
    ready.put(count)
    while not stop.is_set():
        received.value = counts[0]
        await asyncio.sleep(0.05)
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    for client in clients:
        if client.transport is not None:
            client.transport.abort()  # a non-reading client cannot do a closing handshake
    results.put(
        {
            "latencies": latencies.tobytes(),
            "received": counts[0],
            "readers": sum(1 for c in clients if c.read),
            "cpu_s": cpu,
            "wall_s": wall,
        }
    )


# -- measurements ----------------------------------------------------------------------------------


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(needed, soft), hard), hard))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime (fields 14, 15)


def _health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        return json.loads(response.read())


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_gateway: timed out waiting for {what}")
        time.sleep(0.1)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def run_phase(
    name: str,
    *,
    port: int,
    gateway_pid: int,
    publisher: Publisher,
    args: argparse.Namespace,
    slow_total: int,
    seq_start: int,
) -> tuple[dict[str, Any], int]:
    context = mp.get_context("spawn")
    per_proc = [
        args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)
    ]
    slow_per_proc = [
        slow_total // args.procs + (1 if i < slow_total % args.procs else 0) for i in range(args.procs)
    ]
    ready, results, stop = context.Queue(), context.Queue(), context.Event()
    received = [context.Value("q", 0, lock=False) for _ in per_proc]
    procs = [
        context.Process(target=clients_main, args=(port, n, s, ready, stop, results, got), daemon=True)
        for n, s, got in zip(per_proc, slow_per_proc, received, strict=True)
    ]
    connect_started = time.monotonic()
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        _wait(lambda: _health(port)["clients"] >= args.clients, 60, "every client to be connected")
        connect_s = time.monotonic() - connect_started
        before = _health(port)
        seq = seq_start
        interval = 1.0 / args.rate

        def publish(until: float, measure: bool) -> int:
            nonlocal seq
            sent = 0
            next_at = time.monotonic()
            while next_at < until:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.time()
                message = messages.Caption(
                    stream=f"cam{seq % 4}",
                    seq=seq,
                    t_start=float(seq),
                    t_end=seq + 16.0,
                    frame_times=[float(seq + i) for i in range(16)],
                    wall_start=now - 16.0,
                    wall_end=now,
                    text=CAPTION_TEXT,
                    model="bench-measure" if measure else "bench",
                    latency_ms=0.0,
                )
                publisher.send(message)
                seq += 1
                sent += 1
                next_at += interval
            return sent

        publish(time.monotonic() + args.warmup, measure=False)
        # Non-readers first fill their socket buffers; measure once the gateway is queueing for them.
        fill_started = time.monotonic()
        while slow_total and _health(port)["clients_behind"] < slow_total:
            if time.monotonic() - fill_started > args.fill_timeout:
                print(
                    f"  only {_health(port)['clients_behind']} of {slow_total} non-readers are behind "
                    f"after {args.fill_timeout:g} s; measuring anyway",
                    file=sys.stderr,
                )
                break
            publish(time.monotonic() + 1.0, measure=False)
        fill_s = time.monotonic() - fill_started
        load_before = os.getloadavg()[0]
        cpu0, wall0 = _cpu_seconds(gateway_pid), time.monotonic()
        sent = publish(wall0 + args.duration, measure=True)
        cpu1, wall1 = _cpu_seconds(gateway_pid), time.monotonic()
        during = _health(port)
        load_after = os.getloadavg()[0]
        # Every reader should get every measured message; a missing one is counted below, not waited for.
        expected = sent * (args.clients - slow_total)
        arrival_deadline = time.monotonic() + 5.0
        while sum(got.value for got in received) < expected and time.monotonic() < arrival_deadline:
            time.sleep(0.05)
        after = _health(port)
        stop.set()
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    _wait(lambda: _health(port)["clients"] == 0, 30, "the clients to be gone")

    latencies: list[float] = []
    for report in reports:
        values = array.array("d")
        values.frombytes(report["latencies"])
        latencies.extend(values)
    readers = sum(r["readers"] for r in reports)
    received = sum(r["received"] for r in reports)
    ms = [v * 1000 for v in latencies]
    figures = {
        "phase": name,
        "clients": args.clients,
        "readers": readers,
        "not_reading": args.clients - readers,
        "rate_per_s": args.rate,
        "published": sent,
        "delivered": received,
        "missed_per_reader": round((sent * readers - received) / readers, 3) if readers else None,
        "p50_ms": round(_percentile(ms, 50), 2),
        "p99_ms": round(_percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "gateway_cpu_pct": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
        # Gateway CPU per message per client: unlike latency, barely moved by other load on the machine.
        "gateway_cpu_us_per_delivery": round(1e6 * (cpu1 - cpu0) / (sent * args.clients), 2)
        if sent
        else None,
        "clients_cpu_pct": round(100 * sum(r["cpu_s"] / r["wall_s"] for r in reports), 1),
        "connect_s": round(connect_s, 2),
        "fill_s": round(fill_s, 1),
        "clients_behind": during["clients_behind"],
        "queued_messages": during["queued_messages"],
        "gateway_dropped": after["dropped_messages"] - before["dropped_messages"],
        "gateway_slow_closed": after["slow_clients_closed"] - before["slow_clients_closed"],
        # The 1-minute load average around the measurement: latency here includes waiting for a CPU.
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
    }
    return figures, seq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="websocket clients (default 1000)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--rate", type=float, default=10.0, help="captions per second (default 10)")
    parser.add_argument(
        "--duration", type=float, default=15.0, help="measured seconds per phase (default 15)"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument(
        "--slow-fraction", type=float, default=0.1, help="clients that never read in phase 2 (default 0.1)"
    )
    parser.add_argument(
        "--client-queue", type=int, default=256, help="gateway per-client queue (default 256)"
    )
    parser.add_argument(
        "--send-buffer",
        type=int,
        default=16 * 1024,
        help="the gateway's per-client kernel send buffer in bytes (default 16384, so that "
        "non-readers fall behind within seconds; the gateway's own default is 262144)",
    )
    parser.add_argument(
        "--fill-timeout",
        type=float,
        default=30.0,
        help="phase 2: at most this long to wait for the non-readers to fall behind (default 30)",
    )
    args = parser.parse_args(argv)
    if args.clients < args.procs or args.procs < 1 or args.rate <= 0 or not 0 <= args.slow_fraction < 1:
        parser.error("need clients >= procs >= 1, rate > 0 and 0 <= slow-fraction < 1")
    _raise_nofile(args.clients + 256)

    run = RunPaths.create()
    publisher = Publisher(run.publisher_endpoint("bench"))
    context = mp.get_context("spawn")
    stop_gateway = context.Event()
    ready_file = run.run_dir / "gateway.json"
    gateway = context.Process(
        target=gateway_main,
        args=([publisher.endpoint], None),
        daemon=True,
        kwargs={
            "options": GatewayOptions(
                port=0,
                client_queue=args.client_queue,
                send_buffer=args.send_buffer,
                max_clients=args.clients + 100,
            ),
            "ready_file": str(ready_file),
            "stop_event": stop_gateway,
        },
    )
    gateway.start()
    phases: list[dict[str, Any]] = []
    try:
        _wait(ready_file.exists, 60, "the gateway to start")
        port = json.loads(ready_file.read_text())["port"]
        if not publisher.wait_for_subscriber(10.0):
            raise SystemExit("bench_gateway: the gateway never subscribed to the bus")
        assert gateway.pid is not None
        seq = 0
        slow = round(args.clients * args.slow_fraction)
        plan = [("all reading", 0)] + ([(f"{slow} not reading", slow)] if slow else [])
        for name, slow_count in plan:
            print(f"phase {name!r}: connecting {args.clients} clients ...", file=sys.stderr, flush=True)
            figures, seq = run_phase(
                name,
                port=port,
                gateway_pid=gateway.pid,
                publisher=publisher,
                args=args,
                slow_total=slow_count,
                seq_start=seq,
            )
            phases.append(figures)
    finally:
        stop_gateway.set()
        gateway.join(15)
        if gateway.is_alive():
            gateway.kill()
            gateway.join(5)
        publisher.close()
        run.remove()

    header = [
        "phase",
        "readers",
        "msg/s",
        "delivered",
        "missed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "gw CPU %",
        "gw us/delivery",
        "clients CPU %",
        "behind",
        "dropped",
        "closed",
        "load 1m",
    ]
    rows = [
        [
            p["phase"],
            p["readers"],
            f"{p['rate_per_s']:g}",
            p["delivered"],
            p["missed_per_reader"],
            p["p50_ms"],
            p["p99_ms"],
            p["max_ms"],
            p["gateway_cpu_pct"],
            p["gateway_cpu_us_per_delivery"],
            p["clients_cpu_pct"],
            p["clients_behind"],
            p["gateway_dropped"],
            p["gateway_slow_closed"],
            "-".join(f"{x:.1f}" for x in p["loadavg_1m"]),
        ]
        for p in phases
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    machine = cpu_model()
    print(
        f"gateway fan-out: {args.clients} websocket clients in {args.procs} processes, captions of "
        f"{len(CAPTION_TEXT)} chars at {args.rate:g}/s, {args.duration:g} s measured per phase; "
        f"{machine}, {os.cpu_count()} cores"
    )
    for row in [header, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))
    print(
        json.dumps(
            {
                "bench": "gateway",
                "clients": args.clients,
                "client_procs": args.procs,
                "rate_per_s": args.rate,
                "duration_s": args.duration,
                "caption_chars": len(CAPTION_TEXT),
                "cpu": machine,
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "phases": phases,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
