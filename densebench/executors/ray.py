"""The Ray executor: each job runs as a Ray task on a cluster node that can run it, and the
task starts densebench's own isolated worker there (the subprocess executor), so a cell on
a cluster is measured exactly as it is here.

What Ray would otherwise decide behind the benchmark's back is set explicitly:

- A node runs one job at a time: its task reserves the node's whole CPU count (and its
  GPUs), pinned to the node (hard node affinity). ``cells_per_node=N`` reserves 1/N of
  it each, recorded in the run.
- The worker gets its threads, ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (Ray sets these to
  the task's CPU count, or 1) and ``CUDA_VISIBLE_DEVICES`` (Ray no longer hides GPUs from
  a task without GPUs) set by the job: the sweep's threads, or the CPUs reserved.
- No automatic retries (a retried cell is a different measurement) and a fresh Ray worker
  per task (``max_calls=1``).

Events stream back as the worker emits them (a Ray generator task), so a sweep stores each
cell when it finishes. A task that fails or a node that dies fails that job's cells with
the reason; the rest of the sweep goes on. Before anything runs, every node is probed for
its host identity and environment fingerprint, and a job that no node can run is refused.

Placement: ``each`` (default) runs a job on every node that may run it (the same cells on
every machine: the comparison a team wants); ``any`` runs it once, on the first node free.
A node's labels are its custom resources (``ray start --resources '{"zen4": 1}'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable

from densebench.errors import ConfigError, DensebenchError, one_line
from densebench.executors import CellTracker, Emit, Executor, Job, pending, register_executor
from densebench.results.schema import host_key

_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")
START_HINT = ("start one with `ray start --head` (and `ray start --address HEAD:6379` on each "
              "other machine), or pass --address HOST:PORT")


_PROBED: dict[str, dict] = {}  # node id -> what the node said of itself (ids are unique)


class RayMissing(DensebenchError):
    exit_code = 2


def require_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing("the ray executor needs Ray, which is not installed: "
                         "pip install 'densebench[ray]'") from None
    return ray


@dataclasses.dataclass
class Node:
    id: str
    address: str
    cpus: float
    gpus: float
    labels: list[str]
    resources: dict
    host: dict = dataclasses.field(default_factory=dict)  # host_identity() on the node
    fingerprint: dict = dataclasses.field(default_factory=dict)
    name: str | None = None  # set where several nodes share one machine
    slots: int = 1
    running: int = 0

    def fits(self, job: Job) -> str | None:
        """Why ``job`` cannot run here (None: it can)."""
        if job.needs.get("gpu") and self.gpus < 1:
            return "needs a GPU"
        if job.needs.get("host") and host_key(job.needs["host"]) != host_key(self.host):
            return "runs on another host (what was screened there)"
        for one_of in job.needs.get("labels") or []:
            if not set(one_of) & set(self.labels):
                return f"needs a node labelled {' or '.join(one_of)}"
        return None

    def describe(self) -> str:
        labels = f", labels {', '.join(self.labels)}" if self.labels else ""
        return (f"{self.name or self.host.get('hostname') or self.address} ({self.cpus:g} CPU"
                f"{f', {self.gpus:g} GPU' if self.gpus else ''}{labels})")


@register_executor
class RayExecutor(Executor):
    NAME = "ray"
    PLACES_CELLS = True
    LOCAL = False

    def __init__(self, log_dir=None, address: str | None = None, cells_per_node: int = 1,
                 **options):
        super().__init__(log_dir, **options)
        if not isinstance(cells_per_node, int) or cells_per_node < 1:
            raise ConfigError(f"cells_per_node must be at least 1, got {cells_per_node}",
                              setting="cells_per_node")
        self.address = address or "auto"
        self.cells_per_node = cells_per_node
        self.nodes: list[Node] | None = None
        self._connected_here = False
        self._environ: dict | None = None

    # ------------------------------------------------------------------ the cluster

    def connect(self) -> list[Node]:
        if self.nodes is not None:
            return self.nodes
        ray = require_ray()
        if not ray.is_initialized():
            address = reachable(self.address)  # Ray itself retries a dead one for minutes
            self._environ = dict(os.environ)  # ray.init sets RAY_AUTH_MODE and more in it
            with _stderr_kept() as said:  # Ray's own C++ log lines: read, not shown
                try:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False,
                             logging_level="ERROR", configure_logging=True)
                    failed = None
                except Exception as e:  # ConnectionError, or a timeout reaching the GCS
                    failed = e
            if failed is not None:
                if "InvalidAuthToken" in "".join(said):
                    raise ConfigError(
                        f"address: the Ray cluster at {address} refused this process: it "
                        "wants the cluster's authentication token (`ray start --head` turns "
                        "token authentication on): set RAY_AUTH_MODE=token, with the token in "
                        "~/.ray/auth_token, $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH",
                        setting="address") from None
                raise ConfigError(f"address: no Ray cluster reachable at {self.address} "
                                  f"({one_line(failed)[:160]}): {START_HINT}",
                                  setting="address") from None
            self._connected_here = True
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            res = n.get("Resources", {})
            if res.get("CPU", 0) < 1:
                continue
            labels = sorted(k for k in res if k not in _BUILTIN and not k.startswith(
                ("node:", "accelerator_type:")))
            nodes.append(Node(id=n["NodeID"], address=n.get("NodeManagerAddress", "?"),
                              cpus=res.get("CPU", 0), gpus=res.get("GPU", 0), labels=labels,
                              resources=dict(res), slots=self.cells_per_node))
        if not nodes:
            raise ConfigError(f"address: the Ray cluster at {self.address} has no node with "
                              f"a CPU: {START_HINT}", setting="address")
        self._probe(ray, nodes)
        self.nodes = nodes
        return nodes

    def _probe(self, ray, nodes: list[Node]) -> None:
        """Each node's host identity and fingerprint, read on the node itself."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(_probe)
        new = [n for n in nodes if n.id not in _PROBED]
        refs = [probe.options(num_cpus=0, max_retries=0,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(
                                  n.id, soft=False)).remote() for n in new]
        for n, info in zip(new, ray.get(refs, timeout=300), strict=True):
            _PROBED[n.id] = info
        for n in nodes:
            n.host, n.fingerprint = _PROBED[n.id]["host"], _PROBED[n.id]["fingerprint"]
        by_machine: dict = {}
        for n in nodes:
            by_machine.setdefault(n.host.get("machine_id"), []).append(n)
        for group in by_machine.values():
            if len(group) > 1:  # one machine, several nodes (a simulated cluster)
                for i, n in enumerate(group):
                    n.name = f"{n.host.get('hostname')}#{'+'.join(n.labels) or i + 1}"
                    if sum(m.name == n.name for m in group) > 1:
                        n.name += f"-{n.id[:6]}"
                    n.host = {**n.host, "node": n.name}

    def check(self, jobs: list[Job]) -> list[str]:
        nodes = self.connect()
        unplaceable = {}
        for j in jobs:
            if not any(n.fits(j) is None for n in nodes):
                unplaceable.setdefault(j.name, nodes[0].fits(j) if len(nodes) == 1 else
                                       "; ".join(sorted({n.fits(j) for n in nodes})))
        if unplaceable:
            names = list(unplaceable)
            raise ConfigError(
                f"targets: {len(names)} job(s) can run on no node of the cluster: "
                + "; ".join(f"{k} {v}" for k, v in list(unplaceable.items())[:4])
                + (" ..." if len(names) > 4 else "")
                + f" (nodes: {', '.join(n.describe() for n in nodes)})", setting="targets")
        return []

    def describe(self) -> dict:
        ray = require_ray()
        nodes = self.connect()
        return {"executor": self.NAME, "address": self.address, "ray": ray.__version__,
                "cells_per_node": self.cells_per_node,
                "nodes": [{"node_id": n.id, "name": n.name, "address": n.address,
                           **n.host, "cpus": n.cpus, "gpus": n.gpus, "labels": n.labels,
                           "resources": n.resources, "fingerprint": n.fingerprint}
                          for n in nodes]}

    def close(self) -> None:
        if self._connected_here:
            require_ray().shutdown()
            self._connected_here = False
        if self._environ is not None:  # as it was before this executor connected
            os.environ.clear()
            os.environ.update(self._environ)
            self._environ = None

    # ------------------------------------------------------------------ running

    def run(self, job: Job, on_event: Emit) -> None:
        self.run_all([job], on_event)

    def run_all(self, jobs: list[Job], on_event: Emit, *, done: set | None = None,
                placement: str = "each", start: Callable[[int], None] | None = None) -> None:
        nodes = self.connect()
        units: list[tuple[Job, list[Node]]] = []
        for job in jobs:
            eligible = [n for n in nodes if n.fits(job) is None]
            if placement == "any":
                left = pending(job, done or set(), hostless=True)
                if left:
                    units.append((left, eligible))
            else:
                for n in eligible:
                    left = pending(self._on(job, n), done or set(), hostless=False)
                    if left:
                        units.append((left, [n]))
        if start:
            start(sum(len(j.cells) for j, _ in units))
        ray = require_ray()
        running: dict = {}  # generator -> (job, node, tracker, deadline)
        try:
            while units or running:
                self._start_free(ray, units, running, on_event)
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for gen in ready:
                    self._step(ray, gen, running)
                for gen, (job, node, track, deadline) in list(running.items()):
                    if deadline is not None and time.monotonic() > deadline:
                        ray.cancel(gen, force=True)
                        track.fail_missing(f"timed out on node {node.describe()} after "
                                           f"{job.timeout:g} s (timeout); task cancelled")
                        self._release(running, gen)
        except KeyboardInterrupt:
            for gen in list(running):
                ray.cancel(gen, force=True)
            raise

    def _on(self, job: Job, node: Node) -> Job:
        """``job`` as it runs on ``node``: its cells stamped with the node's host."""
        cells = [{**c, "host": node.host} for c in job.cells]
        return dataclasses.replace(job, cells=cells, payload={**job.payload, "cells": cells})

    def _start_free(self, ray, units: list, running: dict, on_event: Emit) -> None:
        """Start every queued job (in order) that has a node with a free slot."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for unit in list(units):
            job, eligible = unit
            free = [n for n in eligible if n.running < n.slots]
            if not free:
                continue
            node = max(free, key=lambda n: n.slots - n.running)
            job = self._on(job, node)
            units.remove(unit)
            cpus = node.cpus / node.slots
            threads = job.payload.get("threads") or max(1, int(cpus))
            env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                   **job.env, "DENSEBENCH_RAY_NODE_ID": node.id}
            if node.name:
                env["DENSEBENCH_NODE"] = node.name
            if os.environ.get("DENSEBENCH_PLUGINS"):  # the driver's plugins, by module name
                env.setdefault("DENSEBENCH_PLUGINS", os.environ["DENSEBENCH_PLUGINS"])
            cells = [{**c, "threads": threads} for c in job.cells]
            job = dataclasses.replace(job, env=env, cells=cells, payload={
                **job.payload, "threads": threads, "cells": cells})
            gpu = job.needs.get("gpu")
            task = ray.remote(max_calls=1)(_task).options(
                num_cpus=cpus, num_gpus=(node.gpus / node.slots) if node.gpus else 0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False))
            gen = task.remote(job.to_dict(), bool(gpu))
            node.running += 1
            track = CellTracker(job, on_event)
            deadline = time.monotonic() + job.timeout + 120 if job.timeout else None
            running[gen] = (job, node, track, deadline)
            on_event({"event": "phase", "variant": job.name,
                      "phase": f"running on {node.describe()}"})

    def _step(self, ray, gen, running: dict) -> None:
        job, node, track, _ = running[gen]
        try:
            ref = next(gen)
            track(ray.get(ref))
        except StopIteration:
            self._release(running, gen)
        except Exception as e:  # the task failed: its worker crashed, its node died
            track.fail_missing(f"task failed on node {node.describe()}: "
                               f"{_ray_reason(e)[:300]}")
            self._release(running, gen)

    @staticmethod
    def _release(running: dict, gen) -> None:
        _, node, _, _ = running.pop(gen)
        node.running -= 1


@contextlib.contextmanager
def _stderr_kept():
    """Standard error (the file descriptor: Ray's C++ core writes there) into a file while
    the block runs; yields a list that holds what was written once the block ends."""
    said: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as kept:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(kept.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            said.append(kept.read().decode(errors="replace"))


def reachable(address: str, timeout: float = 5.0) -> str:
    """The GCS address ``address`` names (``auto``: $RAY_ADDRESS, or the cluster this
    machine started last), checked to accept connections; a ConfigError otherwise."""
    import socket
    from pathlib import Path

    where = address
    if address == "auto":
        where = os.environ.get("RAY_ADDRESS", "")
        if not where:
            current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
            try:
                where = current.read_text().strip()
            except OSError:
                raise ConfigError(f"address: no Ray cluster found (--address auto looks for "
                                  f"$RAY_ADDRESS and {current}): {START_HINT}",
                                  setting="address") from None
    host, _, port = where.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address: {where!r} is not HOST:PORT (or auto): {START_HINT}",
                          setting="address")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"address: no Ray cluster reachable at {where} "
                          f"({e.strerror or e}): {START_HINT}", setting="address") from None
    return where


def _ray_reason(e: Exception) -> str:
    """The first line of a Ray error that says what happened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if any(w in ln for w in ("died", "crash", "killed", "Error", "error", "exit")):
            return ln
    return lines[0] if lines else type(e).__name__


# ============================================================================ on the node


def _probe() -> dict:
    from densebench.environment import fingerprint, host_identity

    return {"host": host_identity(), "fingerprint": fingerprint()}


def _task(job: dict, gpu: bool):
    """Run ``job`` in densebench's own worker process on this node; yield its events."""
    import queue
    import threading
    from pathlib import Path

    from densebench.executors.subprocess import SubprocessExecutor

    j = Job.from_dict(job)
    if gpu:
        import ray

        j.env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ray.get_gpu_ids())
    else:
        j.env["CUDA_VISIBLE_DEVICES"] = ""
    # another machine: LoadGen logs stay there
    if "run_dir" in j.payload and not Path(j.payload["run_dir"]).is_dir():
        j.payload["run_dir"] = tempfile.mkdtemp(prefix="densebench-run-")
    events: queue.Queue = queue.Queue()
    done = object()
    failure: list = []

    def work():
        try:
            logs = Path(tempfile.mkdtemp(prefix="densebench-logs-"))
            SubprocessExecutor(log_dir=logs).run(j, events.put)
        except BaseException as e:  # reported below, after what was measured
            failure.append(e)
        finally:
            events.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (ev := events.get()) is not done:
        yield ev
    if failure:
        raise failure[0]
