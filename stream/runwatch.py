"""When a live run ends and what the terminal is told on the way: an I/O-free core.

``vidnarrate run`` polls its children and hands their states to :meth:`RunWatch.update`, which
answers with plain values: lines to :class:`Say` and, once, a :class:`Stop` with the exit code.

* A service (gateway, inference) that exited with a fatal code stops the run (exit code 1).
* Every source failing for good stops the run at once (exit code 1): there is nothing to caption.
* A file source played to its end (without ``--loop``) is announced. Network sources never end:
  they reconnect. Once no source is left and the inference has published the last captions of
  every source (``drained``), the run stops with exit code 0 (1 if a source failed on the way),
  unless the user asked to keep serving: then the viewer stays up, with the history, until Ctrl-C.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .process import ExitCode


class SourceState(enum.Enum):
    RUNNING = "running"  # starting, live, or reconnecting
    ENDED = "ended"  # played to its end (a file without --loop)
    FAILED = "failed"  # exited with a fatal code: not restarted


@dataclass(frozen=True)
class Say:
    """A line for the terminal (stderr when ``error``)."""

    text: str
    error: bool = False


@dataclass(frozen=True)
class Stop:
    """Stop the run and exit with ``code``."""

    code: ExitCode


class RunWatch:
    """Decides, from the children's states, what to say and when to stop (see the module docstring).
    Each line is said once, however often :meth:`update` is called."""

    def __init__(self, sources: Sequence[str], *, keep_serving: bool = False) -> None:
        if not sources:
            raise ValueError("a run has at least one source")
        self.sources = tuple(sources)
        self.keep_serving = keep_serving
        self._announced: set[str] = set()
        self._all_over_said = False
        self._serving_said = False
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """A :class:`Stop` was answered: the run is over."""
        return self._stopped

    def update(
        self,
        states: Mapping[str, SourceState],
        *,
        drained: bool,
        failed_service: tuple[str, int] | None = None,
    ) -> list[Say | Stop]:
        """``states``: each source's state (a source not in it is running); ``drained``: the
        inference has captioned every window of every ended source; ``failed_service``: (role, exit
        code) of a gateway or inference that exited with a fatal code."""
        if self._stopped:
            return []
        steps: list[Say | Stop] = []
        if failed_service is not None:
            role, code = failed_service
            steps += [Say(f"{role} failed (exit code {code}); stopping. See the log above.", error=True)]
            return self._stop(steps, ExitCode.FAILED)
        state = {name: states.get(name, SourceState.RUNNING) for name in self.sources}
        for name in self.sources:
            if state[name] is SourceState.ENDED and name not in self._announced:
                self._announced.add(name)
                steps.append(Say(f"source {name} ended"))
        failed = [name for name in self.sources if state[name] is SourceState.FAILED]
        if len(failed) == len(self.sources):
            steps.append(Say("every source failed (see the log above); stopping.", error=True))
            return self._stop(steps, ExitCode.FAILED)
        if any(s is SourceState.RUNNING for s in state.values()):
            return steps
        if not self._all_over_said:
            self._all_over_said = True
            how = f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""
            steps.append(Say(f"every source has ended{how}; captioning what is left", error=bool(failed)))
        if not drained:
            return steps
        if self.keep_serving:
            if not self._serving_said:
                self._serving_said = True
                steps.append(
                    Say("the last captions are out; the viewer stays up with the history (Ctrl-C stops)")
                )
            return steps
        steps.append(Say("the last captions are out; stopping"))
        return self._stop(steps, ExitCode.FAILED if failed else ExitCode.OK)

    def _stop(self, steps: list[Say | Stop], code: ExitCode) -> list[Say | Stop]:
        self._stopped = True
        return [*steps, Stop(code)]
