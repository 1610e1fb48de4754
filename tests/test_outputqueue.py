"""The outputs' core, time passed in: the backoff schedule, the queue's bounds in count and bytes with
every drop counted, retries in order, no retry for a refusal, giving up after max_attempts, the
window of deliveries in flight, what an HTTP status means, and the signature a receiver checks."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest

from stream.outputqueue import (
    Backoff,
    Delivery,
    Outcome,
    OutputQueue,
    OutputState,
    http_outcome,
    signature,
)


def delivery(n: int, size: int = 10) -> Delivery:
    return Delivery(str(n).encode().ljust(size, b"."), arrived=0.0)


def bodies(queue: OutputQueue, now: float = 1e9) -> list[bytes]:
    """Everything the queue hands out from now on, each delivered at once."""
    out = []
    while (d := queue.take(now)) is not None:
        out.append(d.body.rstrip(b"."))
        queue.done(d.ticket, Outcome.SENT, now)
    return out


def test_the_backoff_doubles_from_initial_and_is_capped() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    assert [backoff.delay(n) for n in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert Backoff(initial=1.0, maximum=30.0).delay(10_000) == 30.0  # no overflow however long it fails


def test_failed_tries_wait_the_backoff_schedule_and_a_success_resets_it() -> None:
    queue = OutputQueue(backoff=Backoff(initial=1.0, maximum=4.0))
    queue.push(delivery(1))
    now = 100.0
    waits = []
    for _ in range(5):
        d = queue.take(now)
        assert d is not None and d.body.startswith(b"1")
        queue.done(d.ticket, Outcome.RETRY, now)
        assert queue.state is OutputState.RETRYING
        wait = queue.wait(now)
        assert wait is not None
        assert queue.take(now + wait - 0.01) is None, "nothing goes before the backoff is over"
        waits.append(wait)
        now += wait
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    d = queue.take(now)
    assert d is not None
    queue.done(d.ticket, Outcome.SENT, now)
    assert (queue.sent, queue.failed, queue.retried, queue.dropped) == (1, 5, 5, 0)
    assert queue.state is OutputState.OK
    queue.push(delivery(2))
    assert queue.wait(now) == 0.0, "after a success the next goes at once"


def test_a_retried_delivery_keeps_its_place_at_the_front() -> None:
    queue = OutputQueue(backoff=Backoff(initial=1.0))
    for n in (1, 2, 3):
        queue.push(delivery(n))
    first = queue.take(0.0)
    assert first is not None
    queue.done(first.ticket, Outcome.RETRY, 0.0)
    assert bodies(queue) == [b"1", b"2", b"3"]


def test_a_refusal_is_dropped_without_a_retry_and_without_a_backoff() -> None:
    queue = OutputQueue()
    queue.push(delivery(1))
    queue.push(delivery(2))
    d = queue.take(0.0)
    assert d is not None
    assert queue.done(d.ticket, Outcome.REJECTED, 0.0) is True
    assert (queue.failed, queue.dropped, queue.rejected, len(queue)) == (1, 1, 1, 1)
    assert queue.wait(0.0) == 0.0, "the receiver answered: the next one goes at once"
    assert bodies(queue, now=0.0) == [b"2"]
    assert queue.retried == 0


def test_a_delivery_is_given_up_after_max_attempts_and_counted() -> None:
    queue = OutputQueue(max_attempts=3, backoff=Backoff(initial=1.0, maximum=1.0))
    queue.push(delivery(1))
    queue.push(delivery(2))
    now = 0.0
    for attempt in (1, 2, 3):
        d = queue.take(now)
        assert d is not None and d.body.startswith(b"1")
        assert queue.done(d.ticket, Outcome.RETRY, now) is (attempt == 3)
        now += 1.0
    assert (queue.failed, queue.dropped, queue.rejected, queue.sent) == (3, 1, 0, 0)
    assert bodies(queue) == [b"2"]


def test_never_giving_up_keeps_retrying_until_it_goes_through() -> None:
    queue = OutputQueue(max_attempts=0, backoff=Backoff(initial=1.0, maximum=1.0))
    queue.push(delivery(1))
    for now in range(100):
        d = queue.take(float(now))
        assert d is not None
        queue.done(d.ticket, Outcome.RETRY, float(now))
    assert (queue.failed, queue.dropped, len(queue)) == (100, 0, 1)


@pytest.mark.parametrize("capacity", [1, 3, 50])
def test_a_full_queue_drops_its_oldest_and_counts_every_drop(capacity: int) -> None:
    queue = OutputQueue(capacity=capacity)
    pushed = 200
    dropped = sum(queue.push(delivery(n)) for n in range(pushed))
    assert dropped == queue.dropped == pushed - capacity
    assert bodies(queue) == [str(n).encode() for n in range(pushed - capacity, pushed)]
    assert queue.sent + queue.dropped + len(queue) == pushed


def test_the_byte_bound_drops_the_oldest_but_keeps_one_however_large() -> None:
    queue = OutputQueue(capacity=1000, max_bytes=1000)
    for n in range(10):
        queue.push(delivery(n, size=300))  # 400 bytes each with the overhead: two fit
    assert len(queue) == 2 and queue.dropped == 8
    queue.push(delivery(99, size=5000))
    assert len(queue) == 1 and queue.dropped == 10
    assert bodies(queue) == [b"99"]


def test_deliveries_in_flight_are_never_dropped_and_the_window_bounds_them() -> None:
    queue = OutputQueue(capacity=2, window=3)
    for n in range(3):
        queue.push(delivery(n))
    assert queue.dropped == 1  # 0 was pushed out; 1 and 2 wait
    taken = [queue.take(0.0), queue.take(0.0)]
    assert all(taken) and queue.in_flight == 2
    for n in range(3, 10):
        queue.push(delivery(n))
    assert queue.take(0.0) is not None
    assert queue.take(0.0) is None and queue.wait(0.0) is None, "the window of 3 is full"
    assert len(queue) == 3 + 1  # three in flight, one waiting (capacity 2 counts only the waiting)
    assert queue.sent + queue.dropped + len(queue) == 10
    first = taken[0]
    assert first is not None
    queue.done(first.ticket, Outcome.SENT, 0.0)
    assert queue.take(0.0) is not None
    queue.done(first.ticket, Outcome.SENT, 0.0)  # a second answer for the same ticket is ignored
    assert queue.sent == 1


def test_stopping_counts_what_waits_and_what_is_in_flight_as_dropped() -> None:
    queue = OutputQueue(window=2)
    for n in range(5):
        queue.push(delivery(n))
    queue.take(0.0)
    assert queue.drop_waiting() == 4
    assert queue.abandon() == 1
    assert (queue.dropped, len(queue)) == (5, 0)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SENT),
        (204, Outcome.SENT),
        (301, Outcome.REJECTED),  # redirects are not followed: the URL needs fixing
        (400, Outcome.REJECTED),
        (401, Outcome.REJECTED),
        (404, Outcome.REJECTED),
        (408, Outcome.RETRY),
        (413, Outcome.REJECTED),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_what_an_http_status_means(status: int, outcome: Outcome) -> None:
    assert http_outcome(status) is outcome


def test_the_signature_is_the_hmac_sha256_of_the_body_that_a_receiver_recomputes() -> None:
    body = b'{"type":"event","rule":"door"}'
    header = signature(body, "s3cret")
    assert header.startswith("sha256=")
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header.removeprefix("sha256="), expected)
    assert signature(body + b" ", "s3cret") != header
    assert signature(body, "other") != header


def test_the_receiver_check_in_docs_outputs_md_accepts_our_signature_and_nothing_else() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text()
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(match.group(1), namespace)  # the documented receiver code, as a reader would paste it
    verified = namespace["verified"]
    body = b'{"type":"event","stream":"door"}'
    assert verified(body, signature(body, "k"), "k")
    assert not verified(body + b"\n", signature(body, "k"), "k")
    assert not verified(body, signature(body, "other"), "k")
    assert not verified(body, "", "k")


def test_oldest_is_how_long_the_oldest_queued_delivery_has_waited_in_flight_or_not() -> None:
    queue = OutputQueue(window=1)
    assert queue.oldest(5.0) is None
    queue.push(Delivery(b"a", arrived=1.0))
    queue.push(Delivery(b"b", arrived=2.0))
    assert queue.oldest(5.0) == 4.0
    first = queue.take(5.0)
    assert first is not None and queue.oldest(6.0) == 5.0, "in flight still counts"
    queue.done(first.ticket, Outcome.SENT, 6.0)
    assert queue.oldest(6.0) == 4.0
