"""``[model] devices = ["cpu", "cpu"]`` through a real ``vidnarrate run``: two inference processes,
each captioning only the streams placed on it (stream.placement), asks answered by the owner, and a
killed inference process restarted while the other's streams keep captioning. Two CPU "devices" are
the same CPU here; what is tested is the process layout, which is the same for two GPUs."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from liverun import LiveRun, collect, of_type, short_run_root, wait_for
from realparts import make_clip

from stream.bus import RunPaths, Subscriber
from stream.messages import Caption, InferenceStatus
from stream.placement import assign

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

TWO_CPUS = ["--set", 'model.devices=["cpu", "cpu"]']
NAMES = ["yard", "door", "gate"]
# Placed by name, the same in every run: yard and door on inference:0, gate on inference:1.
OWNED = {"inference:0": ["yard", "door"], "inference:1": ["gate"]}


def test_the_names_are_placed_as_this_module_expects() -> None:
    assert assign(NAMES, 2) == [OWNED["inference:0"], OWNED["inference:1"]]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        name: make_clip(folder / f"{name}.mp4", size="320x240", fps=10.0, seconds=20.0)
        for name in [*NAMES, "short", "brief"]
    }


@pytest.fixture(scope="module")
def live(clips: dict[str, Path]) -> Iterator[LiveRun]:
    with short_run_root() as root:
        run = LiveRun(
            [f"{name}={clips[name]}" for name in NAMES],
            root,
            extra=[*TWO_CPUS, "--window", "4", "--stride", "4", "--loop", "--no-store"],
        )
        run.start(timeout=240)
        yield run
        run.kill()


def _published(caption: dict[str, Any]) -> float:
    """When a caption left its inference process (its window's end plus its latency)."""
    return float(caption["wall_end"]) + float(caption["latency_ms"]) / 1000


def test_each_inference_process_captions_only_its_own_streams(live: LiveRun) -> None:
    run_dir = live.run_dirs[0]
    paths = RunPaths(run_id=run_dir.name, run_dir=run_dir)
    heard: dict[str, list[Any]] = {}
    for role, owned in OWNED.items():
        bus = Subscriber([paths.publisher_endpoint(role)])
        try:
            got: list[Any] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                any(isinstance(m, InferenceStatus) and m.streams for m in got)
                and {m.stream for m in got if isinstance(m, Caption)} == set(owned)
            ):
                message = bus.recv(timeout=1.0)
                if message is not None:
                    got.append(message)
            heard[role] = got
        finally:
            bus.close()
        reports = [m for m in got if isinstance(m, InferenceStatus) and m.streams]
        assert reports, f"{role} reported nothing:\n{live.log()}"
        assert all(r.role == role and set(r.streams) == set(owned) for r in reports), reports[-1]
        assert {m.stream for m in got if isinstance(m, Caption)} == set(owned), live.log()

    def placed(messages: list[dict[str, Any]]) -> bool:
        statuses = of_type(messages, "status")
        return bool(statuses) and all(
            statuses[-1]["streams"].get(name, {}).get("inference") == role
            for role, owned in OWNED.items()
            for name in owned
        )

    messages = collect(live.ws_url, placed, timeout=30)
    assert placed(messages), of_type(messages, "status")[-1:]
    status = of_type(messages, "status")[-1]
    assert {"inference:0", "inference:1"} <= set(status["processes"]) and "inference" not in status[
        "processes"
    ]
    assert status["device"] == "cpu, cpu"


def test_an_ask_goes_to_the_process_that_owns_its_stream(live: LiveRun) -> None:
    """gate is owned by inference:1; the gateway's default asks endpoint is inference:0's, which does
    not know gate: only a routed ask is answered."""
    ask = {"type": "ask", "id": "g-1", "stream": "gate", "question": "What is at the gate?"}

    def answered(messages: list[dict[str, Any]]) -> bool:
        return any(m.get("id") == "g-1" for m in messages)

    messages = collect(live.ws_url, answered, timeout=120, send=[ask])
    replies = [m for m in messages if m.get("id") == "g-1"]
    assert replies and replies[0]["type"] == "answer", replies or live.log()
    assert replies[0]["stream"] == "gate" and isinstance(replies[0]["text"], str)
    assert "inference:0 exited" not in "".join(live.stderr)
    assert "inference:1 exited" not in "".join(live.stderr)


def test_a_killed_inference_process_restarts_and_the_other_keeps_captioning(live: LiveRun) -> None:
    status = of_type(collect(live.ws_url, lambda m: bool(of_type(m, "status")), timeout=10), "status")[-1]
    killed, other = status["processes"]["inference:1"], status["processes"]["inference:0"]
    os.kill(killed["pid"], signal.SIGKILL)
    killed_at = time.time()

    def resumed(messages: list[dict[str, Any]]) -> bool:
        return any(_published(c) > killed_at for c in of_type(messages, "caption", "gate"))

    messages = collect(live.ws_url, resumed, timeout=240)
    assert resumed(messages), live.log()
    back_at = min(_published(c) for c in of_type(messages, "caption", "gate") if _published(c) > killed_at)
    meanwhile = [
        c
        for name in OWNED["inference:0"]
        for c in of_type(messages, "caption", name)
        if killed_at < _published(c) < back_at
    ]
    # At least one (a restart can take less than a stride): captioning went on, not merely resumed.
    assert meanwhile, f"no caption of yard or door in the {back_at - killed_at:.1f} s gate was down"
    wait_for(
        lambda: "inference:1 exited with code" in "".join(live.stderr), 10, "the supervisor to log the crash"
    )
    processes = of_type(collect(live.ws_url, lambda m: bool(of_type(m, "status")), timeout=10), "status")[-1][
        "processes"
    ]
    assert processes["inference:1"]["restarts"] >= 1 and processes["inference:1"]["pid"] != killed["pid"]
    assert processes["inference:0"]["pid"] == other["pid"], "the other process was not touched"
    assert processes["inference:0"]["restarts"] == other["restarts"]


