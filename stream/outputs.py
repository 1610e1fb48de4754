"""The outputs process of ``vidnarrate run``: the bus to the webhooks and the MQTT broker of
``[outputs]`` (started only when there is one).

The main thread reads the run's publishers (as the gateway and the recorder do) and offers each
message to every output (:class:`~stream.outputworker.OutputWorker`), which queues it without waiting
on the network; each output delivers from a thread of its own (:mod:`stream.webhook`,
:mod:`stream.mqttout`). ``outputs_status`` (per output: ``state``, ``sent``, ``failed``, ``dropped``,
``queued``, ...) is published at ~1 Hz and when an output's state changes; the gateway folds it into
``status.outputs``.

On stop (the supervisor's SIGTERM) the reader drains the bus until it has been quiet for a moment,
the outputs get until ``stop_by`` seconds after the stop to deliver what is queued, what is left is
counted as dropped in a last status, and the MQTT output publishes ``offline``. A delivering thread
that died of a bug makes the process exit 1: the supervisor restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from .bus import Publisher, Subscriber
from .config import OutputsConfig
from .errors import ProtocolError
from .messages import OutputsStatus
from .mqttout import MqttOutput
from .outputworker import OutputWorker
from .process import ExitCode
from .webhook import WebhookOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputsOptions:
    run_id: str
    outputs: OutputsConfig
    events_endpoints: tuple[str, ...]  # the publishers to read
    status_endpoint: str  # where this process publishes ``outputs_status``
    status_every: float = 1.0
    drain_quiet: float = 0.3  # stopping: the bus is drained once it has been quiet this long
    stop_by: float = 3.0  # stopping: seconds to deliver what is queued (the supervisor kills after 5)


def make_outputs(config: OutputsConfig, *, run_id: str) -> list[OutputWorker]:
    outputs: list[OutputWorker] = [
        WebhookOutput(f"webhook:{index}", webhook) for index, webhook in enumerate(config.webhook)
    ]
    if config.mqtt is not None:
        outputs.append(MqttOutput(config.mqtt, client_id=f"vidnarrate-{run_id}"))
    return outputs


def outputs_status(outputs: list[OutputWorker]) -> OutputsStatus:
    return OutputsStatus(outputs={o.name: o.status() for o in outputs}, wall=time.time())


def outputs_main(options: OutputsOptions, *, stop_event: Any) -> int:
    outputs = make_outputs(options.outputs, run_id=options.run_id)
    subscriber = Subscriber(list(options.events_endpoints))
    publisher = Publisher(options.status_endpoint, own_context=True)
    for output in outputs:
        output.start()
    try:
        _read_bus(options, outputs, subscriber, publisher, stop_event)
    finally:
        subscriber.close()
        stop_by = time.monotonic() + options.stop_by
        # Stopped in parallel: each gets the whole time, not what the one before left.
        stoppers = [threading.Thread(target=o.stop, args=(stop_by,)) for o in outputs]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        publisher.send(outputs_status(outputs))
        publisher.close(linger=1.0)
    return ExitCode.FAILED if any(o.failed for o in outputs) else ExitCode.OK


def _read_bus(
    options: OutputsOptions,
    outputs: list[OutputWorker],
    subscriber: Subscriber,
    publisher: Publisher,
    stop: threading.Event,
) -> None:
    next_status = 0.0
    states = [o.state for o in outputs]
    quiet_since: float | None = None
    while True:
        now = time.monotonic()
        if stop.is_set():
            quiet_since = now if quiet_since is None else quiet_since
            if now - quiet_since >= options.drain_quiet:
                return
        if any(o.failed for o in outputs):
            return
        current = [o.state for o in outputs]
        if now >= next_status or current != states:
            states = current
            next_status = now + options.status_every
            publisher.send(outputs_status(outputs))
        try:
            envelope = subscriber.recv_envelope(0.05)
        except ProtocolError as exc:
            log.warning("ignoring a bad bus message: %s", exc)
            continue
        if envelope is None:
            continue
        quiet_since = None if quiet_since is None else time.monotonic()
        for output in outputs:
            output.offer(envelope)
