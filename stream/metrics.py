"""Prometheus metrics: the latest status reports of every process, as metric families on each scrape.

The gateway already merges every process's report into its status board (what viewers get as
``status``) and sees every caption. :class:`StatusMetrics` turns that merged status, when scraped, into
metric families through the tables below, so a stream whose capture process died is ``lost`` here as
in the viewer. It keeps only what the board does not: the inference report's own fields (the model's
state, a remote server's) and the caption latency histogram (from each caption's ``latency_ms`` as it
passes the gateway). No I/O, no clock: the ``/metrics`` route (:mod:`stream.routes`) only renders
:meth:`StatusMetrics.render`.

Figures a process reports as running totals are exposed as counters (``_total``): a restarted process
starts again from 0, which Prometheus' ``rate()`` and ``increase()`` treat as a counter reset. Names
carry their unit (``_seconds``); times reported in milliseconds are scaled. A figure a report does
not carry (or carries as null) has no sample; a new figure is one line in a table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .messages import InferenceStatus, Message, ModelState, Status, StreamState
from .placement import INFERENCE_ROLE

PREFIX: Final = "vidnarrate_"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# Caption latency (window end to caption published), seconds: a GPU answers in about a second, the
# tiny CPU model in a fraction of one, a busy CPU running the real model in tens of seconds.
LATENCY_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0)


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Figure:
    """One numeric field of a status report and the metric it becomes: ``vidnarrate_`` + ``name``
    (+ ``_total`` for a counter), its value times ``scale``."""

    field: str
    name: str
    kind: Kind
    doc: str
    scale: float = 1.0


@dataclass(frozen=True)
class State:
    """A state field (a string): one gauge sample per known state, 1 for the current one and 0 for the
    others (a state not in ``states`` still gets its sample of 1)."""

    field: str
    name: str
    doc: str
    states: tuple[str, ...] = ()  # the known states (each gets a sample), in order


C, G = Kind.COUNTER, Kind.GAUGE

# Per stream (label ``stream``), from its capture process's report as the status board keeps it.
CAPTURE_FIGURES: Final = (
    Figure(
        "fps", "capture_fps", G, "Frames per second the source delivers, as its capture process measures."
    ),
    Figure("frames", "frames", C, "Frames written to the ring (with sampled decoding: only the samples)."),
    Figure("drops", "dropped_frames", C, "Frames the capture process dropped (the ring was full)."),
    Figure("decode_errors", "decode_errors", C, "Frames or packets the decoder could not decode."),
    Figure("reconnects", "reconnects", C, "Times the capture process reopened the source."),
    Figure("age_s", "capture_report_age_seconds", G, "Seconds since the capture process last reported."),
)
CAPTURE_STATES: Final = (
    State(
        "state",
        "stream_state",
        "The source's state: 1 for the current one.",
        tuple(m.value for m in StreamState),
    ),
)
# Per stream (label ``stream``), from the inference process's report, merged into the same entry.
INFERENCE_FIGURES: Final = (
    Figure("captions", "captions", C, "Captions published."),
    Figure("skipped", "skipped_windows", C, "Caption windows skipped to keep up with the stream."),
    Figure("caption_errors", "caption_errors", C, "Caption windows the model failed on."),
    Figure("unchanged", "unchanged_captions", C, "Captions that extended the last one (no model call)."),
    Figure("sampled", "sampled_frames", C, "Frames sampled for the model."),
    Figure("vision_encodes", "vision_encodes", C, "Frames run through the vision encoder."),
    Figure("missing_frames", "missing_frames", C, "Sampled frames gone from the ring before they were read."),
    Figure("encodes_per_frame", "encodes_per_frame", G, "Vision encodes per sampled frame (1: each once)."),
    Figure("pending_frames", "pending_frames", G, "Sampled frames waiting for the vision encoder."),
    Figure("cached_frames", "cached_frames", G, "Frame embeddings in the stream's cache."),
    Figure("lag_s", "lag_seconds", G, "Stream time between the newest frame and the last caption's end."),
    Figure("model_ms", "model_seconds", G, "Model time of the stream's last caption.", 0.001),
)
INFERENCE_STATES: Final = (
    State(
        "state",
        "model_state",
        "The model's state: 1 for the current one.",
        tuple(m.value for m in ModelState),
    ),
)
# From the inference report's ``backend`` (a remote model server; absent for a local model).
BACKEND_FIGURES: Final = (
    Figure("requests", "backend_requests", C, "Requests the remote model server answered."),
    Figure(
        "failures", "backend_request_errors", C, "Requests that failed (server down or 5xx) and were retried."
    ),
    Figure(
        "refused", "backend_refused_requests", C, "Requests the server refused (4xx), each a caption error."
    ),
    Figure("rate_limited", "backend_rate_limited", C, "429 answers (rate limited), each retried."),
    Figure("in_flight", "backend_requests_in_flight", G, "Requests to the server in flight."),
    Figure("bytes_sent", "backend_sent_bytes", C, "Request bytes sent to the server."),
    Figure("media_cache_misses", "backend_media_cache_misses", C, "Frames the server's media cache lacked."),
)
BACKEND_STATES: Final = (
    State(
        "state",
        "backend_state",
        "The remote model server's state: 1 for the current one.",
        ("ok", "unreachable", "rate_limited"),
    ),
)
# Per process (label ``role``: gateway, inference, recorder, capture:NAME), from the supervisor.
PROCESS_FIGURES: Final = (
    Figure("restarts", "process_restarts", C, "Times the supervisor restarted the process."),
    Figure("alive", "process_up", G, "1 while the process runs."),
)
RECORDER_FIGURES: Final = (
    Figure("written", "recorder_written_messages", C, "Messages committed to the caption store."),
    Figure(
        "dropped", "recorder_dropped_messages", C, "Messages the recorder lost (queue full, write failed)."
    ),
    Figure("errors", "recorder_errors", C, "Store writes that failed."),
    Figure("queue", "recorder_queued_messages", G, "Messages waiting to be written."),
    Figure(
        "last_commit_wall", "recorder_last_commit_timestamp_seconds", G, "When the last batch was committed."
    ),
)
# The gateway's own figures (its /healthz dict).
GATEWAY_FIGURES: Final = (
    Figure("clients", "clients", G, "Websocket clients connected."),
    Figure("clients_behind", "clients_behind", G, "Clients with messages queued (reading slower than sent)."),
    Figure("queued_messages", "queued_messages", G, "Messages queued for clients, in all."),
    Figure("dropped_messages", "dropped_messages", C, "Messages dropped for clients that read too slowly."),
    Figure("slow_clients_closed", "slow_clients_closed", C, "Clients closed for staying too far behind."),
    Figure("bus_messages", "bus_messages", C, "Messages the gateway read from the bus."),
    Figure("bad_bus_messages", "bad_bus_messages", C, "Bus messages the gateway could not read."),
    Figure("error_replies", "error_replies", C, "Error replies sent to clients."),
    Figure("pending_asks", "pending_asks", G, "Asks waiting for the inference process's answer."),
    Figure("queries_in_flight", "queries_in_flight", G, "Searches and histories running on the store."),
    Figure("uptime_s", "gateway_uptime_seconds", G, "Seconds since the gateway started listening."),
)

LATENCY_HISTOGRAM: Final = PREFIX + "caption_latency_seconds"
MODEL_INFO: Final = PREFIX + "model_info"


def family_names() -> dict[str, str]:
    """Every metric family ``/metrics`` can expose, as exposed (counters with ``_total``), and its type:
    what the docs list and alert rules may name."""
    names = {LATENCY_HISTOGRAM: "histogram", MODEL_INFO: "gauge"}
    for table in (
        CAPTURE_FIGURES,
        INFERENCE_FIGURES,
        BACKEND_FIGURES,
        PROCESS_FIGURES,
        RECORDER_FIGURES,
        GATEWAY_FIGURES,
    ):
        for figure in table:
            suffix = "_total" if figure.kind is Kind.COUNTER else ""
            names[PREFIX + figure.name + suffix] = figure.kind.value
    for states in (CAPTURE_STATES, INFERENCE_STATES, BACKEND_STATES):
        names.update({PREFIX + state.name: "gauge" for state in states})
    return names


class StatusMetrics:
    """The collector. ``status`` returns the gateway's merged :class:`~stream.messages.Status` (the
    status board's snapshot: per stream figures, processes, recorder), ``gateway`` the gateway's own
    figures; both are called on each scrape, so ``/metrics`` shows what a viewer's ``status`` shows.
    Feed it what the board drops: the inference report's own fields (:meth:`inference_report`: the
    model's state, a remote server's state) and every caption (:meth:`observe_caption`, for the
    latency histogram, of at most ``max_streams`` streams). Scrape it through :meth:`render`."""

    def __init__(
        self,
        *,
        status: Callable[[], Status],
        gateway: Callable[[], Message] | None = None,
        max_streams: int = 256,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self._status = status
        self._gateway = gateway
        self._inference: dict[str, Message] = {}  # role -> its latest report's own fields
        self._latency = _Histograms(buckets, max_streams)
        self._max_processes = max_streams
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def inference_report(self, report: InferenceStatus) -> None:
        """Keep the latest inference report's own fields (its per-stream figures reach the status),
        per inference process: with several (``[model] devices``) the model's state and info carry
        a ``role`` label."""
        if report.role in self._inference or len(self._inference) < self._max_processes:
            self._inference[report.role] = {k: v for k, v in report.to_dict().items() if k != "streams"}

    def observe_caption(self, stream: str, body: bytes) -> None:
        """Count a caption's ``latency_ms`` (its bus JSON, as published) in the stream's histogram; a
        caption without a usable latency is not counted."""
        try:
            latency = json.loads(body).get("latency_ms")
        except (ValueError, AttributeError, RecursionError):
            return
        if _number(latency) is not None and latency >= 0:
            self._latency.observe(stream, latency / 1000)

    def render(self) -> bytes:
        """The text exposition format (:data:`CONTENT_TYPE`) of every metric."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector hook: the metric families of the latest reports."""
        status = self._status()
        streams = _keyed(status.streams)
        yield from _families(CAPTURE_FIGURES, ("stream",), streams)
        yield from _states(CAPTURE_STATES, ("stream",), streams)
        yield from _families(INFERENCE_FIGURES, ("stream",), streams)
        yield self._latency.family(
            LATENCY_HISTOGRAM,
            "Time from a caption window's last frame to its caption, as captions pass the gateway.",
        )
        if self._inference:
            labels: tuple[str, ...] = () if list(self._inference) == [INFERENCE_ROLE] else ("role",)
            rows = [((role,) if labels else (), self._inference[role]) for role in sorted(self._inference)]
            yield from _states(INFERENCE_STATES, labels, rows)
            backends = [(key, row["backend"]) for key, row in rows if isinstance(row.get("backend"), dict)]
            if backends:
                yield from _families(BACKEND_FIGURES, labels, backends)
                yield from _states(BACKEND_STATES, labels, backends)
            info = GaugeMetricFamily(
                MODEL_INFO,
                "The model the inference process runs, and where.",
                labels=["model", "device", *labels],
            )
            for key, row in rows:
                info.add_metric([str(row.get("model")), str(row.get("device")), *key], 1)
            yield info
        yield from _families(PROCESS_FIGURES, ("role",), _keyed(status.processes))
        if status.recorder is not None:
            yield from _families(RECORDER_FIGURES, (), [((), status.recorder)])
        if self._gateway is not None:
            yield from _families(GATEWAY_FIGURES, (), [((), self._gateway())])


