"""Real peers for the outputs' tests and benchmark: a Mosquitto broker, an MQTT watcher, a webhook
receiver.

* :class:`Mosquitto` runs the Debian ``mosquitto`` on a port of its own (``listener PORT 127.0.0.1``,
  ``allow_anonymous true``, ``persistence false``); :meth:`Mosquitto.kill` and :meth:`Mosquitto.start`
  again on the same port are what a broker outage looks like to a client.
* :class:`Watcher` subscribes with paho (another process's view of the topics) and records every
  message with its arrival time; it reconnects by itself after a broker restart.
* :class:`WebhookReceiver` is a stdlib ``http.server`` in a thread that checks each request's
  ``X-Vidnarrate-Signature`` as a receiver should and answers as scripted (``answers``: a status per
  request, or ``"hang"`` to answer nothing for ``hang_s``).

    python tools/output_peers.py broker      # a broker on a free port until Ctrl-C (for trying by hand)
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_tls_files(folder: Path, openssl: str = "openssl") -> tuple[Path, Path, Path]:
    """A CA of our own and a server certificate it signed for 127.0.0.1 (OpenSSL's command line):
    the paths of the CA's certificate, the server's certificate and the server's key."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    san = folder / "san.cnf"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1"]
        + ["-subj", "/CN=vidnarrate test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert]
        + ["-days", "1", "-extfile", san],
    ):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:``port`` (a free one unless given)."""

    def __init__(self, port: int | None = None, *, persistence: bool = False, listeners: str = "") -> None:
        """``persistence``: sessions and retained messages survive a :meth:`terminate` and restart
        (a broker that is SIGKILLed saves nothing either way). ``listeners``: configuration lines in
        place of the one anonymous plain listener on ``port`` (TLS, passwords)."""
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="vn-mosquitto-"))
        self.config = self.folder / "mosquitto.conf"
        kept = f"persistence true\npersistence_location {self.folder}/\nmax_queued_messages 100000\n"
        # Started as root, mosquitto would switch to the user "mosquitto", who may not write here.
        listeners = listeners or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        self.config.write_text(
            f"{listeners}\nuser {getpass.getuser()}\n"
            + (kept if persistence else "persistence false\n")
            + f"log_dest file {self.folder / 'mosquitto.log'}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def executable() -> str | None:
        return shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.path.exists(p)), None
        )

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = self.executable()
        assert exe is not None, "mosquitto is not installed"
        deadline = time.monotonic() + timeout
        while True:  # the port may linger for a moment after a kill
            self.proc = subprocess.Popen(
                [exe, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")
            time.sleep(0.1)

    def terminate(self) -> None:
        """SIGTERM: the broker stops as for maintenance (saving its state when it keeps one)."""
        self.kill(signal.SIGTERM)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL: the broker vanishes as in a crash (no clean disconnects)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        if self.proc is not None:
            self.proc.wait(10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # wall seconds


class Watcher:
    """A paho subscriber to ``topic`` (a filter), recording what arrives. ``session``: a persistent
    session by that client id (the broker queues for it while it is away, across a restart of a
    broker with persistence)."""

    def __init__(self, port: int, topic: str = "#", *, qos: int = 1, session: str | None = None) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session or f"watcher-{os.getpid()}-{id(self)}",
            clean_session=session is None,
        )
        self.client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(topic, qos=qos)
        self.client.on_subscribe = lambda _c, _u, _m, _r, _p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, message.payload, bool(message.retain), time.time()))

    def wait_subscribed(self, timeout: float = 10.0) -> Watcher:
        if not self.subscribed.wait(timeout):
            raise AssertionError(f"the watcher was not subscribed within {timeout} s")
        return self

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, timeout: float = 5.0) -> dict[str, bytes]:
    """The retained messages under ``topic`` (a filter), as a fresh subscriber gets them now."""
    got: dict[str, bytes] = {}
    done = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"retained-{os.getpid()}-{time.monotonic_ns()}"
    )

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            got[message.topic] = message.payload

    # A marker published after subscribing comes back after every retained message.
    marker = f"vn-marker/{time.monotonic_ns()}"
    client.on_message = lambda c, u, m: done.set() if m.topic == marker else on_message(c, u, m)
    client.on_subscribe = lambda c, _u, _m, _r, _p: c.publish(marker, b"", qos=1)
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe([(topic, 1), (marker, 1)])
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise AssertionError(f"no answer from the broker on port {port} within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return got


@dataclass
class WebhookReceiver:
    """A local HTTP server receiving webhook POSTs (see the module docstring)."""

    secret: str = ""
    answers: list[int | str] = field(default_factory=list)  # consumed one per request; then 200
    hang_s: float = 10.0
    unavailable_until: float = 0.0  # wall seconds: every request answers 503 until then
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve HTTPS
    requests: list[dict[str, Any]] = field(default_factory=list)  # every request, as received
    delivered: list[bytes] = field(default_factory=list)  # bodies answered 2xx
    bad_signatures: int = 0

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()
        self._release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver._handle(self, body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, self.tls))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/hook?token=abc"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        header = handler.headers.get("X-Vidnarrate-Signature", "")
        ok = True
        if self.secret:
            expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(header, expected)
        with self._lock:
            answer = self.answers.pop(0) if self.answers else 200
            if time.time() < self.unavailable_until:
                answer = 503
            self.requests.append(
                {
                    "body": body,
                    "path": handler.path,
                    "content_type": handler.headers.get("Content-Type"),
                    "signature": header,
                    "signature_ok": ok,
                    "at": time.time(),
                    "answer": answer,
                }
            )
            if not ok:
                self.bad_signatures += 1
                answer = 401
        if answer == "hang":
            self._release.wait(self.hang_s)
            return
        assert isinstance(answer, int)
        if 200 <= answer < 300:
            with self._lock:
                self.delivered.append(body)
        reply = json.dumps({"status": answer}).encode()
        handler.send_response(answer)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    if sys.argv[1:] != ["broker"]:
        raise SystemExit(__doc__)
    broker = Mosquitto().start()
    print(f"mosquitto on 127.0.0.1:{broker.port} (Ctrl-C stops it)", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
