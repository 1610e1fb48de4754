"""The webhook output: each message of the configured types POSTed as JSON to a URL.

The body is the message exactly as it was published on the bus (the bytes websocket clients get),
``Content-Type: application/json``; with a secret, ``X-Vidnarrate-Signature: sha256=<hex>`` is the
HMAC-SHA256 of the body (:func:`~stream.outputqueue.signature`), so a receiver can tell the request
came from whoever holds the secret. One POST at a time, in the order published; what an answer means
is :func:`~stream.outputqueue.http_outcome` (2xx sent; 408, 429, 5xx, timeouts and connection errors
retried with the backoff; any other status dropped at once, logged with the reason).

The standard library's :mod:`http.client` makes the request: one POST on a fresh connection needs no
more, its ``timeout`` bounds connecting, sending and each wait for the answer, it follows no redirect
(urllib would turn a redirected POST into a GET without its body; here a 3xx is an error to fix in
the URL), and the run gains no dependency (httpx is not one of ours).
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
import urllib.parse

from .bus import Envelope
from .config import WebhookConfig
from .outputqueue import Backoff, Delivery, Outcome, OutputQueue, http_outcome, signature
from .outputworker import OutputWorker

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 200  # of a refusing receiver's answer, in the log and status
USER_AGENT = "vidnarrate-webhook"
REFUSAL_LOG_EVERY_S = 60.0


def public_target(url: str) -> str:
    """``scheme://host:port`` of a URL: what status may show (a webhook URL's path, query or user
    part often is the secret, e.g. a chat service's incoming-webhook token)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


class WebhookOutput(OutputWorker):
    def __init__(self, name: str, config: WebhookConfig, *, backoff: Backoff | None = None) -> None:
        queue = OutputQueue(
            capacity=config.queue,
            max_bytes=int(config.queue_mb * 1024 * 1024),
            window=1,
            max_attempts=config.max_attempts,
            backoff=backoff,
        )
        super().__init__(name, public_target(config.url), config.types, queue)
        self.config = config
        parts = urllib.parse.urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl.create_default_context() if self._https else None
        self._refusal: tuple[str | None, float] = (None, 0.0)  # the last one logged, and when

    def deliveries(self, envelope: Envelope, now: float) -> list[Delivery]:
        return [Delivery(envelope.body, now)]

    def run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                now = time.monotonic()
                if self._done_stopping(now):
                    return
                delivery = self.queue.take(now)
                wait = self.queue.wait(now)
            if delivery is None:
                self._sleep(wait)
                continue
            outcome, reason = self.post(delivery.body)
            with self._lock:
                before = self.queue.state
                dropped = self.queue.done(delivery.ticket, outcome, time.monotonic())
                self.error = reason
                after = self.queue.state
                retry_in = self.queue.wait(time.monotonic())
            if outcome is Outcome.REJECTED:
                self._log_refusal(reason)
            elif outcome is Outcome.RETRY and dropped:
                log.warning(
                    "%s: gave a message up after %d tries: %s", self.name, self.config.max_attempts, reason
                )
            elif outcome is Outcome.RETRY and before is not after:
                log.warning(
                    "%s: %s failed (%s); retrying in %.1f s", self.name, self.target, reason, retry_in or 0
                )
            elif outcome is Outcome.SENT and before is not after:
                log.info("%s: %s takes messages again", self.name, self.target)

    def _log_refusal(self, reason: str | None) -> None:
        """One line per refusal, but for a receiver refusing everything the same way one a minute."""
        now = time.monotonic()
        if reason == self._refusal[0] and now - self._refusal[1] < REFUSAL_LOG_EVERY_S:
            return
        self._refusal = (reason, now)
        log.warning(
            "%s: %s refused a message, not retried: %s (%d refused so far)",
            self.name,
            self.target,
            reason,
            self.queue.rejected,
        )

    def post(self, body: bytes) -> tuple[Outcome, str | None]:
        """One POST of ``body``: its outcome, and the reason when it failed."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Connection": "close"}
        if self.config.secret:
            headers["X-Vidnarrate-Signature"] = signature(body, self.config.secret)
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.config.timeout, context=self._ssl
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.config.timeout)
        try:
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(4096)
        except TimeoutError:
            return Outcome.RETRY, f"no answer within {self.config.timeout:g} s"
        except (OSError, http.client.HTTPException) as exc:
            return Outcome.RETRY, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            connection.close()
        outcome = http_outcome(response.status)
        if outcome is Outcome.SENT:
            return outcome, None
        text = answer.decode("utf-8", "replace").strip()
        reason = f"HTTP {response.status} {response.reason}" + (f": {text}" if text else "")
        return outcome, reason[:MAX_REASON_CHARS]
