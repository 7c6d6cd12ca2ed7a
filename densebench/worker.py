"""Runs one job (``executors.Job``): in this process (``run_job``), or as a worker
process (``python -m densebench.worker``) that reads the job as JSON on stdin and writes
its events, one JSON line each, to the file descriptor ``$DENSEBENCH_EVENT_FD``.

A worker never outlives the process that started it (``$DENSEBENCH_PARENT_PID``): on
Linux the kernel kills it when its parent dies (PR_SET_PDEATHSIG); elsewhere, and as a
second line, a watchdog thread exits when the parent is gone, and a write to a closed
event pipe ends it too. A worker left behind would keep a core busy and skew the next run.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback


def run_job(job, emit) -> None:
    """Call the job's target with its payload; ``job`` is a Job or its dict."""
    from densebench.plugins import load_plugins

    d = job if isinstance(job, dict) else job.to_dict()
    load_plugins()
    module, _, name = d["target"].partition(":")
    getattr(importlib.import_module(module), name)(d["payload"], emit)


def _default(o):  # the same rule as executors.inline._plain
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def die_with_parent(parent: int) -> None:
    """Make sure this process ends when ``parent`` does."""
    import ctypes
    import threading
    import time

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below does it

    def watchdog():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watchdog, daemon=True, name="densebench-watchdog").start()


def main() -> None:
    parent = os.environ.get("DENSEBENCH_PARENT_PID")
    if parent:
        die_with_parent(int(parent))
    out = os.fdopen(int(os.environ["DENSEBENCH_EVENT_FD"]), "w", buffering=1)

    def emit(ev: dict) -> None:
        try:
            out.write(json.dumps(ev, default=_default) + "\n")
        except BrokenPipeError:  # nobody is listening: the parent is gone
            os._exit(1)

    job = json.loads(sys.stdin.read())
    try:
        run_job(job, emit)
    except Exception:
        traceback.print_exc()
        raise
    finally:
        out.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches it
    main()
