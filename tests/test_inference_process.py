"""The inference process's own exits, run as the supervisor runs it: a spawned child through
stream.process.child_entry (which leaves with os._exit), watched only through the real zmq bus."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

from stream.bus import RunPaths, Subscriber
from stream.inference import InferenceOptions, inference_main
from stream.messages import InferenceStatus
from stream.process import ExitCode, child_entry


def _backend_that_cannot_load(options: InferenceOptions) -> Any:
    """Plays a model load that fails the way a wrong device or dtype does (a ValueError)."""
    raise ValueError(f"device {options.device!r}: out of memory while loading (test)")


def test_a_model_that_cannot_load_says_why_on_the_bus_and_is_not_restarted(tmp_path: Path) -> None:
    run = RunPaths.create(root=tmp_path)
    subscriber = Subscriber([run.publisher_endpoint("inference")])
    options = InferenceOptions(run_id=run.run_id, run_dir=str(run.run_dir), streams={}, device="cuda:3")
    kwargs = {"options": options, "backend_factory": _backend_that_cannot_load}
    process = mp.get_context("spawn").Process(target=child_entry, args=("inference", inference_main, kwargs))
    try:
        process.start()
        process.join(60)
        assert process.exitcode == ExitCode.CONFIG  # the supervisor stops the run instead of retrying
        seen = []
        while (message := subscriber.recv(1.0)) is not None:
            seen.append(message)
        assert all(isinstance(m, InferenceStatus) for m in seen), seen
        assert [m.state for m in seen] == ["loading", "failed"], seen
        error = seen[-1].error
        assert error is not None and "out of memory while loading" in error and "cuda:3" in error
    finally:
        if process.is_alive():
            process.kill()
        subscriber.close()
        run.remove()


LOADING_MARKER = "loading.marker"


def _backend_that_loads_forever(options: InferenceOptions) -> Any:
    """Plays the real model's minutes-long load (reading 16 GB of weights); the marker file says the
    load has begun (the process is inside it, with its SIGTERM handler in place)."""
    (Path(options.run_dir) / LOADING_MARKER).write_text("loading")
    while True:
        time.sleep(0.05)  # the "load": checks no stop event, as a real weight read does not


def test_sigterm_while_the_model_loads_stops_at_once(tmp_path: Path) -> None:
    run = RunPaths.create(root=tmp_path)
    subscriber = Subscriber([run.publisher_endpoint("inference")])
    options = InferenceOptions(run_id=run.run_id, run_dir=str(run.run_dir), streams={})
    kwargs = {"options": options, "backend_factory": _backend_that_loads_forever}
    process = mp.get_context("spawn").Process(target=child_entry, args=("inference", inference_main, kwargs))
    try:
        process.start()
        assert subscriber.recv(30) is not None  # "loading" said on the bus
        deadline = time.monotonic() + 30
        while not (run.run_dir / LOADING_MARKER).exists():  # inside the load now
            assert time.monotonic() < deadline, "the load never began"
            time.sleep(0.01)
        asked = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)  # what the supervisor sends on Ctrl-C
        process.join(10)
        assert process.exitcode == 0 and time.monotonic() - asked < 2.0
    finally:
        if process.is_alive():
            process.kill()
        subscriber.close()
        run.remove()
