"""What every child process of a run does before its own main: logging, signals, parent-death.

Children are started with the ``spawn`` method (CUDA and zmq contexts must not be forked). Each one:

* dies with its parent: ``PR_SET_PDEATHSIG`` (Linux) sends it SIGTERM if the supervisor is killed,
  so a SIGKILLed ``vidnarrate run`` leaves no orphans (its shared memory is removed at the next start);
* ignores SIGINT (Ctrl-C in a terminal reaches the whole process group; the supervisor alone decides
  how to stop) and turns SIGTERM into its stop event, so every main loop ends through one path. The
  stop event is the child's own ``threading.Event``: a ``multiprocessing.Event`` would be a named
  POSIX semaphore in /dev/shm, which a SIGKILLed run would leave behind;
* logs to stderr with its role in every line.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

LOG_FORMAT = "%(asctime)s %(levelname)s [%(role)s] %(name)s: %(message)s"


class ExitCode(enum.IntEnum):
    """How every process of a run, and the CLI, exits. The supervisor reads these from its children."""

    OK = 0
    FAILED = 1  # something went wrong that a restart may fix (a child) or that stopped the run (the CLI)
    USAGE = 2  # the command line, config or an input was refused before anything started
    CONFIG = 78  # sysexits' EX_CONFIG: a child's configuration cannot work; the supervisor stops the run


def write_ready_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader polling for the file never sees it half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def configure_logging(role: str, level: int | str = logging.INFO) -> None:
    """Log to stderr with the process role in every record."""
    old_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        record.role = role
        return record

    logging.setLogRecordFactory(factory)
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


@contextlib.contextmanager
def signal_handled(signum: int, handler: Any) -> Iterator[None]:
    """``handler`` for ``signum`` inside the block, the previous one after it. Only the main thread
    may set handlers; elsewhere (tests calling process entries in threads) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux only; no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)


def child_entry(
    role: str, target: Callable[..., int | None], kwargs: dict[str, Any], log_level: int | str = logging.INFO
) -> None:
    """Run ``target(**kwargs, stop_event=...)`` as a well-behaved child; exit with its code.
    SIGTERM (what the supervisor sends to stop it) sets the stop event."""
    stop_event = threading.Event()
    die_with_parent()
    configure_logging(role, log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: stop_event.set())
    parent = os.getppid()
    log.debug("%s started (pid %d, parent %d)", role, os.getpid(), parent)
    code = target(**kwargs, stop_event=stop_event)
    # The target has closed its rings and sockets. What remains, tearing down the interpreter's
    # modules (torch's take ~1.5 s), only delays a Ctrl-C: leave now, with the output flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))
