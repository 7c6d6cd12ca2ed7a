"""The subprocess executor: each job in its own worker process (``python -m
densebench.worker``), so a crash, a hang or the OOM killer fails that job's cells only.

The job goes to the worker on stdin; events come back over a dedicated pipe (so nothing a
library prints can corrupt them); the worker's stdout and stderr go to a log file. A job
past its timeout is killed with its whole process group. Ctrl-C reaches only the parent
(the worker ignores SIGINT), which kills the worker and lets the run keep what finished.
``run_concurrently`` runs jobs side by side, one thread per lane, each with its worker; an
interrupt stops every lane and kills their workers.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from densebench.executors import CellTracker, Emit, Executor, Job, register_executor


@register_executor
class SubprocessExecutor(Executor):
    NAME = "subprocess"

    def __init__(self, log_dir: Path | None = None, **options):
        super().__init__(log_dir, **options)
        self._stop = threading.Event()  # set: every running worker is killed

    def run_concurrently(self, jobs: list[Job], on_event: Emit, lanes: int) -> None:
        todo: queue.Queue = queue.Queue()
        for job in jobs:
            todo.put(job)
        lock = threading.Lock()

        def locked(ev: dict) -> None:
            with lock:
                on_event(ev)

        def lane() -> None:
            while not self._stop.is_set():
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                self.run(job, locked)

        # a worker dies with the thread that started it (PR_SET_PDEATHSIG): a lane thread
        # ends only when its queue is empty and its last worker has exited
        threads = [threading.Thread(target=lane, daemon=True, name=f"densebench-lane-{i}")
                   for i in range(max(1, min(lanes, len(jobs))))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP reach this (the main) thread
            self._stop.set()
            for t in threads:
                t.join()
            self._stop.clear()
            raise

    def run(self, job: Job, on_event: Emit) -> None:
        track = CellTracker(job, on_event)
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="densebench-logs-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{job.name.replace(':', '_').replace('/', '_')}.log"
        read_fd, write_fd = os.pipe()
        env = {**os.environ, **job.env, "DENSEBENCH_EVENT_FD": str(write_fd),
               "DENSEBENCH_PARENT_PID": str(os.getpid()), "DENSEBENCH_JOB": job.name}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "densebench.worker"], stdin=subprocess.PIPE,
                stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env,
                start_new_session=True,
            )
        os.close(write_fd)
        events: queue.Queue = queue.Queue()

        def reader():
            with os.fdopen(read_fd, "r") as f:
                for line in f:
                    try:
                        events.put(json.loads(line))
                    except ValueError:
                        continue
            events.put(None)

        threading.Thread(target=reader, daemon=True).start()
        proc.stdin.write(json.dumps(job.to_dict()).encode())
        proc.stdin.close()
        deadline = time.monotonic() + job.timeout if job.timeout else None
        error = None
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    error = f"timed out after {job.timeout:g} s (timeout); worker killed"
                    break
                if self._stop.is_set():
                    error = "interrupted; worker killed"
                    break
                try:
                    ev = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if ev is None:
                    break
                track(ev)
        finally:
            if proc.poll() is None:
                _kill(proc)
        rc = proc.wait()
        if error is None and rc != 0:
            if rc < 0:
                sig = signal.Signals(-rc).name
                hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
                error = f"worker killed by {sig}{hint}"
            else:
                error = f"worker exited with code {rc}"
            tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
            if tail:
                error += f": {tail[-1].strip()[:200]}"
            error += f" (log: {log_path})"
        if error:
            track.fail_missing(error)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
