"""The supervisor with real child processes: restart with backoff, finished vs crashed vs fatal, stop."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.bus import RunPaths, Subscriber
from stream.messages import Processes
from stream.supervisor import ChildSpec, Supervisor


def crash_after(seconds: float, code: int, stop_event: Any) -> int:
    stop_event.wait(seconds)
    return code


def run_until_stopped(marker: str, stop_event: Any) -> int:
    Path(marker).write_text(str(os.getpid()))
    while not stop_event.wait(0.05):
        pass
    Path(marker).with_suffix(".stopped").write_text("clean")
    return 0


def ignore_stop(marker: str, stop_event: Any) -> int:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(marker).write_text(str(os.getpid()))  # from here on, only SIGKILL ends it
    while True:
        signal.pause()


def drive_until(supervisor: Supervisor, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll the supervisor (as the run's main loop does) until ``done()``, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        supervisor.poll()
        time.sleep(0.02)


def test_crashed_child_is_restarted_with_doubling_backoff_and_reported(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level("INFO", logger="stream.supervisor")
    run = RunPaths.create(root=tmp_path)
    supervisor = Supervisor(run, backoff_initial=0.2, backoff_max=0.4, stop_timeout=2)
    supervisor.open_bus()
    subscriber = Subscriber([run.publisher_endpoint("supervisor")])
    try:
        supervisor.start(ChildSpec("crasher", crash_after, {"seconds": 0.0, "code": 3}))
        supervisor.start(ChildSpec("done", crash_after, {"seconds": 0.0, "code": 0}))
        supervisor.start(ChildSpec("fatal", crash_after, {"seconds": 0.0, "code": 78}, fatal_codes=(78,)))

        def delays() -> list[str]:
            return [
                r.getMessage().rsplit(" ", 2)[-2]
                for r in caplog.records
                if r.getMessage().startswith("crasher exited with code 3; restarting in")
            ]

        def settled() -> bool:
            processes = supervisor.processes()
            return len(delays()) >= 3 and processes["done"]["finished"] and processes["fatal"]["finished"]

        drive_until(supervisor, settled, 60, "three crashes, the finished child and the fatal one")
        processes = supervisor.processes()
        assert processes["crasher"]["restarts"] >= 2
        assert delays()[:3] == ["0.2", "0.4", "0.4"], "backoff doubles, capped at backoff_max"
        assert processes["done"] == {**processes["done"], "restarts": 0, "finished": True, "exit_code": 0}
        assert processes["fatal"]["restarts"] == 0 and processes["fatal"]["finished"]
        assert supervisor.fatal_exit() == ("fatal", 78)
        assert supervisor.failed_roles() == ["fatal"] and supervisor.ended_roles() == ["done"]
        reports = []
        while (message := subscriber.recv(timeout=0.2)) is not None:
            reports.append(message)
        assert reports and all(isinstance(m, Processes) for m in reports)
        assert reports[-1].processes["crasher"]["restarts"] >= 1
    finally:
        supervisor.stop()
        subscriber.close()
        run.remove()


def test_stop_is_clean_for_a_well_behaved_child_and_forced_for_a_stuck_one(tmp_path: Path) -> None:
    run = RunPaths.create(root=tmp_path)
    supervisor = Supervisor(run, stop_timeout=1.0)
    marker = tmp_path / "child.pid"
    stuck = tmp_path / "stuck.pid"
    supervisor.start(ChildSpec("worker", run_until_stopped, {"marker": str(marker)}))
    supervisor.start(ChildSpec("stuck", ignore_stop, {"marker": str(stuck)}))
    drive_until(supervisor, lambda: marker.exists() and stuck.exists(), 30, "both children to be up")
    worker_pid, stuck_pid = supervisor.pid("worker"), supervisor.pid("stuck")
    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 4
    assert marker.with_suffix(".stopped").read_text() == "clean"  # stopped through its stop event
    processes = supervisor.processes()
    assert processes["worker"]["exit_code"] == 0
    assert processes["stuck"]["exit_code"] == -9  # SIGKILL after stop_timeout
    for pid in (worker_pid, stuck_pid):
        assert pid is not None and not Path(f"/proc/{pid}").exists()
    run.remove()


def slow_to_stop(marker: str, stop_event: Any) -> int:
    """Takes a while to stop (a model finishing its step) and says so in ``marker`` when it has."""
    Path(marker).write_text("up")
    stop_event.wait()
    time.sleep(0.5)
    Path(marker).write_text("stopped")
    return 0


def note_stop(marker: str, watched: str, stop_event: Any) -> int:
    """Writes into ``marker``, when told to stop, what ``watched`` says then."""
    Path(marker).write_text("up")
    stop_event.wait()
    Path(marker).write_text(Path(watched).read_text())
    return 0


def test_the_roles_named_first_have_stopped_before_the_others_are_told(tmp_path: Path) -> None:
    run = RunPaths.create(root=tmp_path)
    supervisor = Supervisor(run, stop_timeout=10.0)
    producer, reader = tmp_path / "producer", tmp_path / "reader"
    supervisor.start(ChildSpec("reader", note_stop, {"marker": str(reader), "watched": str(producer)}))
    supervisor.start(ChildSpec("producer", slow_to_stop, {"marker": str(producer)}))
    drive_until(supervisor, lambda: producer.exists() and reader.exists(), 30, "both children to be up")
    supervisor.stop(first=("producer",))
    assert reader.read_text() == "stopped", "the reader was told only after the producer had stopped"
    processes = supervisor.processes()
    assert processes["producer"]["exit_code"] == 0 and processes["reader"]["exit_code"] == 0
    run.remove()
