"""The MQTT output: captions, events and alert states published to a broker with paho-mqtt.

Topics (``PREFIX`` is ``topic_prefix``, default ``vidnarrate``):

* ``PREFIX/STREAM/caption``, ``PREFIX/STREAM/event`` (and ``PREFIX/STREAM/summary``): the message
  exactly as published on the bus; captions at QoS 0 (the next one follows within seconds), the
  rest at QoS 1;
* ``PREFIX/STREAM/RULE/state``: ``ON`` when an event of that rule starts, ``OFF`` when it ends,
  retained and QoS 1, so a Home Assistant ``binary_sensor`` (or any late subscriber) follows it.
  The outputs process re-publishes the last state of each rule whenever it (re)connects: a broker
  restarted without persistence has forgotten them;
* ``PREFIX/status``: ``online`` (retained) once connected; ``offline`` (retained) as the last will,
  which the broker publishes if this client vanishes, and on a clean stop.

paho's network thread connects and reconnects with a capped exponential delay (a broker down at start
is not an error: the state is ``connecting`` until it is up). The delivering thread hands queued
publications to paho only while connected, at most ``window`` unacknowledged at once; paho keeps those
across a reconnect and sends them again, and one counts as sent when paho reports it done (the
broker's PUBACK for QoS 1). So what was queued while the broker was down goes out after it is back,
as long as the queue had room; what a full queue pushed out is counted as dropped. paho's callbacks
run on its own thread and never take this output's lock (paho calls ``on_publish`` holding its own
lock, which :meth:`publish` needs): they hand their news to the delivering thread through a queue.
"""

from __future__ import annotations

import logging
import queue
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from .bus import Envelope
from .config import MqttConfig
from .errors import ProtocolError
from .messages import Event, EventState
from .outputqueue import Backoff, Delivery, Outcome, OutputQueue, OutputState
from .outputworker import OutputWorker

log = logging.getLogger(__name__)

WINDOW = 64  # publications handed to paho and not yet acknowledged, at most
KEEPALIVE_S = 30
MAX_STATES = 10_000  # retained rule states remembered for re-publishing (streams x rules)
_QOS = {"caption": 0}  # everything else: 1
STATE_PAYLOAD = {EventState.START: b"ON", EventState.END: b"OFF"}


def topic_part(name: str) -> str:
    """A stream or rule name as one topic level (names are plain already; this keeps a level a level)."""
    return "".join("_" if ch in "/+#\0" else ch for ch in name) or "_"


def mqtt_deliveries(prefix: str, envelope: Envelope, now: float) -> list[Delivery]:
    """The publications of one bus message (see the module docstring)."""
    stream = topic_part(envelope.stream or "")
    qos = _QOS.get(envelope.type, 1)
    out = [Delivery(envelope.body, now, topic=f"{prefix}/{stream}/{envelope.type}", qos=qos)]
    if envelope.type == "event":
        try:
            event = envelope.decode()
        except ProtocolError as exc:
            log.warning("ignoring a bad event on the bus: %s", exc)
            return []
        assert isinstance(event, Event)
        payload = STATE_PAYLOAD.get(event.state)
        if payload is not None:
            topic = f"{prefix}/{topic_part(event.stream)}/{topic_part(event.rule)}/state"
            out.append(Delivery(payload, now, topic=topic, qos=1, retain=True))
    return out


