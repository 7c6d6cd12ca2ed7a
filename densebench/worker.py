"""Runs one job (``executors.Job``): in this process (``run_job``), or as a worker
process (``python -m densebench.worker``) that reads the job as JSON on stdin and writes
its events, one JSON line each, to the file descriptor ``$DENSEBENCH_EVENT_FD``."""

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


def main() -> None:
    out = os.fdopen(int(os.environ["DENSEBENCH_EVENT_FD"]), "w", buffering=1)

    def emit(ev: dict) -> None:
        out.write(json.dumps(ev, default=_default) + "\n")

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
