"""Sweeps on a real Ray cluster started by the tests: one node (``ray.init``) here, two
simulated nodes with different labels and CPU features in test_ray_nodes.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from densebench.results.store import RunStore
from densebench.sweep import parse_sweep, run_sweep

from .conftest import TINY_SIZE, environment_kept, run_cli_process

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.ray

FAST = {"warmup": 1, "min_time": 0.05, "min_iters": 3}


@pytest.fixture(scope="module")
def cluster():
    """A local one-node Ray cluster with 2 CPUs, for this module."""
    with environment_kept():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()


def _summary(rec) -> list:
    return sorted((c.model, c.variant, c.batch_size, c.mode, c.status) for c in rec.cells)


def test_a_densenet_sweep_on_ray_matches_the_same_sweep_here(cluster, workdir):
    spec = {"models": ["densenet-tiny"], "variants": ["eager", "channels-last"],
            "batch_sizes": [1, 2], "image_sizes": [TINY_SIZE], "measure": FAST}
    on_ray = run_sweep(parse_sweep({**spec, "name": "on-ray"}), executor="ray")
    here = run_sweep(parse_sweep({**spec, "name": "here"}), executor="local")
    assert len(on_ray.cells) == len(here.cells) == 4
    assert _summary(on_ray) == _summary(here)
    assert {c.status for c in on_ray.cells} == {"ok"}
    assert on_ray.status == here.status == "complete"
    nodes = on_ray.data["cluster"]["nodes"]
    assert on_ray.data["cluster"]["executor"] == "ray" and len(nodes) == 1
    assert nodes[0]["cpus"] == 2 and nodes[0]["fingerprint"]["libraries"]["torch"]
    for c in on_ray.cells:  # where it ran: the node, its host
        assert c.worker["ray_node_id"] == nodes[0]["node_id"]
        assert c.host["machine_id"] == nodes[0]["machine_id"]
        # the whole node reserved, its CPUs as threads, set explicitly for the worker
        assert c.threads == 2 and c.worker["torch_threads"] == 2
        assert c.worker["env"]["OMP_NUM_THREADS"] == "2"
        assert c.worker["env"]["CUDA_VISIBLE_DEVICES"] == ""
        assert c.parity["max_abs_error"] < 1e-4


def test_the_cli_sweeps_over_a_cluster_address_with_the_threads_asked_for(cluster, workdir):
    f = workdir / "sweep.toml"
    f.write_text('name = "cli"\nmodels = ["pool-tiny"]\nvariants = ["sleep-fast"]\n'
                 "batch_sizes = [1]\nthreads = [1, 2]\n[measure]\nwarmup = 1\n"
                 "min_time = 0.05\nmin_iters = 3\n")
    p = run_cli_process("sweep", f, "--executor", "ray", "--address", cluster,
                        "--cells-per-node", "2")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    assert "running on" in stderr and "[1/2]" in stderr  # live progress, where it runs
    rec = RunStore().load("cli")
    assert rec.data["cluster"]["cells_per_node"] == 2  # two at once, each a CPU's share
    assert sorted(c.threads for c in rec.cells) == [1, 2]
    for c in rec.cells:
        assert c.worker["torch_threads"] == c.threads
        assert c.worker["env"]["OMP_NUM_THREADS"] == str(c.threads)
        assert c.worker["env"]["MKL_NUM_THREADS"] == str(c.threads)
        assert c.axes == {"threads": c.threads}
    assert "t1" in stdout and "t2" in stdout  # the threads axis shown


def _kill_first_ray_task(killed: list) -> None:
    """SIGKILL the Ray worker running a densebench worker, once: a task that dies."""
    import psutil

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if "densebench.worker" not in " ".join(p.info["cmdline"] or []):
                    continue
                if "DENSEBENCH_RAY_NODE_ID" not in p.environ():
                    continue
                time.sleep(0.5)  # into its warm-up or measurement
                job = p.environ()["DENSEBENCH_JOB"]
                os.kill(p.ppid(), signal.SIGKILL)
                killed.append(job)
                return
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)


def test_a_killed_task_fails_its_cells_the_sweep_goes_on_and_resume_reruns_them(
        cluster, workdir):
    sw = parse_sweep({"name": "killed", "models": ["pool-tiny"],
                      "variants": ["sleep", "sleep-fast"], "batch_sizes": [1, 2],
                      "measure": {"warmup": 1, "min_time": 1.5, "min_iters": 3}})
    killed: list = []
    killer = threading.Thread(target=_kill_first_ray_task, args=(killed,))
    killer.start()
    rec = run_sweep(sw, executor="ray", cells_per_node=2)  # both jobs at once
    killer.join()
    assert killed, "no task was found to kill"
    victim = killed[0]  # the job (a variant's cells) whose task was killed
    other = ({"sleep", "sleep-fast"} - {victim}).pop()
    by = {(c.variant, c.batch_size): c for c in rec.cells}
    assert len(by) == 4 and rec.status == "incomplete"
    dead = [c for c in rec.cells if c.status == "failed"]
    assert dead and all("task failed on node" in c.error for c in dead), \
        [c.error for c in dead]
    assert {c.variant for c in dead} == {victim}
    assert {c.status for c in rec.cells if c.variant == other} == {"ok"}  # it went on
    lines = (rec.path / "cells.jsonl").read_text().splitlines()

    again = run_sweep(parse_sweep(rec.data["sweep"]["spec"]), executor="ray",
                      cells_per_node=2, resume=rec.id)
    assert again.id == rec.id and again.status == "complete"
    new = [json.loads(x) for x in (rec.path / "cells.jsonl").read_text().splitlines()
           [len(lines):]]
    assert sorted((c["variant"], c["status"]) for c in new) == [(victim, "ok")] * len(dead)
    assert {c.status for c in RunStore().load("killed").cells} == {"ok"}
