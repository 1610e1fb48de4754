"""The outputs process: a supervised child reading a real zmq bus, delivering to a real mosquitto and a
real local HTTP server. Synthetic ``event`` messages (start/update/end, as the alert rules publish
them) stand for the events of another part of the run; then a real ``vidnarrate run`` with the tiny
model sends its captions to a webhook and MQTT, and its ``status`` shows the outputs' counters.
A SIGKILLed outputs process leaves ``offline`` behind (the broker's last will) and is restarted."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_real_part
from liverun import LiveRun, collect, of_type, short_run_root
from realparts import load_tool

from stream.bus import Publisher, RunPaths, Subscriber
from stream.config import MqttConfig, OutputsConfig, WebhookConfig
from stream.messages import Event, EventState, OutputsStatus
from stream.outputs import OutputsOptions, outputs_main
from stream.supervisor import ChildSpec, Supervisor

pytestmark = pytest.mark.integration
peers = load_tool("output_peers")
PREFIX = "vn-proc"


def event(n: int, state: EventState, stream: str = "door", rule: str = "person") -> Event:
    return Event(
        stream=stream,
        rule=rule,
        event_id=f"{stream}-{rule}-{n // 10}",
        state=state,
        t_start=float(n),
        t_end=float(n) + 4.0,
        wall_start=1_700_000_000.0 + n,
        wall_end=1_700_000_004.0 + n,
        score=0.8,
        text=f"event {n}",
    )


@pytest.fixture
def broker() -> Iterator[Any]:
    require_real_part(peers.Mosquitto.executable() is not None, "mosquitto")
    server = peers.Mosquitto().start()
    yield server
    server.close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    server = peers.WebhookReceiver(secret="k")
    yield server
    server.close()


class Run:
    """A run directory, an ``inference`` publisher, and the outputs child under a real supervisor."""

    def __init__(self, root: Path, outputs: OutputsConfig) -> None:
        self.paths = RunPaths.create(root=root)
        self.publisher = Publisher(self.paths.publisher_endpoint("inference"))
        self.status = Subscriber([self.paths.publisher_endpoint("outputs")])
        self.supervisor = Supervisor(self.paths, backoff_initial=0.2, backoff_max=0.4, stop_timeout=6.0)
        self.supervisor.open_bus()
        options = OutputsOptions(
            run_id=self.paths.run_id,
            outputs=outputs,
            events_endpoints=(self.paths.publisher_endpoint("inference"),),
            status_endpoint=self.paths.publisher_endpoint("outputs"),
        )
        self.supervisor.start(ChildSpec(role="outputs", target=outputs_main, kwargs={"options": options}))
        assert self.publisher.wait_for_subscriber(30), "the outputs process did not subscribe"

    def last_status(self, until: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            self.supervisor.poll()
            message = self.status.recv(0.2)
            if isinstance(message, OutputsStatus):
                seen = message.outputs
                if until(seen):
                    return seen
        raise AssertionError(f"no outputs_status as expected within {timeout} s; last: {seen}")

    def close(self) -> None:
        self.supervisor.stop()
        self.publisher.close()
        self.status.close()
        self.paths.remove()


def test_events_reach_mqtt_and_the_webhook_with_states_and_counters(broker: Any, receiver: Any) -> None:
    outputs = OutputsConfig(
        webhook=(WebhookConfig(url=receiver.url, secret="k"),),
        mqtt=MqttConfig(host="127.0.0.1", port=broker.port, topic_prefix=PREFIX, types=("event",)),
    )
    watcher = peers.Watcher(broker.port, f"{PREFIX}/#").wait_subscribed()
    with short_run_root() as root:
        run = Run(root, outputs)
        try:
            run.last_status(lambda s: s["mqtt"]["state"] == "ok")
            sent = [event(0, EventState.START), event(1, EventState.UPDATE), event(2, EventState.END)]
            sent += [event(3, EventState.START, stream="yard", rule="car")]
            for message in sent:
                run.publisher.send(message)
            status = run.last_status(lambda s: s["mqtt"]["sent"] == 4 + 3 and s["webhook:0"]["sent"] == 4)
            assert {name: s["dropped"] + s["failed"] + s["queued"] for name, s in status.items()} == {
                "mqtt": 0,
                "webhook:0": 0,
            }
            assert [r["body"] for r in receiver.requests] == [m.to_json() for m in sent]
            assert all(r["signature_ok"] for r in receiver.requests)
            peers.wait_until(lambda: len(watcher.on(f"{PREFIX}/yard/event")) == 1, 10, "the yard event")
            assert watcher.payloads(f"{PREFIX}/door/event") == [m.to_json() for m in sent[:3]]
            assert watcher.payloads(f"{PREFIX}/door/person/state") == [b"ON", b"OFF"]
            assert peers.retained(broker.port, f"{PREFIX}/#") == {
                f"{PREFIX}/door/person/state": b"OFF",
                f"{PREFIX}/yard/car/state": b"ON",
                f"{PREFIX}/status": b"online",
            }

            # A SIGKILL leaves no time to say goodbye: the broker publishes the last will...
            pid = run.supervisor.pid("outputs")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            peers.wait_until(
                lambda: peers.retained(broker.port, f"{PREFIX}/status") == {f"{PREFIX}/status": b"offline"},
                10,
                "the last will",
            )
            # ... and the supervisor restarts the process, which says it is back.
            run.last_status(lambda s: s["mqtt"]["state"] == "ok" and run.supervisor.restarts("outputs") == 1)
            peers.wait_until(
                lambda: peers.retained(broker.port, f"{PREFIX}/status") == {f"{PREFIX}/status": b"online"},
                10,
                "online again",
            )
        finally:
            run.close()
            watcher.close()
    assert peers.retained(broker.port, f"{PREFIX}/status") == {f"{PREFIX}/status": b"offline"}, "a clean stop"


def test_stopping_delivers_what_is_queued_then_counts_the_rest(receiver: Any) -> None:
    receiver.answers.extend(["hang"] * 100)  # the receiver never answers
    receiver.hang_s = 30.0
    outputs = OutputsConfig(
        webhook=(WebhookConfig(url=receiver.url, secret="k", timeout=0.5, max_attempts=0),)
    )
    with short_run_root() as root:
        run = Run(root, outputs)
        try:
            for n in range(5):
                run.publisher.send(event(n, EventState.UPDATE))
            run.last_status(lambda s: s["webhook:0"]["failed"] >= 1 and s["webhook:0"]["queued"] == 5)
            started = time.monotonic()
            run.supervisor.stop()  # SIGTERM: the process gets stop_by (3 s) to deliver, then gives up
            took = time.monotonic() - started
            final = None
            while (message := run.status.recv(0.5)) is not None:
                if isinstance(message, OutputsStatus):
                    final = message.outputs["webhook:0"]
        finally:
            run.close()
    assert took < 5.5, "stopped before the supervisor had to kill it"
    assert final is not None and final["sent"] == 0 and final["dropped"] == 5 and final["queued"] == 0


def test_a_live_run_sends_its_captions_to_a_webhook_and_mqtt(
    broker: Any, receiver: Any, tmp_path: Path
) -> None:
    config = tmp_path / "outputs.toml"
    config.write_text(
        f'[[outputs.webhook]]\nurl = "{receiver.url}"\ntypes = ["caption"]\nsecret = "k"\n\n'
        f'[outputs.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{PREFIX}"\n'
    )
    watcher = peers.Watcher(broker.port, f"{PREFIX}/#").wait_subscribed()
    with short_run_root() as root:
        run = LiveRun(
            ["door=demo"],
            root,
            extra=[
                "--config",
                str(config),
                "--no-store",
                "--set",
                "sampler.window=2",
                "--set",
                "sampler.stride=2",
            ],
        )
        try:
            run.start(timeout=180)

            def enough(messages: list[dict[str, Any]]) -> bool:
                statuses = of_type(messages, "status")
                if not statuses or not statuses[-1].get("outputs"):
                    return False
                outputs = statuses[-1]["outputs"]
                return outputs["webhook:0"]["sent"] >= 2 and outputs["mqtt"]["sent"] >= 2

            messages = collect(run.ws_url, enough, timeout=120)
            assert enough(messages), run.log()
            status = of_type(messages, "status")[-1]
            assert status["processes"]["outputs"]["alive"] is True
            assert status["outputs"]["mqtt"]["state"] == "ok"
            assert status["outputs"]["webhook:0"]["target"] == f"http://127.0.0.1:{receiver.port}"
            peers.wait_until(lambda: len(receiver.delivered) >= 2, 10, "two captions at the webhook")
            for request in receiver.requests:
                caption = json.loads(request["body"])
                assert caption["type"] == "caption" and caption["stream"] == "door"
                assert request["signature_ok"]
            on_mqtt = watcher.payloads(f"{PREFIX}/door/caption")
            assert len(on_mqtt) >= 2 and json.loads(on_mqtt[0])["type"] == "caption"
            assert set(on_mqtt[:2]) <= {r["body"] for r in receiver.requests}, "the same bytes on both"
            assert peers.retained(broker.port, f"{PREFIX}/status") == {f"{PREFIX}/status": b"online"}
            assert run.stop() == 0
        finally:
            run.kill()
            watcher.close()
    assert peers.retained(broker.port, f"{PREFIX}/status") == {f"{PREFIX}/status": b"offline"}


def test_a_hanging_webhook_and_a_missing_broker_never_hold_up_the_captions(
    receiver: Any, tmp_path: Path
) -> None:
    receiver.answers.extend(["hang"] * 1000)
    receiver.hang_s = 60.0
    config = tmp_path / "outputs.toml"
    config.write_text(
        f'[[outputs.webhook]]\nurl = "{receiver.url}"\ntypes = ["caption"]\nsecret = "k"\ntimeout = 1.0\n\n'
        f'[outputs.mqtt]\nhost = "127.0.0.1"\nport = {peers.free_port()}\n'  # nothing listens there
    )
    with short_run_root() as root:
        run = LiveRun(
            ["door=demo"],
            root,
            extra=[
                "--config",
                str(config),
                "--no-store",
                "--set",
                "sampler.window=2",
                "--set",
                "sampler.stride=2",
            ],
        )
        try:
            run.start(timeout=180)

            def enough(messages: list[dict[str, Any]]) -> bool:
                statuses = [s for s in of_type(messages, "status") if s.get("outputs")]
                return (
                    len(of_type(messages, "caption", "door")) >= 4
                    and bool(statuses)
                    and (statuses[-1]["outputs"]["webhook:0"]["failed"] >= 2)
                )

            messages = collect(run.ws_url, enough, timeout=120)
            assert enough(messages), run.log()
            captions = of_type(messages, "caption", "door")
            seqs = [c["seq"] for c in captions]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            outputs = [s for s in of_type(messages, "status") if s.get("outputs")][-1]["outputs"]
            assert outputs["webhook:0"]["state"] == "retrying" and outputs["webhook:0"]["sent"] == 0
            assert "no answer within 1 s" in outputs["webhook:0"]["error"]
            assert outputs["mqtt"]["state"] == "connecting" and outputs["mqtt"]["sent"] == 0
            assert outputs["mqtt"]["queued"] >= 1
            started = time.monotonic()
            assert run.stop() == 0
            assert time.monotonic() - started < 12.0
        finally:
            run.kill()
