"""The MQTT output against a real Mosquitto broker started per test on a free port, watched by a real
paho subscriber: the topics and their payloads, the retained ON/OFF states and online/offline status,
a broker that is down at start, a broker killed and restarted mid-run (what was queued meanwhile is
delivered, the states are retained again), and a queue that fills while the broker is down (every
drop counted)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_executable, require_real_part
from realparts import load_tool

from stream.bus import Envelope
from stream.config import MqttConfig
from stream.messages import Caption, Event, EventState
from stream.mqttout import MqttOutput, mqtt_deliveries, topic_part
from stream.outputqueue import Backoff, OutputState
from stream.settings import check_settings

pytestmark = pytest.mark.integration
peers = load_tool("output_peers")
PREFIX = "vn-test"
# paho's reconnect delay: long enough that a test starting the broker and a watcher comes first.
SLOW_RECONNECT = Backoff(initial=3.0, maximum=3.0)


def event(n: int, state: EventState, rule: str = "person_at_door") -> Envelope:
    message = Event(
        stream="door",
        rule=rule,
        event_id=f"e{n}",
        state=state,
        t_start=float(n),
        t_end=float(n) + 4.0,
        wall_start=1_700_000_000.0 + n,
        wall_end=1_700_000_004.0 + n,
        score=0.9,
        text=f"event {n}",
    )
    return Envelope("event", "door", message.to_json())


def caption(n: int) -> Envelope:
    message = Caption(
        stream="door",
        seq=n,
        t_start=float(n),
        t_end=float(n) + 8.0,
        frame_times=[float(n) + 7.0],
        wall_start=1.0,
        wall_end=9.0,
        text=f"caption {n}",
        model="tiny",
        latency_ms=5.0,
    )
    return Envelope("caption", "door", message.to_json())


@pytest.fixture
def broker() -> Iterator[Any]:
    require_real_part(peers.Mosquitto.executable() is not None, "mosquitto")
    server = peers.Mosquitto()
    yield server
    server.close()


def output(port: int, backoff: Backoff | None = None, **changes: Any) -> MqttOutput:
    config = MqttConfig(**{"host": "127.0.0.1", "port": port, "topic_prefix": PREFIX, **changes})
    check_settings("outputs.mqtt", config)
    out = MqttOutput(config, client_id=f"vn-test-{time.monotonic_ns()}", backoff=backoff or Backoff(1.0, 1.0))
    out.start()
    return out


def test_topics_payloads_and_retained_states(broker: Any) -> None:
    broker.start()
    watcher = peers.Watcher(broker.port, f"{PREFIX}/#").wait_subscribed()
    out = output(broker.port)
    try:
        peers.wait_until(lambda: out.status()["state"] == OutputState.OK, 10, "the connection")
        sent = [caption(1), event(1, EventState.START), event(1, EventState.UPDATE), caption(2)]
        for envelope in sent:
            out.offer(envelope)
        peers.wait_until(lambda: len(watcher.payloads(f"{PREFIX}/door/caption")) == 2, 10, "the captions")
        peers.wait_until(lambda: out.status()["queued"] == 0, 10, "every acknowledgement")
        assert watcher.payloads(f"{PREFIX}/door/caption") == [caption(1).body, caption(2).body]
        assert watcher.payloads(f"{PREFIX}/door/event") == [sent[1].body, sent[2].body]
        state_topic = f"{PREFIX}/door/person_at_door/state"
        assert watcher.payloads(state_topic) == [b"ON"], "ON at the start; an update changes nothing"
        assert peers.retained(broker.port, f"{PREFIX}/#") == {
            state_topic: b"ON",
            f"{PREFIX}/status": b"online",
        }
        out.offer(event(1, EventState.END))
        peers.wait_until(lambda: watcher.payloads(state_topic) == [b"ON", b"OFF"], 10, "OFF at the end")
        status = out.status()
        assert (status["sent"], status["failed"], status["dropped"]) == (
            7,
            0,
            0,
        )  # 2 captions, 3 events, 2 states
        assert status["target"] == f"mqtt://127.0.0.1:{broker.port}"
    finally:
        out.stop(time.monotonic() + 3.0)
        watcher.close()
    assert peers.retained(broker.port, f"{PREFIX}/#") == {
        f"{PREFIX}/door/person_at_door/state": b"OFF",
        f"{PREFIX}/status": b"offline",  # a clean stop says so itself
    }


def test_a_broker_down_at_start_is_waited_for_and_what_was_queued_goes_out(broker: Any) -> None:
    out = output(broker.port, backoff=SLOW_RECONNECT)
    try:
        for n in range(5):
            out.offer(event(n, EventState.START, rule=f"rule{n}"))
        peers.wait_until(lambda: out.status()["error"] is not None, 10, "a failed connection attempt")
        status = out.status()
        assert status["state"] == OutputState.CONNECTING
        assert status["queued"] == 10 and status["sent"] == 0  # an event and its state each
        broker.start()
        watcher = peers.Watcher(broker.port, f"{PREFIX}/#").wait_subscribed()
        assert out.status()["sent"] == 0, "the watcher must subscribe before the output reconnects"
        peers.wait_until(lambda: out.status()["sent"] == 10, 15, "the queued messages to go out")
        peers.wait_until(lambda: len(watcher.payloads(f"{PREFIX}/door/event")) == 5, 10, "their arrival")
        assert watcher.payloads(f"{PREFIX}/door/event") == [
            event(n, EventState.START, f"rule{n}").body for n in range(5)
        ]
        assert out.status()["state"] == OutputState.OK and out.status()["dropped"] == 0
        watcher.close()
    finally:
        out.stop(time.monotonic() + 3.0)


def test_a_broker_killed_and_restarted_mid_run_gets_what_was_queued_meanwhile(broker: Any) -> None:
    broker.start()
    first = peers.Watcher(broker.port, f"{PREFIX}/#").wait_subscribed()
    out = output(broker.port, backoff=SLOW_RECONNECT)
    state_topic = f"{PREFIX}/door/person_at_door/state"
    try:
        out.offer(event(0, EventState.START))
        for n in range(1, 10):
            out.offer(event(n, EventState.UPDATE))
        peers.wait_until(lambda: out.status()["sent"] == 11, 10, "the first events")
        first.close()
        broker.kill()
        peers.wait_until(lambda: out.status()["state"] == OutputState.CONNECTING, 10, "the lost connection")
        for n in range(10, 19):
            out.offer(event(n, EventState.UPDATE))
        out.offer(event(19, EventState.END))
        assert out.status()["queued"] == 11
        broker.start()
        second = peers.Watcher(broker.port, f"{PREFIX}/#").wait_subscribed()
        assert out.status()["sent"] == 11, "the watcher must subscribe before the output reconnects"
        peers.wait_until(lambda: out.status()["sent"] == 22, 15, "the events queued meanwhile")
        peers.wait_until(lambda: len(second.payloads(f"{PREFIX}/door/event")) == 10, 10, "their arrival")
        assert second.payloads(f"{PREFIX}/door/event") == [
            event(n, EventState.END if n == 19 else EventState.UPDATE).body for n in range(10, 20)
        ]
        status = out.status()
        assert (status["dropped"], status["queued"], status["state"]) == (0, 0, OutputState.OK)
        # The restarted broker (no persistence) forgot every retained message; they are back.
        assert peers.retained(broker.port, f"{PREFIX}/#") == {
            state_topic: b"OFF",
            f"{PREFIX}/status": b"online",
        }
        second.close()
    finally:
        out.stop(time.monotonic() + 3.0)


def test_a_queue_that_fills_while_the_broker_is_down_drops_its_oldest_and_counts_them(broker: Any) -> None:
    broker.start()
    out = output(broker.port, backoff=SLOW_RECONNECT, queue=5)
    try:
        peers.wait_until(lambda: out.status()["state"] == OutputState.OK, 10, "the connection")
        broker.kill()
        peers.wait_until(lambda: out.status()["state"] == OutputState.CONNECTING, 10, "the lost connection")
        for n in range(20):
            out.offer(caption(n))
        assert (out.status()["queued"], out.status()["dropped"]) == (5, 15)
        broker.start()
        watcher = peers.Watcher(broker.port, f"{PREFIX}/#").wait_subscribed()
        peers.wait_until(lambda: out.status()["queued"] == 0, 15, "the queue to empty")
        peers.wait_until(lambda: len(watcher.payloads(f"{PREFIX}/door/caption")) == 5, 10, "the last five")
        assert watcher.payloads(f"{PREFIX}/door/caption") == [caption(n).body for n in range(15, 20)]
        status = out.status()
        assert status["sent"] + status["dropped"] == 20
        watcher.close()
    finally:
        out.stop(time.monotonic() + 3.0)


def test_stream_and_rule_names_stay_one_topic_level() -> None:
    assert topic_part("door") == "door" and topic_part("a/b+#") == "a_b__" and topic_part("") == "_"
    deliveries = mqtt_deliveries("p", event(1, EventState.END, rule="r"), 0.0)
    assert [(d.topic, d.body[:5] if d.retain else None, d.qos, d.retain) for d in deliveries] == [
        ("p/door/event", None, 1, False),
        ("p/door/r/state", b"OFF", 1, True),
    ]
    assert [(d.topic, d.qos) for d in mqtt_deliveries("p", caption(1), 0.0)] == [("p/door/caption", 0)]


# paho 2.2 leaves the socket of a failed TLS handshake for the garbage collector to close (a
# ResourceWarning, which pytest turns into an error); the failed handshake is what this test wants.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_with_our_own_ca_and_a_password_and_a_wrong_password_is_reported(tmp_path: Path) -> None:
    require_real_part(peers.Mosquitto.executable() is not None, "mosquitto")
    ca, cert, key = peers.make_tls_files(tmp_path, require_executable("openssl"))
    passwords = tmp_path / "passwords"
    subprocess.run(
        [require_executable("mosquitto_passwd"), "-b", "-c", str(passwords), "cam", "pw"],
        check=True,
        timeout=30,
    )
    tls_port, plain_port = peers.free_port(), peers.free_port()
    broker = peers.Mosquitto(
        tls_port,
        listeners=(
            "per_listener_settings true\n"
            f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            f"allow_anonymous false\npassword_file {passwords}\n"
            f"listener {plain_port} 127.0.0.1\nallow_anonymous true\n"  # for the watcher
        ),
    ).start()
    watcher = peers.Watcher(plain_port, f"{PREFIX}/#").wait_subscribed()
    good = output(tls_port, tls=True, ca_file=str(ca), username="cam", password="pw")
    bad = output(tls_port, tls=True, ca_file=str(ca), username="cam", password="wrong", topic_prefix="vn-bad")
    untrusted = output(tls_port, tls=True, username="cam", password="pw", topic_prefix="vn-untrusted")
    try:
        peers.wait_until(lambda: good.status()["state"] == OutputState.OK, 15, "the TLS connection")
        good.offer(event(1, EventState.START))
        peers.wait_until(lambda: watcher.payloads(f"{PREFIX}/door/person_at_door/state") == [b"ON"], 10, "ON")
        assert watcher.payloads(f"{PREFIX}/door/event") == [event(1, EventState.START).body]
        assert good.status()["target"] == f"mqtts://127.0.0.1:{tls_port}"
        peers.wait_until(
            lambda: "Not authorized" in str(bad.status()["error"]), 15, "the refusal, with its reason"
        )
        assert bad.status()["state"] == OutputState.CONNECTING
        # The system's CAs do not know ours: the certificate is refused, the output keeps trying.
        peers.wait_until(lambda: untrusted.status()["error"] is not None, 15, "the failed handshake")
        assert untrusted.status()["state"] == OutputState.CONNECTING
        assert (
            peers.retained(plain_port, "vn-bad/#") == {}
            and peers.retained(plain_port, "vn-untrusted/#") == {}
        )
    finally:
        for out in (good, bad, untrusted):
            out.stop(time.monotonic() + 2.0)
        watcher.close()
        broker.close()