class _Histograms:
    """Cumulative bucket counts per stream (the only figures kept here rather than reported)."""

    def __init__(self, buckets: Sequence[float], max_streams: int) -> None:
        self.bounds = tuple(sorted(buckets))
        self.max_streams = max_streams
        self._counts: dict[str, list[int]] = {}  # per bound, then +Inf: observations <= it
        self._sums: dict[str, float] = {}

    def observe(self, stream: str, value: float) -> None:
        counts = self._counts.get(stream)
        if counts is None:
            if len(self._counts) >= self.max_streams:
                return
            counts = self._counts[stream] = [0] * (len(self.bounds) + 1)
            self._sums[stream] = 0.0
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1
        self._sums[stream] += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=["stream"])
        edges = [_bound(b) for b in self.bounds] + ["+Inf"]
        for stream, counts in self._counts.items():
            family.add_metric([stream], list(zip(edges, counts, strict=True)), self._sums[stream])
        return family


def _bound(value: float) -> str:
    return repr(float(value))


def _keyed(reports: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Message]]:
    return [((key,), value) for key, value in reports.items() if isinstance(value, dict)]


def _families(
    figures: Iterable[Figure], labels: Sequence[str], rows: Sequence[tuple[tuple[str, ...], Message]]
) -> Iterator[Metric]:
    """One family per figure that at least one row carries as a number."""
    for figure in figures:
        samples = [
            (key, value * figure.scale)
            for key, row in rows
            if (value := _number(row.get(figure.field))) is not None
        ]
        if not samples:
            continue
        family: CounterMetricFamily | GaugeMetricFamily
        if figure.kind is Kind.COUNTER:
            family = CounterMetricFamily(PREFIX + figure.name, figure.doc, labels=list(labels))
        else:
            family = GaugeMetricFamily(PREFIX + figure.name, figure.doc, labels=list(labels))
        for key, value in samples:
            family.add_metric(list(key), value)
        yield family


def _states(
    states: Iterable[State], labels: Sequence[str], rows: Sequence[tuple[tuple[str, ...], Message]]
) -> Iterator[Metric]:
    for spec in states:
        family = GaugeMetricFamily(PREFIX + spec.name, spec.doc, labels=[*labels, "state"])
        present = False
        for key, row in rows:
            current = row.get(spec.field)
            if not isinstance(current, str):
                continue
            present = True
            known = list(spec.states)
            for state in known if current in known else [*known, current]:
                family.add_metric([*key, state], 1.0 if state == current else 0.0)
        if present:
            yield family


def _number(value: Any) -> float | None:
    """A report's figure as a float (a bool as 0/1); None for null, strings and non-finite values."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None
