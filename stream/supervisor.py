"""The supervisor: starts the run's processes, watches them, restarts crashed ones, stops them all.

It owns what outlives any one child: the run directory (zmq endpoints) and the shared-memory rings,
created before the children start and removed after they stop, so a capture or inference restart
re-attaches to the same ring and nothing leaks. A child that exits with code 0 has finished (a file
source that ended) and is not restarted; any other exit is a crash, restarted after a backoff that
doubles up to ``restart_backoff_max`` and resets once the child has stayed up for a minute. Every
change is published as a ``processes`` message, which the gateway folds into ``status``. An exit code
in the child's ``fatal_codes`` (a configuration error: no model weights, a port in use, a source that
cannot be opened) is final too, and :meth:`Supervisor.fatal_exit` reports it so the run can stop.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .bus import Publisher, RunPaths
from .messages import Processes
from .process import child_entry, signal_handled

log = logging.getLogger(__name__)

STABLE_AFTER_S = 60.0

_mp = mp.get_context("spawn")


@dataclass
class ChildSpec:
    """A process the supervisor keeps running. ``target(**kwargs, stop_event=...)`` is its main."""

    role: str
    target: Callable[..., int | None]
    kwargs: dict[str, Any]
    restart: bool = True
    fatal_codes: tuple[int, ...] = ()


@dataclass
class _Child:
    spec: ChildSpec
    process: Any = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    finished: bool = False
    last_exit: int | None = None


class Supervisor:
    """Runs a set of :class:`ChildSpec` processes. Not thread-safe: drive it from one thread."""

    def __init__(
        self,
        run: RunPaths,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stop_timeout: float = 5.0,
        log_level: int | str = logging.INFO,
    ) -> None:
        self.run = run
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self._children: dict[str, _Child] = {}
        self._publisher: Publisher | None = None
        self._last_report = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def open_bus(self) -> None:
        self._publisher = Publisher(self.run.publisher_endpoint("supervisor"))

    def start(self, spec: ChildSpec) -> None:
        child = self._children.get(spec.role) or _Child(spec=spec, backoff=self.backoff_initial)
        child.spec = spec
        self._children[spec.role] = child
        self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        child.process = _mp.Process(
            target=child_entry,
            args=(child.spec.role, child.spec.target, child.spec.kwargs, self.log_level),
            name=f"vidnarrate-{child.spec.role}",
            daemon=False,
        )
        # Started with SIGINT ignored (a spawned Python keeps an ignored SIGINT ignored): a Ctrl-C in
        # the terminal reaches the whole process group, and a child still importing would die of
        # KeyboardInterrupt with a traceback and be restarted. Children stop on the supervisor's SIGTERM.
        with signal_handled(signal.SIGINT, signal.SIG_IGN):
            child.process.start()
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.spec.role, child.process.pid)
        self.report(force=True)

    def poll(self) -> None:
        """Notice exits, schedule and perform restarts, publish ``processes`` at ~1 Hz."""
        now = time.monotonic()
        for child in self._children.values():
            if child.finished:
                continue
            if child.process is not None and not child.process.is_alive():
                child.process.join(0)
                code = child.process.exitcode
                child.last_exit = code
                child.process = None
                if code in child.spec.fatal_codes:
                    child.finished = True
                    log.error("%s failed (exit code %s); not restarting it", child.spec.role, code)
                elif code == 0 or not child.spec.restart:
                    child.finished = True
                    log.info("%s finished (exit code %s)", child.spec.role, code)
                else:
                    if now - child.started_at > STABLE_AFTER_S:
                        child.backoff = self.backoff_initial
                    child.restart_at = now + child.backoff
                    log.warning(
                        "%s exited with code %s; restarting in %.1f s", child.spec.role, code, child.backoff
                    )
                    child.backoff = min(child.backoff * 2, self.backoff_max)
                self.report(force=True)
            elif child.process is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
        self.report()

    def stop(self, first: Sequence[str] = ()) -> None:
        """SIGTERM every child (its stop event), wait up to ``stop_timeout``, then SIGKILL. The roles
        in ``first`` are stopped (and waited for, within the same ``stop_timeout``) before the others
        are told: what they publish while stopping still reaches the readers of the bus."""
        live = [c for c in self._children.values() if c.process is not None]
        deadline = time.monotonic() + self.stop_timeout
        early = [c for c in live if c.spec.role in first]
        for group in (early, [c for c in live if c not in early]):
            for child in group:
                child.process.terminate()
                child.restart_at = None
            if group is early:
                for child in early:
                    child.process.join(max(0.0, deadline - time.monotonic()))
        for child in live:
            child.process.join(max(0.0, deadline - time.monotonic()))
        for child in live:
            if child.process.is_alive():
                log.warning("%s did not stop in %.1f s; killing it", child.spec.role, self.stop_timeout)
                child.process.kill()
                child.process.join(1.0)
            child.last_exit = child.process.exitcode
            child.process = None
            child.finished = True
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    # -- introspection ---------------------------------------------------------------------------
    def pid(self, role: str) -> int | None:
        child = self._children.get(role)
        return child.process.pid if child and child.process is not None else None

    def restarts(self, role: str) -> int:
        return self._children[role].restarts

    def alive(self, role: str) -> bool:
        child = self._children.get(role)
        return bool(child and child.process is not None and child.process.is_alive())

    def fatal_exit(self) -> tuple[str, int] | None:
        """The first child that exited with one of its fatal codes: (role, code), else None."""
        failed = self.failed_roles()
        if not failed:
            return None
        code = self._children[failed[0]].last_exit
        assert code is not None
        return failed[0], code

    def failed_roles(self) -> list[str]:
        """Roles whose child exited with one of its fatal codes (not restarted), in start order."""
        return [
            role
            for role, child in self._children.items()
            if child.finished and child.last_exit is not None and child.last_exit in child.spec.fatal_codes
        ]

    def ended_roles(self) -> list[str]:
        """Roles whose child finished by itself with exit code 0 (a file source that played to its
        end), in start order. Only meaningful while running: :meth:`stop` finishes every child."""
        return [role for role, child in self._children.items() if child.finished and child.last_exit == 0]

    def processes(self) -> dict[str, dict[str, Any]]:
        return {
            role: {
                "pid": child.process.pid if child.process is not None else None,
                "restarts": child.restarts,
                "alive": child.process is not None and child.process.is_alive(),
                "finished": child.finished,
                "exit_code": child.last_exit,
            }
            for role, child in self._children.items()
        }

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._publisher is None or (not force and now - self._last_report < 1.0):
            return
        self._last_report = now
        self._publisher.send(Processes(processes=self.processes(), wall=time.time()))
