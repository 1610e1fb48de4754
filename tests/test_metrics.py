"""The metrics collector, fed status reports and captions as the gateway feeds it (reports into the
real status board, whose snapshot it reads), read back through prometheus_client's own parser of the
text format (what a Prometheus server reads)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import REPO_ROOT
from prometheus_client.parser import text_string_to_metric_families

from stream.fanout import StatusBoard
from stream.messages import (
    Caption,
    CaptureStatus,
    InferenceStatus,
    Message,
    ModelState,
    Processes,
    RecorderStatus,
    StreamState,
)
from stream.metrics import LATENCY_BUCKETS, StatusMetrics, family_names

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Report = CaptureStatus | InferenceStatus | Processes | RecorderStatus


class Fed:
    """The gateway's side of the metrics: reports go into its status board (and the inference report's
    own fields to the collector), captions to the collector; the collector reads the board."""

    def __init__(
        self,
        *,
        figures: dict[str, Any] | None = None,
        max_streams: int = 256,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.board = StatusBoard(max_streams=max_streams)
        self.now = 100.0
        self.metrics = StatusMetrics(
            status=lambda: self.board.snapshot(now=self.now, wall=1.0),
            gateway=None if figures is None else lambda: figures,
            max_streams=max_streams,
            buckets=buckets,
        )

    def feed(self, *reports: Report) -> Fed:
        for report in reports:
            if isinstance(report, InferenceStatus):
                self.metrics.inference_report(report)
            try:
                self.board.update(report, self.now)
            except ValueError:
                pass  # a stream beyond the board's limit: the gateway logs and ignores it too
        return self

    def scrape(self) -> tuple[dict[str, str], Samples]:
        return scrape(self.metrics)


def scrape(metrics: StatusMetrics) -> tuple[dict[str, str], Samples]:
    """The families' types by name, and every sample by (name, sorted labels)."""
    kinds: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        kinds[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return kinds, samples


def capture(stream: str, **changes: Any) -> CaptureStatus:
    fields: dict[str, Any] = dict(
        stream=stream,
        state=StreamState.LIVE,
        frames=300,
        fps=29.5,
        decode_errors=1,
        reconnects=2,
        drops=3,
        width=320,
        height=180,
        error=None,
        wall=1.0,
    )
    return CaptureStatus(**{**fields, **changes})


def inference(streams: dict[str, dict[str, Any]], **changes: Any) -> InferenceStatus:
    fields: dict[str, Any] = dict(
        streams=streams, model="tiny", device="cpu", state=ModelState.READY, wall=1.0
    )
    return InferenceStatus(**{**fields, **changes})


def caption(stream: str, latency_ms: float, seq: int = 0) -> bytes:
    return Caption(
        stream=stream,
        seq=seq,
        t_start=0.0,
        t_end=1.0,
        frame_times=[0.0, 1.0],
        wall_start=1.0,
        wall_end=2.0,
        text="a cat",
        model="tiny",
        latency_ms=latency_ms,
    ).to_json()


def test_capture_figures_become_counters_and_gauges_per_stream() -> None:
    fed = Fed()
    fed.feed(capture("door"))
    fed.feed(capture("yard", frames=10, state=StreamState.LOST))
    kinds, samples = fed.scrape()
    assert kinds["vidnarrate_frames"] == "counter" and kinds["vidnarrate_capture_fps"] == "gauge"
    door = (("stream", "door"),)
    assert samples["vidnarrate_frames_total", door] == 300
    assert samples["vidnarrate_dropped_frames_total", door] == 3
    assert samples["vidnarrate_reconnects_total", door] == 2
    assert samples["vidnarrate_decode_errors_total", door] == 1
    assert samples["vidnarrate_capture_fps", door] == 29.5
    assert samples["vidnarrate_frames_total", (("stream", "yard"),)] == 10
    # One sample per state, 1 for the current one: `vidnarrate_stream_state{state="lost"} == 1` alerts.
    assert samples["vidnarrate_stream_state", (("state", "lost"), ("stream", "yard"))] == 1
    assert samples["vidnarrate_stream_state", (("state", "live"), ("stream", "yard"))] == 0
    assert samples["vidnarrate_stream_state", (("state", "live"), ("stream", "door"))] == 1
    # A capture process the supervisor reports dead is lost, as in the viewer's status.
    fed.feed(Processes(processes={"capture:door": {"pid": 7, "restarts": 0, "alive": False}}, wall=2.0))
    _, samples = fed.scrape()
    assert samples["vidnarrate_stream_state", (("state", "lost"), ("stream", "door"))] == 1
    assert samples["vidnarrate_stream_state", (("state", "live"), ("stream", "door"))] == 0
    # The latest report wins.
    fed.feed(capture("door", frames=301))
    assert fed.scrape()[1]["vidnarrate_frames_total", door] == 301
    fed.now += 2.5  # a capture process that stops reporting shows it
    assert fed.scrape()[1]["vidnarrate_capture_report_age_seconds", door] == 2.5


def test_inference_figures_with_units_and_nulls_left_out() -> None:
    fed = Fed()
    fed.feed(
        inference(
            {
                "door": {
                    "captions": 7,
                    "skipped": 2,
                    "caption_errors": 1,
                    "lag_s": 1.5,
                    "model_ms": 250.0,
                    "encodes_per_frame": 1.0,
                    "caption_latency_ms": 900.0,
                },
                "yard": {"captions": 0, "lag_s": None, "model_ms": None, "encodes_per_frame": None},
            }
        )
    )
    kinds, samples = fed.scrape()
    door, yard = (("stream", "door"),), (("stream", "yard"),)
    assert kinds["vidnarrate_captions"] == "counter"
    assert samples["vidnarrate_captions_total", door] == 7
    assert samples["vidnarrate_captions_total", yard] == 0
    assert samples["vidnarrate_skipped_windows_total", door] == 2
    assert samples["vidnarrate_caption_errors_total", door] == 1
    assert samples["vidnarrate_lag_seconds", door] == 1.5
    assert samples["vidnarrate_model_seconds", door] == pytest.approx(0.25)  # reported in ms
    assert samples["vidnarrate_encodes_per_frame", door] == 1.0
    # null (no caption yet) is no sample, never a made-up 0
    assert ("vidnarrate_lag_seconds", yard) not in samples
    assert ("vidnarrate_model_seconds", yard) not in samples
    assert samples["vidnarrate_model_state", (("state", "ready"),)] == 1
    assert samples["vidnarrate_model_state", (("state", "loading"),)] == 0
    assert samples["vidnarrate_model_info", (("device", "cpu"), ("model", "tiny"))] == 1
    assert not any(name.startswith("vidnarrate_backend") for name, _ in samples)  # no remote backend


@dataclass(frozen=True, kw_only=True)
class RemoteInferenceStatus(InferenceStatus):
    """The inference report as a remote backend (issue 13, another branch) sends it: with its
    ``backend`` figures (``InferenceStatus.backend`` once that branch is merged)."""

    backend: Message | None = None


def test_a_remote_servers_figures_are_exposed_when_the_report_has_them() -> None:
    fed = Fed()
    backend = {
        "url": "http://router:8000/v1",
        "state": "unreachable",
        "error": "connection refused",
        "requests": 40,
        "in_flight": 3,
        "failures": 4,
        "refused": 1,
        "rate_limited": 5,
        "bytes_sent": 123456,
        "media_cache_misses": 2,
    }
    fed.feed(
        RemoteInferenceStatus(
            streams={"door": {"captions": 1}},
            model="minicpm-v",
            device="http://router:8000/v1",
            state=ModelState.READY,
            wall=1.0,
            backend=backend,
        )
    )
    kinds, samples = fed.scrape()
    assert samples["vidnarrate_backend_state", (("state", "unreachable"),)] == 1
    assert samples["vidnarrate_backend_state", (("state", "ok"),)] == 0
    assert samples["vidnarrate_backend_state", (("state", "rate_limited"),)] == 0
    assert samples["vidnarrate_backend_requests_total", ()] == 40
    assert samples["vidnarrate_backend_request_errors_total", ()] == 4
    assert samples["vidnarrate_backend_refused_requests_total", ()] == 1
    assert samples["vidnarrate_backend_rate_limited_total", ()] == 5
    assert samples["vidnarrate_backend_requests_in_flight", ()] == 3
    assert kinds["vidnarrate_backend_sent_bytes"] == "counter"
    assert samples["vidnarrate_backend_sent_bytes_total", ()] == 123456
    assert samples["vidnarrate_backend_media_cache_misses_total", ()] == 2
    assert samples["vidnarrate_captions_total", (("stream", "door"),)] == 1
    # A state this version does not know yet is still shown.
    fed.feed(
        RemoteInferenceStatus(
            streams={}, model="m", device="d", state=ModelState.READY, wall=2.0, backend={"state": "draining"}
        )
    )
    _, samples = fed.scrape()
    assert samples["vidnarrate_backend_state", (("state", "draining"),)] == 1
    assert samples["vidnarrate_backend_state", (("state", "unreachable"),)] == 0


def test_caption_latency_histogram_from_the_captions_that_pass() -> None:
    fed = Fed(buckets=(0.5, 1.0, 2.0))
    for latency_ms in (200.0, 700.0, 900.0, 5000.0):
        fed.metrics.observe_caption("door", caption("door", latency_ms))
    fed.metrics.observe_caption("door", b"not json")  # ignored, not a crash
    fed.metrics.observe_caption("door", b'{"type":"caption","latency_ms":"slow"}')
    kinds, samples = fed.scrape()
    assert kinds["vidnarrate_caption_latency_seconds"] == "histogram"

    def bucket(le: str) -> float:
        return samples["vidnarrate_caption_latency_seconds_bucket", (("le", le), ("stream", "door"))]

    assert (bucket("0.5"), bucket("1.0"), bucket("2.0"), bucket("+Inf")) == (1, 3, 3, 4)
    assert samples["vidnarrate_caption_latency_seconds_count", (("stream", "door"),)] == 4
    assert samples["vidnarrate_caption_latency_seconds_sum", (("stream", "door"),)] == pytest.approx(6.8)


def test_processes_recorder_and_gateway_figures() -> None:
    figures = {"clients": 2, "queued_messages": 5, "dropped_messages": 9, "uptime_s": 12.5, "ok": True}
    fed = Fed(figures=figures)
    fed.feed(
        Processes(
            processes={
                "inference": {"pid": 10, "restarts": 1, "alive": True, "finished": False, "exit_code": None},
                "capture:door": {"pid": 11, "restarts": 0, "alive": False, "finished": True, "exit_code": 1},
            },
            wall=1.0,
        )
    )
    fed.feed(
        RecorderStatus(
            store="/tmp/x.db", written=40, dropped=1, queue=3, errors=1, last_commit_wall=99.5, wall=1.0
        )
    )
    kinds, samples = fed.scrape()
    assert samples["vidnarrate_process_restarts_total", (("role", "inference"),)] == 1
    assert samples["vidnarrate_process_up", (("role", "inference"),)] == 1
    assert samples["vidnarrate_process_up", (("role", "capture:door"),)] == 0
    assert samples["vidnarrate_recorder_written_messages_total", ()] == 40
    assert samples["vidnarrate_recorder_dropped_messages_total", ()] == 1
    assert samples["vidnarrate_recorder_queued_messages", ()] == 3
    assert samples["vidnarrate_recorder_last_commit_timestamp_seconds", ()] == 99.5
    assert samples["vidnarrate_clients", ()] == 2
    assert samples["vidnarrate_queued_messages", ()] == 5
    assert kinds["vidnarrate_dropped_messages"] == "counter"
    assert samples["vidnarrate_dropped_messages_total", ()] == 9
    assert samples["vidnarrate_gateway_uptime_seconds", ()] == 12.5


def test_nothing_reported_yet_is_no_samples_and_streams_are_bounded() -> None:
    fed = Fed(max_streams=2)
    assert fed.scrape()[1] == {}
    for name in ("a", "b", "c"):
        fed.feed(capture(name))
        fed.metrics.observe_caption(name, caption(name, 100.0))
    fed.feed(inference({name: {"captions": 1} for name in ("a", "b", "c")}))
    _, samples = fed.scrape()
    for family in (
        "vidnarrate_frames_total",
        "vidnarrate_captions_total",
        "vidnarrate_caption_latency_seconds_count",
    ):
        assert {dict(labels)["stream"] for name, labels in samples if name == family} == {"a", "b"}, family


def test_stream_names_are_escaped_in_labels() -> None:
    fed = Fed()
    odd = 'cam "1"\\back\nyard'
    fed.feed(capture(odd))
    _, samples = fed.scrape()
    assert samples["vidnarrate_frames_total", (("stream", odd),)] == 300


def test_protocol_md_lists_every_metric_and_no_other() -> None:
    text = (REPO_ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("## Metrics") : text.index("## Between processes")]
    documented = set(re.findall(r"`(vidnarrate_[a-z_]+)`", section))
    assert documented == set(family_names())


def test_family_names_are_what_a_scrape_of_every_report_shows() -> None:
    fed = Fed(figures={"clients": 1, "dropped_messages": 0})
    fed.feed(capture("door"))
    fed.feed(inference({"door": {"captions": 1, "lag_s": 0.5}}))
    fed.feed(Processes(processes={"gateway": {"pid": 1, "restarts": 0, "alive": True}}, wall=1.0))
    fed.feed(
        RecorderStatus(store="x.db", written=1, dropped=0, queue=0, errors=0, last_commit_wall=None, wall=1.0)
    )
    fed.metrics.observe_caption("door", caption("door", 10.0))
    kinds, _ = fed.scrape()
    known = family_names()
    for name, kind in kinds.items():
        exposed = name + "_total" if kind == "counter" else name
        assert known.get(exposed) == kind, name


def test_several_inference_processes_label_the_model_state_and_info_by_role() -> None:
    fed = Fed()
    fed.feed(inference({"yard": {"captions": 3}}, role="inference:0", device="cuda:0"))
    fed.feed(
        inference({"gate": {"captions": 5}}, role="inference:1", device="cuda:1", state=ModelState.LOADING)
    )
    _, samples = fed.scrape()
    assert samples["vidnarrate_captions_total", (("stream", "yard"),)] == 3
    assert samples["vidnarrate_captions_total", (("stream", "gate"),)] == 5
    assert samples["vidnarrate_model_state", (("role", "inference:0"), ("state", "ready"))] == 1
    assert samples["vidnarrate_model_state", (("role", "inference:1"), ("state", "loading"))] == 1
    assert samples["vidnarrate_model_state", (("role", "inference:1"), ("state", "ready"))] == 0
    info = (("device", "cuda:1"), ("model", "tiny"), ("role", "inference:1"))
    assert samples["vidnarrate_model_info", info] == 1
