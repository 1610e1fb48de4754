"""Process identity across processes: a pid plus its start time, so a reused pid is not mistaken for
the process that wrote it (used to tell stale shared-memory rings and run directories of dead runs)."""

from __future__ import annotations

import os
from pathlib import Path

_HAVE_PROC = Path("/proc/self/stat").exists()


def process_start(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None if it is gone or a zombie.

    The start time tells a reused pid from the process that wrote it. Without /proc (macOS) it is 0
    for any live pid, and only the pid is compared.
    """
    if pid <= 0:
        return None
    if _HAVE_PROC:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except PermissionError:  # /proc mounted with hidepid: fall back to the pid alone
            stat = ""
        if stat:
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
                return None
            return int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0


def process_alive(pid: int, start: int) -> bool:
    now = process_start(pid)
    return now is not None and (now == 0 or start == 0 or now == start)