class MqttOutput(OutputWorker):
    def __init__(self, config: MqttConfig, *, client_id: str, backoff: Backoff | None = None) -> None:
        backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        queue_ = OutputQueue(
            capacity=config.queue, max_bytes=int(config.queue_mb * 1024 * 1024), window=WINDOW
        )
        queue_.state = OutputState.CONNECTING
        host = f"[{config.host}]" if ":" in config.host else config.host
        super().__init__(
            "mqtt", f"mqtt{'s' if config.tls else ''}://{host}:{config.port}", config.types, queue_
        )
        self.config = config
        self.prefix = config.topic_prefix.strip("/")
        self.status_topic = f"{self.prefix}/status"
        self._news: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()  # from paho's thread
        self._tickets: dict[int, int] = {}  # paho's mid -> the queue's ticket
        self._states: dict[str, bytes] = {}  # retained state topic -> its last payload
        self._connected = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        if config.username:
            client.username_pw_set(config.username, config.password or None)
        if config.tls:
            client.tls_set(ca_certs=config.ca_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(max(1, round(backoff.initial)), max(1, round(backoff.maximum)))
        client.connect_timeout = config.timeout
        # No limit of paho's own: the window bounds what is in flight, and a message paho held back
        # past its limit could wait behind the extra publications of a reconnection (online, states).
        client.max_inflight_messages_set(0)
        client.on_connect = lambda _c, _u, _f, reason, _p: self._tell("connect", reason)
        client.on_disconnect = lambda _c, _u, _f, reason, _p: self._tell("disconnect", reason)
        client.on_publish = lambda _c, _u, mid, _reason, _p: self._tell("published", mid)
        client.on_connect_fail = lambda _c, _u: self._tell("connect_fail", None)
        self.client = client

    def _tell(self, kind: str, value: Any) -> None:
        """paho's thread: news for the delivering thread (no lock of ours taken here)."""
        self._news.put((kind, value))
        self._wake.set()

    def deliveries(self, envelope: Envelope, now: float) -> list[Delivery]:
        out = mqtt_deliveries(self.prefix, envelope, now)
        with self._lock:
            for delivery in out:
                if delivery.retain and (delivery.topic in self._states or len(self._states) < MAX_STATES):
                    self._states[delivery.topic] = delivery.body
        return out

    def start(self) -> None:
        # connect_async: the first connection is tried by paho's thread, retried while the broker is down.
        self.client.connect_async(self.config.host, self.config.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()
        super().start()

    def run(self) -> None:
        while True:
            self._wake.clear()
            self._read_news()
            with self._lock:
                now = time.monotonic()
                if self._done_stopping(now):
                    return
                while self._connected:
                    delivery = self.queue.take(now)
                    if delivery is None:
                        break
                    self._publish(delivery, now)
            self._sleep(None if self._news.empty() else 0.0)

    def _publish(self, delivery: Delivery, now: float) -> None:
        """Hand one publication to paho (called under the lock, by the delivering thread only)."""
        try:
            info = self.client.publish(
                delivery.topic, delivery.body, qos=delivery.qos, retain=delivery.retain
            )
        except ValueError as exc:  # a payload or topic the protocol cannot carry
            self.queue.done(delivery.ticket, Outcome.REJECTED, now)
            self.error = str(exc)
            log.warning("%s: cannot publish to %s: %s", self.name, delivery.topic, exc)
            return
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.queue.done(delivery.ticket, Outcome.REJECTED, now)
            self.error = mqtt.error_string(info.rc)
            return
        # MQTT_ERR_NO_CONN: the connection dropped just now; paho keeps the message and sends it
        # after reconnecting, and reports it then.
        self._tickets[info.mid] = delivery.ticket

    def _read_news(self) -> None:
        """Apply what paho's thread reported (connections, acknowledgements)."""
        while True:
            try:
                kind, value = self._news.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                if kind == "published":
                    ticket = self._tickets.pop(value, None)
                    if ticket is not None:
                        self.queue.done(ticket, Outcome.SENT, time.monotonic())
                    self.queue.state = OutputState.OK if self._connected else OutputState.CONNECTING
                elif kind == "connect" and not value.is_failure:
                    self._on_connected()
                elif kind == "disconnect" and not self._connected and self.error:
                    pass  # paho closing after a refused or failed attempt: its reason stays
                else:
                    was_connected, self._connected = self._connected, False
                    self.queue.state = OutputState.CONNECTING
                    if kind == "connect_fail":
                        reason = (
                            "cannot connect (nothing listening, unreachable, or the TLS handshake failed)"
                        )
                    elif kind == "connect":
                        reason = f"connection refused ({value})"
                    else:
                        reason = f"connection lost ({value})" if was_connected else f"disconnected ({value})"
                    if reason != self.error:
                        log.warning("%s: not connected to %s: %s", self.name, self.target, reason)
                    self.error = reason

    def _on_connected(self) -> None:
        self._connected = True
        self.queue.state = OutputState.OK
        self.error = None
        log.info("%s: connected to %s", self.name, self.target)
        self.client.publish(self.status_topic, b"online", qos=1, retain=True)
        for topic, payload in self._states.items():
            self.client.publish(topic, payload, qos=1, retain=True)

    def close(self) -> None:
        """``offline`` (retained) on a clean stop, then disconnect."""
        if self._connected:
            info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                pass  # the connection went meanwhile: the broker publishes the will instead
        self.client.disconnect()
        self.client.loop_stop()
