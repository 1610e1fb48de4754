"""The webhook output against a real local HTTP server (the stdlib's, in a thread): the body exactly as
published with its HMAC signature checked as a receiver would, 5xx answers retried with the backoff,
a receiver that hangs past the timeout retried, a 4xx not retried, a receiver that is down costing no
more than the bounded queue with every drop counted, and nothing secret in status."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_executable
from realparts import load_tool

from stream.bus import Envelope
from stream.config import WebhookConfig
from stream.messages import Caption, Event, EventState
from stream.outputqueue import Backoff, OutputState
from stream.settings import check_settings
from stream.webhook import WebhookOutput, public_target

peers = load_tool("output_peers")
FAST = Backoff(initial=0.05, maximum=0.2)


def event(n: int, state: EventState = EventState.START) -> Envelope:
    message = Event(
        stream="door",
        rule="person_at_door",
        event_id=f"e{n}",
        state=state,
        t_start=float(n),
        t_end=float(n) + 4.0,
        wall_start=1_700_000_000.0 + n,
        wall_end=1_700_000_004.0 + n,
        score=0.93,
        text=f"a person at the door, number {n} — café",
    )
    return Envelope("event", "door", message.to_json())


def caption_envelope() -> Envelope:
    message = Caption(
        stream="door",
        seq=1,
        t_start=0.0,
        t_end=8.0,
        frame_times=[7.0],
        wall_start=1.0,
        wall_end=9.0,
        text="an empty porch",
        model="tiny",
        latency_ms=5.0,
    )
    return Envelope("caption", "door", message.to_json())


@pytest.fixture
def receiver() -> Iterator[object]:
    server = peers.WebhookReceiver(secret="s3cret")
    yield server
    server.close()


def output(url: str, **changes: object) -> WebhookOutput:
    config = WebhookConfig(**{"url": url, "secret": "s3cret", "timeout": 2.0, **changes})  # type: ignore[arg-type]
    check_settings("outputs.webhook[0]", config)
    out = WebhookOutput("webhook:0", config, backoff=FAST)
    out.start()
    return out


def settle(out: WebhookOutput, timeout: float = 20.0) -> dict[str, object]:
    """Wait until nothing is queued; the status then."""
    peers.wait_until(lambda: out.status()["queued"] == 0, timeout, "the webhook queue to empty")
    return out.status()


def test_each_event_is_posted_as_published_signed_and_in_order(receiver: Any) -> None:
    out = output(receiver.url)
    sent = [event(n) for n in range(20)]
    try:
        for envelope in sent:
            out.offer(envelope)
        out.offer(caption_envelope())  # not of the configured types (["event"]): never posted
        status = settle(out)
    finally:
        out.stop(time.monotonic() + 2.0)
    requests = receiver.requests
    assert [r["body"] for r in requests] == [e.body for e in sent]
    assert all(r["signature_ok"] and r["signature"].startswith("sha256=") for r in requests)
    assert {r["content_type"] for r in requests} == {"application/json"}
    assert {r["path"] for r in requests} == {"/hook?token=abc"}
    assert status["sent"] == 20 and status["failed"] == status["dropped"] == 0
    assert status["state"] == OutputState.OK
    assert status["target"] == f"http://127.0.0.1:{receiver.port}", "no path or query (they may be secret)"


def test_without_a_secret_there_is_no_signature_header() -> None:
    server = peers.WebhookReceiver()
    config = WebhookConfig(url=server.url)
    out = WebhookOutput("webhook:0", config, backoff=FAST)
    out.start()
    try:
        out.offer(event(1))
        settle(out)
    finally:
        out.stop(time.monotonic() + 2.0)
        server.close()
    assert [r["signature"] for r in server.requests] == [""]


def test_server_errors_are_retried_with_the_backoff_until_one_goes_through(receiver: Any) -> None:
    receiver.answers.extend([500, 502, 503, 429])
    out = output(receiver.url)
    try:
        out.offer(event(1))
        out.offer(event(2))
        status = settle(out)
    finally:
        out.stop(time.monotonic() + 2.0)
    requests = receiver.requests
    assert [r["answer"] for r in requests] == [500, 502, 503, 429, 200, 200]
    assert receiver.delivered == [event(1).body, event(2).body], "in order, each once"
    gaps = [b["at"] - a["at"] for a, b in zip(requests[:4], requests[1:5], strict=True)]
    assert all(gap >= 0.04 for gap in gaps), f"retries wait the backoff: {gaps}"
    assert gaps[2] > gaps[0], "and the wait grows"
    assert (status["sent"], status["failed"], status["retried"], status["dropped"]) == (2, 4, 4, 0)
    assert status["error"] is None and status["state"] == OutputState.OK


def test_a_receiver_that_hangs_past_the_timeout_is_retried(receiver: Any) -> None:
    receiver.answers.append("hang")
    out = output(receiver.url, timeout=0.5)
    try:
        started = time.monotonic()
        out.offer(event(1))
        peers.wait_until(lambda: out.status()["failed"] == 1, 10, "the timeout")
        waited = time.monotonic() - started
        assert "no answer within 0.5 s" in str(out.status()["error"])
        status = settle(out)
    finally:
        out.stop(time.monotonic() + 2.0)
    assert 0.4 < waited < 5.0
    assert receiver.delivered == [event(1).body]
    assert (status["sent"], status["failed"], status["dropped"]) == (1, 1, 0)


def test_a_client_error_is_not_retried_and_the_next_message_goes_on(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers.append(404)
    out = output(receiver.url)
    try:
        out.offer(event(1))
        out.offer(event(2))
        status = settle(out)
    finally:
        out.stop(time.monotonic() + 2.0)
    assert [r["answer"] for r in receiver.requests] == [404, 200]
    assert receiver.delivered == [event(2).body]
    assert (status["sent"], status["failed"], status["dropped"], status["rejected"]) == (1, 1, 1, 1)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "HTTP 404" in refusals[0], refusals


def test_a_receiver_that_is_down_costs_the_bounded_queue_and_every_drop_is_counted() -> None:
    out = output(f"http://127.0.0.1:{peers.free_port()}/hook", queue=5, max_attempts=0)
    try:
        for n in range(50):
            out.offer(event(n))  # never waits on the dead receiver
        peers.wait_until(lambda: out.status()["failed"] >= 3, 10, "a few failed tries")
        status = out.status()
        assert status["state"] == OutputState.RETRYING
        assert "ConnectionRefusedError" in str(status["error"])
        assert status["sent"] == 0
        assert status["dropped"] + status["queued"] == 50
        assert status["queued"] <= 5 + 1  # the queue, and the one being tried
    finally:
        lost = out.stop(time.monotonic() + 0.5)
    assert lost == status["queued"]
    assert out.status()["dropped"] == 50


def test_public_target_hides_path_query_and_user() -> None:
    assert (
        public_target("https://user:pw@hooks.example.com/services/T0/B0/XYZ?k=1")
        == "https://hooks.example.com:443"
    )
    assert public_target("http://[::1]:8080/x") == "http://[::1]:8080"


def test_https_is_checked_against_the_trusted_cas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = peers.make_tls_files(tmp_path, require_executable("openssl"))
    server = peers.WebhookReceiver(secret="s3cret", tls=(cert, key))
    try:
        untrusted = output(server.url)  # the system's CAs do not know the test's own
        untrusted.offer(event(1))
        peers.wait_until(lambda: untrusted.status()["failed"] >= 1, 10, "the refused certificate")
        assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.status()["error"])
        assert untrusted.status()["state"] == OutputState.RETRYING
        untrusted.stop(time.monotonic())
        # OpenSSL's default verify paths follow SSL_CERT_FILE: the way to trust a private CA.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        trusted = output(server.url)
        trusted.offer(event(2))
        status = settle(trusted)
        trusted.stop(time.monotonic() + 2.0)
    finally:
        server.close()
    assert status["sent"] == 1 and status["target"] == f"https://127.0.0.1:{server.port}"
    assert server.delivered == [event(2).body]
    assert all(r["signature_ok"] for r in server.requests)
