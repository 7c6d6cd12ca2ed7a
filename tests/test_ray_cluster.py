"""A Ray cluster started the way a user starts one: ``ray start --head`` in its own
process, token authentication on (as Ray 2.60 ships it on), and ``densebench sweep
--executor ray`` in another, finding it with ``--address auto`` or its address."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from densebench.results.store import RunStore

from .conftest import _as_from_a_terminal, run_cli_process

pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.ray

SWEEP = ('name = "{name}"\nmodels = ["pool-tiny"]\nvariants = ["sleep-fast"]\n'
         "batch_sizes = [1, 2]\n[measure]\nwarmup = 1\nmin_time = 0.05\nmin_iters = 3\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """``ray start --head --block`` with its own temp directory (short: Ray's socket paths
    must fit 107 bytes), port and token; yields the environment a user's shell would have
    (RAY_TMPDIR, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH) and the head's GCS address. Stopped
    with Ctrl-C, as a user stops it (SIGTERM drains for 30 s first)."""
    base = Path(tempfile.mkdtemp(prefix="dbray", dir="/tmp"))
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {"RAY_TMPDIR": str(base), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    ray_cli = Path(sys.executable).with_name("ray")
    log = (base / "head.log").open("w")
    proc = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--port", str(_free_port()),
         "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
        env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_as_from_a_terminal)  # stopped with Ctrl-C below
    current = base / "ray" / "ray_current_cluster"
    deadline = time.monotonic() + 180
    while not (current.exists() and current.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ray start --head did not start: {(base / 'head.log').read_text()}")
        time.sleep(0.2)
    try:
        yield env, current.read_text().strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def test_a_sweep_runs_on_a_cluster_started_with_ray_start(head, workdir):
    env, address = head
    for name, where in (("auto", "auto"), ("explicit", address)):
        f = workdir / f"{name}.toml"
        f.write_text(SWEEP.format(name=name))
        p = run_cli_process("sweep", f, "--executor", "ray", "--address", where, env=env)
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        rec = RunStore().load(name)
        cluster = rec.data["cluster"]
        assert cluster["executor"] == "ray" and cluster["address"] == where
        (node,) = cluster["nodes"]
        assert node["cpus"] == 2  # the head's --num-cpus: it is that cluster
        assert sorted((c.batch_size, c.status) for c in rec.cells) == [(1, "ok"), (2, "ok")]
        assert all(c.worker["ray_node_id"] == node["node_id"] for c in rec.cells)


def test_a_client_without_the_token_is_told_what_to_set(head, workdir):
    """A shell without RAY_AUTH_MODE=token (the commonest slip: Ray then sends no token and
    the cluster refuses it, after 20 s of retries): one line saying what to set and where
    the token goes, not Ray's log lines, nothing stored."""
    env, address = head
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    f = workdir / "s.toml"
    f.write_text(SWEEP.format(name="refused"))
    p = run_cli_process("sweep", f, "--executor", "ray", "--address", "auto",
                        env={**env, "HOME": str(workdir)}, unset=("RAY_AUTH_MODE",))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert err.strip().splitlines() == [
        f"densebench: error: --address: the Ray cluster at {address} refused this process: "
        "it wants the cluster's authentication token (`ray start --head` turns token "
        "authentication on): set RAY_AUTH_MODE=token, with the token in ~/.ray/auth_token, "
        "$RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH"], err
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


def test_a_search_screens_and_verifies_on_the_clusters_node(head, workdir):
    """`densebench search --executor ray --address auto` against the cluster: the node
    screens the variants and LoadGen verifies there (each cell says which node), and the
    answer is per host."""
    env, _ = head
    p = run_cli_process("search", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep",
                        "--max-batch", "1", "--instances", "1", "--latency-budget", "30ms",
                        "--percentile", "90", "--probe-duration", "1s", "--samples", "32",
                        "--screen-time", "0.1s", "--precision", "0.5", "--executor", "ray",
                        "--address", "auto", "--name", "on-cluster", "--json", env=env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    res = json.loads(out)
    rec = RunStore().load("on-cluster")
    (node,) = rec.data["cluster"]["nodes"]
    assert rec.data["cluster"]["executor"] == "ray"
    assert [(c.axes["search"], c.status) for c in rec.cells] == [("screen", "ok"),
                                                                 ("verify", "ok")]
    assert all(c.worker["ray_node_id"] == node["node_id"] for c in rec.cells)
    (host,) = res["answer"]["hosts"]
    assert host["qps"] == res["best"]["qps"] > 0 and rec.records("probes.jsonl")
