"""This machine's processes and cores, asked one way everywhere: how many cores this
process may use, whether a pid is alive, when a process started."""

from __future__ import annotations

import os
import time


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def pid_alive(pid) -> bool:
    """False only when no process has ``pid``; a pid we may not signal is alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, OverflowError):
        return True
    return True


def process_start(pid: int | None = None) -> float | None:
    """When process ``pid`` (this one by default) started, wall clock; None where it
    cannot be told."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def this_process_start() -> float:
    """When this process started, so a timeline includes Python's imports (now, if the
    start cannot be told)."""
    return process_start() or time.time()