def test_a_run_of_files_stops_once_every_inference_process_has_drained(tmp_path: Path) -> None:
    """brief is placed on inference:0, short on inference:1: the run exits 0 only after both have
    published the tail of their file (heard on each process's own bus)."""
    assert assign(["short", "brief"], 2) == [["brief"], ["short"]]
    files = {
        name: make_clip(tmp_path / f"{name}.mp4", size="320x240", fps=10.0, seconds=seconds)
        for name, seconds in (("short", 7.0), ("brief", 11.0))
    }
    with short_run_root() as root:
        run = LiveRun(
            [f"{name}={path}" for name, path in files.items()],
            root,
            extra=[*TWO_CPUS, "--window", "4", "--stride", "4", "--no-store"],
        ).launch()
        assert run.proc is not None
        bus: Subscriber | None = None
        try:
            wait_for(lambda: bool(run.run_dirs), 30, "the run directory")
            run_dir = run.run_dirs[0]
            paths = RunPaths(run_id=run_dir.name, run_dir=run_dir)
            bus = Subscriber(
                [paths.publisher_endpoint("inference:0"), paths.publisher_endpoint("inference:1")]
            )
            assert run.proc.wait(400) == 0, run.log()
            run.wait_output()
            heard = []
            while (message := bus.recv(timeout=1.0)) is not None:
                heard.append(message)
        finally:
            if bus is not None:
                bus.close()
            run.kill()
        out = "".join(run.stdout)
        assert "source short ended" in out and "source brief ended" in out, run.log()
        assert "last captions are out; stopping" in out, run.log()
        tails = {
            name: max((m.t_end for m in heard if isinstance(m, Caption) and m.stream == name), default=0.0)
            for name in files
        }
        assert tails["short"] > 4.5 and tails["brief"] > 8.5, f"each file's tail is captioned: {tails}"
        assert run.run_dirs == []


def test_a_bad_entry_of_model_devices_is_refused_naming_the_key(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    import subprocess

    from liverun import VIDNARRATE

    def run(devices: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(tmp_path / "runs")}
        args = ["run", "--source", str(clips["yard"]), "--model", "tiny", "--set", f"model.devices={devices}"]
        return subprocess.run([str(VIDNARRATE), *args], capture_output=True, text=True, timeout=60, env=env)

    typo = run('["cpu", "gpu1"]')
    assert typo.returncode == 2 and "model.devices: 'gpu1' is not" in typo.stderr, typo.stderr
    if not torch.cuda.is_available():
        absent = run('["cpu", "cuda:1"]')
        assert absent.returncode == 2, absent.stderr
        assert "model.devices: device 'cuda:1': CUDA is not available" in absent.stderr, absent.stderr
    assert not (tmp_path / "runs").exists(), "nothing was started"


def test_the_pipeline_gives_each_process_its_streams_device_endpoints_and_cpu_share() -> None:
    """What LivePipeline hands its children, read from their specs (real rings, nothing started)."""
    from stream.config import Config, apply_overrides
    from stream.pipeline import LivePipeline, NamedSource
    from stream.ring import FrameRing, ring_name

    config = apply_overrides(Config(), {"model.devices": ["cpu", "cpu"], "model.name": "tiny"}, "test")
    sources = [NamedSource(name, "x.mp4") for name in NAMES]
    with short_run_root() as root:
        pipeline = LivePipeline(config, sources, store=None, run_root=root)
        try:
            for source in sources:
                name = ring_name(pipeline.run.run_id, source.name)
                pipeline.rings[source.name] = FrameRing.create(name, slots=2, max_height=28, max_width=28)
            specs = {role: pipeline._inference_spec(role) for role in OWNED}
            for role, spec in specs.items():
                options = spec.kwargs["options"]
                assert spec.role == options.role == role
                assert list(options.streams) == OWNED[role] and options.device == "cpu"
                assert options.threads == max(1, (os.cpu_count() or 1) // 2)
            gateway = pipeline._gateway_spec().kwargs
            routes = {
                name: pipeline.run.asks_endpoint_for(role) for role, names in OWNED.items() for name in names
            }
            assert gateway["ask_routes"] == routes
            endpoints = gateway["events_endpoints"]
            assert all(pipeline.run.publisher_endpoint(role) in endpoints for role in OWNED)
            assert pipeline.run.publisher_endpoint("inference") not in endpoints
        finally:
            for ring in pipeline.rings.values():
                ring.close()
                ring.unlink()
            pipeline.run.remove()

    with short_run_root() as root:
        one = LivePipeline(apply_overrides(Config(), {"model.device": "cpu"}, "test"), sources, run_root=root)
        try:
            assert list(one.inference) == ["inference"] and one._ask_routes() is None
            assert one.inference["inference"] == ("cpu", NAMES)
        finally:
            one.run.remove()
