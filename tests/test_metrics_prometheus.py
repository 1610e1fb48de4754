"""A real Prometheus server scrapes ``/metrics`` of a real ``vidnarrate run``, and we ask it through
its HTTP API what it stored: the way an operator's Prometheus and Grafana see a run.

The run has a token; Prometheus passes it as a bearer token (``authorization: credentials:`` in the
scrape config, the header :mod:`stream.auth` accepts). A second job scrapes the same target without
the token: Prometheus records it as down (401), so the metrics are not open to anyone on the port.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_executable
from liverun import LiveRun, short_run_root
from realparts import free_port, make_clip, stop_group

TOKEN = "prom-s3cret"
Vector = dict[tuple[tuple[str, str], ...], float]  # labels -> value


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "door.mp4", size="320x240", fps=25.0, seconds=10.0)


def scrape_config(target: str, token: str) -> str:
    """Two jobs on one target: with the token (as Prometheus sends it), and without."""
    return f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: vidnarrate
    authorization:
      credentials: {token}
    static_configs:
      - targets: ["{target}"]
  - job_name: no-token
    static_configs:
      - targets: ["{target}"]
"""


def start_prometheus(url: str, folder: Path, config: str) -> subprocess.Popen[bytes]:
    binary = require_executable("prometheus")
    (folder / "prometheus.yml").write_text(config)
    with (folder / "prometheus.log").open("wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return proc
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet, or 503 while it starts
        time.sleep(0.1)
    stop_group(proc)
    raise AssertionError(f"Prometheus not ready in 60 s:\n{(folder / 'prometheus.log').read_text()[-3000:]}")


def query(url: str, promql: str) -> Vector:
    """The instant vector of ``promql``: labels -> value."""
    params = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as answer:
        reply = json.load(answer)
    assert reply["status"] == "success", reply
    return {
        tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__")): float(item["value"][1])
        for item in reply["data"]["result"]
    }


def poll(url: str, promql: str, ok: Callable[[Vector], bool], timeout: float) -> Vector:
    """Query until ``ok(result)`` holds (Prometheus scrapes every second), or fail with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql}: still {result} after {timeout} s")
        time.sleep(0.5)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_prometheus_scrapes_a_run_with_its_token(tmp_path: Path, clip: Path) -> None:
    url, folder = f"http://127.0.0.1:{free_port()}", tmp_path
    with short_run_root() as root:
        live = LiveRun(
            [f"door={clip}"],
            root,
            extra=["--window", "4", "--stride", "2", "--loop", "--token", TOKEN],
            env={"XDG_DATA_HOME": str(tmp_path / "data")},
        )
        server = None
        try:
            live.start()
            server = start_prometheus(url, folder, scrape_config(f"127.0.0.1:{live.port}", TOKEN))
            up = poll(url, "up", lambda r: len(r) == 2, 60)
            assert up[(("instance", f"127.0.0.1:{live.port}"), ("job", "vidnarrate"))] == 1
            assert up[(("instance", f"127.0.0.1:{live.port}"), ("job", "no-token"))] == 0  # 401
            captions = poll(
                url,
                'vidnarrate_captions_total{job="vidnarrate"}',
                lambda r: any(v > 0 for v in r.values()),
                180,
            )
            assert [dict(labels)["stream"] for labels in captions] == ["door"]
            # The rest of a run's families, as Prometheus stored them from the same scrapes.
            latency = query(url, 'vidnarrate_caption_latency_seconds_count{stream="door"}')
            assert latency and list(latency.values())[0] > 0
            assert query(
                url, 'histogram_quantile(0.5, vidnarrate_caption_latency_seconds_bucket{stream="door"})'
            )
            frames = query(url, 'vidnarrate_frames_total{stream="door"}')
            assert frames and list(frames.values())[0] > 0
            assert query(url, 'vidnarrate_stream_state{stream="door",state="live"}')
            roles = {dict(labels)["role"] for labels in query(url, "vidnarrate_process_restarts_total")}
            assert {"gateway", "inference", "recorder", "capture:door"} <= roles, roles
            assert list(query(url, 'vidnarrate_model_state{state="ready"}').values()) == [1]
            poll(
                url,
                "vidnarrate_recorder_written_messages_total",
                lambda r: any(v > 0 for v in r.values()),
                30,
            )
            assert query(url, "vidnarrate_clients")
        finally:
            if server is not None:
                stop_group(server)
            live.kill()


def test_the_readme_scrape_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_executable("promtool")
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### Metrics (Prometheus)") :]
    block = re.search(r"^```yaml\n(.*?)^```", section, flags=re.S | re.M)
    assert block is not None
    token = tmp_path / "vidnarrate.token"
    token.write_text(TOKEN)
    config = tmp_path / "prometheus.yml"
    config.write_text(block.group(1).replace("/etc/prometheus/vidnarrate.token", str(token)))
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
