"""The inline executor: the job runs in this process (fast; no isolation from crashes).

Events go through the same JSON round trip as a worker's, so a job's results are the
same plain data whichever executor ran it.
"""

from __future__ import annotations

import json

from densebench.errors import one_line
from densebench.executors import CellTracker, Emit, Executor, Job, register_executor


def _plain(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


@register_executor
class InlineExecutor(Executor):
    NAME = "inline"

    def run(self, job: Job, on_event: Emit) -> None:
        from densebench.worker import run_job

        track = CellTracker(job, on_event)
        try:
            run_job(job, lambda ev: track(json.loads(json.dumps(ev, default=_plain))))
        except Exception as e:  # the job's own failure fails what it had not reported
            track.fail_missing(one_line(e))
