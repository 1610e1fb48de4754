#!/usr/bin/env python3
"""Benchmark the outputs: ``--events`` events through MQTT and a webhook, the broker restarted once
mid-way and the webhook answering 503 for a while at the same time.

The outputs process runs as ``vidnarrate run`` starts it (a supervised child reading a real zmq bus);
this process publishes the events on the bus at ``--rate`` per second, each stamped with its publish
time (``wall_end``). The peers are real: a Mosquitto broker (with persistence, restarted with
SIGTERM after half the events and started again ``--outage`` seconds later), a paho subscriber with a
persistent session (the broker keeps what arrives for it while it reconnects, so nothing is missed
on the watching side), and a stdlib HTTP server that checks each request's HMAC signature and
answers 503 during the same outage.

Reported per output: published, delivered (unique events that arrived), duplicates (QoS 1 is at least
once: an event in flight when the broker went may come twice), lost (published and never arrived),
and the outputs process's own counters (sent, failed tries, retried, dropped, most queued), and the
delivery latency (publish -> arrival) p50/p99/max over all events, and over those published before
the outage. Goal: none lost while the queue had room, every drop counted. A table, then one
JSON line.

    .venv/bin/python tools/bench_outputs.py                     # 1000 events at 100/s, a 2-s outage
    .venv/bin/python tools/bench_outputs.py --events 200 --rate 50 --outage 1   # a quick look
    .venv/bin/python tools/bench_outputs.py --queue 100         # a queue too small for the outage
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tools"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from machine_info import cpu_model  # noqa: E402
from output_peers import Mosquitto, Watcher, WebhookReceiver, wait_until  # noqa: E402

from stream.bus import Publisher, RunPaths, Subscriber  # noqa: E402
from stream.config import MqttConfig, OutputsConfig, WebhookConfig  # noqa: E402
from stream.messages import Event, EventState, OutputsStatus  # noqa: E402
from stream.outputs import OutputsOptions, outputs_main  # noqa: E402
from stream.supervisor import ChildSpec, Supervisor  # noqa: E402

PREFIX = "bench"
SECRET = "bench-secret"


def make_event(n: int, total: int) -> Event:
    state = EventState.START if n == 0 else EventState.END if n == total - 1 else EventState.UPDATE
    now = time.time()
    return Event(
        stream="door",
        rule="person_at_door",
        event_id=f"ev-{n}",
        state=state,
        t_start=float(n),
        t_end=float(n) + 1.0,
        wall_start=now,
        wall_end=now,  # the publish time: latency is measured from here
        score=0.9,
        text="A person in a red jacket stands at the front door and looks at the camera. " * 2,
    )


class StatusReader(threading.Thread):
    """Keeps the latest ``outputs_status`` and the most each output had queued."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.subscriber = Subscriber([endpoint])
        self.latest: dict[str, Any] = {}
        self.most_queued: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            message = self.subscriber.recv(0.1)
            if isinstance(message, OutputsStatus):
                self.latest = message.outputs
                for name, figures in message.outputs.items():
                    self.most_queued[name] = max(self.most_queued.get(name, 0), figures["queued"])
        self.subscriber.close()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="events published per second")
    parser.add_argument("--queue", type=int, default=None, help="each output's queue (default: the config's)")
    parser.add_argument(
        "--outage", type=float, default=2.0, help="seconds the broker is down (and the webhook 503s)"
    )
    parser.add_argument(
        "--settle", type=float, default=60.0, help="seconds to wait for deliveries at the end"
    )
    args = parser.parse_args()

    broker = Mosquitto(persistence=True).start()
    receiver = WebhookReceiver(secret=SECRET)
    watcher = Watcher(broker.port, f"{PREFIX}/+/event", session="bench-watcher").wait_subscribed()
    root = Path(tempfile.mkdtemp(prefix="vn-"))
    run = RunPaths.create(root=root)
    queue = {} if args.queue is None else {"queue": args.queue}
    outputs = OutputsConfig(
        webhook=(WebhookConfig(url=receiver.url, secret=SECRET, **queue),),
        mqtt=MqttConfig(host="127.0.0.1", port=broker.port, topic_prefix=PREFIX, types=("event",), **queue),
    )
    options = OutputsOptions(
        run_id=run.run_id,
        outputs=outputs,
        events_endpoints=(run.publisher_endpoint("inference"),),
        status_endpoint=run.publisher_endpoint("outputs"),
    )
    publisher = Publisher(run.publisher_endpoint("inference"))
    status = StatusReader(run.publisher_endpoint("outputs"))
    status.start()
    supervisor = Supervisor(run, stop_timeout=10.0)
    supervisor.open_bus()
    supervisor.start(ChildSpec(role="outputs", target=outputs_main, kwargs={"options": options}))
    published: dict[str, float] = {}
    outage: tuple[float, float] = (0.0, 0.0)
    try:
        assert publisher.wait_for_subscriber(30), "the outputs process did not subscribe"
        wait_until(lambda: status.latest.get("mqtt", {}).get("state") == "ok", 30, "the MQTT connection")
        start = time.monotonic()
        for n in range(args.events):
            time.sleep(max(0.0, start + n / args.rate - time.monotonic()))
            if n == args.events // 2:
                outage = (time.time(), time.time() + args.outage)
                receiver.unavailable_until = outage[1]
                broker.terminate()
                threading.Timer(args.outage, broker.start).start()
            event = make_event(n, args.events)
            publisher.send(event)
            published[event.event_id] = event.wall_end
            supervisor.poll()

        def settled() -> bool:
            supervisor.poll()
            figures = status.latest
            return bool(figures) and all(f["queued"] == 0 for f in figures.values())

        wait_until(lambda: broker.proc is not None, 30, "the broker's restart")
        wait_until(settled, args.settle, "every output's queue to empty")
        # What the broker acknowledged reaches the watcher a moment later.
        expected = len(published) - status.latest["mqtt"]["dropped"]
        wait_until(lambda: len({m.payload for m in watcher.messages}) >= expected, 10, "the watcher")
    except AssertionError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    finally:
        final = dict(status.latest)
        supervisor.stop()
        status.stop.set()
        status.join()
        publisher.close()
        watcher.close()
        receiver.close()
        broker.close()
        run.remove()

    def before_outage(event_id: str) -> bool:
        return published[event_id] < outage[0]

    arrivals = {
        "mqtt": [(json.loads(m.payload)["event_id"], m.at) for m in watcher.messages],
        "webhook:0": [
            (json.loads(r["body"])["event_id"], r["at"]) for r in receiver.requests if r["answer"] == 200
        ],
    }
    bad_signatures = receiver.bad_signatures
    report: dict[str, Any] = {}
    for name, got in arrivals.items():
        first: dict[str, float] = {}
        for event_id, at in got:
            first.setdefault(event_id, at)
        latencies = [at - published[e] for e, at in first.items()]
        calm = [at - published[e] for e, at in first.items() if before_outage(e)]
        counters = final.get(name, {})
        report[name] = {
            "published": len(published),
            "delivered": len(first),
            "duplicates": len(got) - len(first),
            "lost": len(set(published) - set(first)),
            "lost_ids": sorted(set(published) - set(first), key=lambda e: int(e.split("-")[1]))[:20],
            "sent": counters.get("sent"),
            "failed": counters.get("failed"),
            "retried": counters.get("retried"),
            "dropped": counters.get("dropped"),
            "most_queued": status.most_queued.get(name),
            "latency_all": percentiles(latencies),
            "latency_before_outage": percentiles(calm),
        }

    print(
        f"outputs: {args.events} events at {args.rate:g}/s; broker restarted after {args.events // 2} "
        f"(down {args.outage:g} s, the webhook 503 meanwhile); queues {args.queue or 'as configured'}"
    )
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs")
    columns = ["output", "deliv.", "dup", "lost", "sent", "failed", "retried", "dropped", "max q"]
    columns += ["p50 ms", "p99 ms", "max ms", "before: p50", "p99"]
    print(" ".join(f"{c:>11}" if c.startswith("before") else f"{c:>7}" for c in columns))
    for name, r in report.items():
        a, b = r["latency_all"], r["latency_before_outage"]
        cells = [name, r["delivered"], r["duplicates"], r["lost"], r["sent"], r["failed"], r["retried"]]
        cells += [r["dropped"], r["most_queued"], a["p50_ms"], a["p99_ms"], a["max_ms"]]
        print(" ".join(f"{c!s:>7}" for c in cells), f"{b['p50_ms']!s:>11} {b['p99_ms']!s:>7}")
    print(f"webhook requests with a bad signature: {bad_signatures}")
    figures = {
        "bench": "outputs",
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "events": args.events,
        "rate": args.rate,
        "outage_s": args.outage,
        "queue": args.queue,
        "outputs": report,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
