"""MLPerf LoadGen scenarios: real LoadGen runs, a few seconds
each, on densenet-tiny and on the test runtime whose service time is known."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from densebench.results.store import RunStore, load_run
from densebench.run import RunConfig, run_benchmark

from .conftest import TINY_SIZE, plain_sleep_ms

pytestmark = pytest.mark.loadgen
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

TINY = ["-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "onnxruntime", "--samples",
        "32", "--duration", "1s", "--no-isolate", "--device", "cpu"]


def _served(cli, *args):
    r = cli("run", "--device", "cpu", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return RunStore().load(json.loads(r.stdout)["run"])


@pytest.mark.parametrize("scenario,extra", [
    ("single-stream", []),
    ("multi-stream", ["--samples-per-query", "4"]),
    ("server", ["--target-qps", "40", "--latency-budget", "50ms"]),
    ("offline", []),
])
def test_every_scenario_gives_loadgens_verdict_and_keeps_its_logs(cli, workdir, scenario,
                                                                  extra):
    rec = _served(cli, *TINY, "--scenario", scenario, "--max-batch", "2", *extra)
    (c,) = rec.cells
    lg = c.loadgen
    assert c.ok and c.scenario == scenario and c.mode == "e2e" and c.batch_size == 2
    assert lg["validity"] in ("VALID", "INVALID")
    assert (lg["validity"] == "VALID") == (not lg["reasons"])  # INVALID always says why
    assert lg["short_run"] is True and lg["duration_ms"] == 1000
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        assert (rec.path / lg["logs"][name]).is_file()
    summary = (rec.path / lg["logs"]["mlperf_log_summary.txt"]).read_text()
    assert f"Result is : {lg['validity']}" in summary
    s = c.scenario_settings
    assert s["max_batch"] == 2 and s["instances"] == 1 and s["threads_per_instance"] >= 1
    assert s["batch_timeout_ms"] == 2.0 and s["official"] is False
    assert c.stats["throughput"] > 0 and c.stats["p50_ms"] > 0
    assert lg["query_count"] >= 1 and sum(lg["batch_sizes"].values()) >= 1
    if scenario == "server":
        assert lg["target_qps"] == 40 and lg["latency_budget_ms"] == 50
        assert lg["scheduled_samples_per_sec"] > 0 and lg["completed_samples_per_sec"] > 0
    if scenario == "single-stream":
        assert lg["p90_latency_ms"] > 0 and lg["early_stopping_p90_ms"] is not None
    out = cli("show", rec.id).stdout
    assert lg["validity"] in out and scenario in out


def _sleepy(scenario, **kw):
    settings = {"model": "pool-tiny", "variants": ["sleep"], "scenario": scenario,
                "samples": 64, "duration": 1.0, "executor": "inline", "device": "cpu", **kw}
    (c,) = run_benchmark(RunConfig(**settings)).cells
    assert c.ok, c.error
    return c


def test_offline_throughput_and_batches_match_the_service_time(workdir):
    c = _sleepy("offline", max_batch=[4])
    # the sleep variant takes 4 ms + 1 ms per image: a batch of 4 is 8 ms, 500 samples/s at
    # most (sleep never returns early); at least 70% of what the batch time measured in
    # this run's warm-up allows (the host's load slows both alike)
    measured = 4 * 1000 / c.loadgen["warm_up_ms"]["batch_ms"]
    assert 0.7 * measured < c.loadgen["samples_per_second"] <= 500 * 1.01, measured
    sizes = {int(k): n for k, n in c.loadgen["batch_sizes"].items()}
    assert sizes[4] >= sum(sizes.values()) - 1  # every batch full but perhaps the last


def test_single_stream_latency_is_the_service_time(workdir):
    c = _sleepy("single-stream", max_batch=[4])
    one = c.loadgen["warm_up_ms"]["one_ms"]  # the session alone: 4 + 1 ms of sleep
    assert 5.0 <= one < 1.6 * plain_sleep_ms(5.0)  # one call, timed as one
    # LoadGen's latency adds only the hand-offs between its thread and the batcher's: a
    # query kept waiting for a batch to fill or a second call would be twice the call
    assert one <= c.stats["p50_ms"] < 2 * one
    assert c.loadgen["batch_sizes"] == {"1": c.loadgen["query_count"]}


def test_multi_stream_queries_split_into_full_batches(workdir):
    c = _sleepy("multi-stream", max_batch=[4], samples_per_query=8)
    sizes = c.loadgen["batch_sizes"]
    assert set(sizes) == {"4"} and sizes["4"] == 2 * c.loadgen["query_count"]
    assert c.stats["p50_ms"] >= 2 * 8.0  # two batches of 4, 8 ms each, one instance


def test_server_batcher_waits_only_as_long_as_its_timeout(workdir):
    def mean_batch(c) -> float:
        sizes = {int(k): n for k, n in c.loadgen["batch_sizes"].items()}
        return sum(k * n for k, n in sizes.items()) / sum(sizes.values())

    # at 20 QPS a 5 ms call leaves the queue empty: batches of one (a batch forms only from
    # what arrived during a call: about 1.1 at this load, 1.2 were the host to double it)
    no_wait = _sleepy("server", max_batch=[4], target_qps=20, batch_timeout_ms=0.0)
    waits = _sleepy("server", max_batch=[4], target_qps=100, batch_timeout_ms=40.0)
    assert mean_batch(no_wait) < 1.5
    assert mean_batch(waits) > 2.0  # ~4 arrivals per 40 ms gathered into batches


def test_a_valid_to_invalid_change_is_a_regression(cli, workdir):
    base = ["run", "--device", "cpu",
            "-m", "pool-tiny", "-v", "sleep", "--scenario", "server", "--samples",
            "32", "--duration", "1s", "--percentile", "90", "--latency-budget", "30ms",
            "--no-isolate"]
    assert cli(*base, "--target-qps", "40", "--name", "calm").exit_code == 0
    assert cli(*base, "--target-qps", "400", "--name", "flooded").exit_code == 0
    assert load_run(RunStore().resolve("flooded")).cells[0].loadgen["validity"] == "INVALID"
    r = cli("compare", "calm", "flooded", "--format", "json")
    (row,) = json.loads(r.stdout)["rows"]
    assert row["scenario"] == "server" and row["note"] == "VALID -> INVALID"
    assert row["verdict"] == "slower"
    r = cli("compare", "calm", "flooded", "--fail-on-regression")
    assert r.exit_code == 1 and "target_qps 40.0 vs 400.0" in r.stderr


def test_accuracy_mode_checks_every_response(cli, workdir):
    root = workdir / "imgs"
    rng = np.random.default_rng(0)
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / f"c{k}" / f"{i}.png")
    rec = _served(cli, "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "onnxruntime",
                  "--scenario", "offline", "--accuracy", "--data", f"imagefolder:{root}",
                  "--samples", "12", "--duration", "1s", "--max-batch", "4")
    (c,) = rec.cells
    assert c.parity["images"] == 12 and c.parity["top1_agreement"] == 1.0
    assert c.parity["max_abs_error"] < 1e-4
    assert c.accuracy["images"] == 12 and 0 <= c.accuracy["top1"] <= 1


@pytest.mark.parametrize("args,needle", [
    (["--scenario", "warp"], "--scenario 'warp' is unknown"),
    (["--scenario", "server"], "--target-qps is required by the server scenario"),
    (["--scenario", "server", "--target-qps", "0"], "--target-qps must be positive"),
    (["--scenario", "server", "--target-qps", "-5"], "--target-qps must be positive"),
    (["--scenario", "server", "--target-qps", "5", "--latency-budget", "50 parsecs"],
     "--latency-budget '50 parsecs' is not a duration"),
    (["--scenario", "server", "--target-qps", "5", "--percentile", "100"],
     "--percentile must be between 0 and 100"),
    (["--scenario", "server", "--target-qps", "5", "--percentile", "0"],
     "--percentile must be between 0 and 100"),
    (["--scenario", "offline", "--max-batch", "0"], "--max-batch must be positive"),
    # one instance more than there are cores, one thread each: refused on any machine
    (["--scenario", "offline", "--instances", str(CORES + 1), "--threads", "1"],
     f"instances x threads ({CORES + 1} x 1) is more than the {CORES} cores"),
    (["--target-qps", "5"], "--target-qps is a setting of the server scenario, not of closed-loop"),
    (["--max-batch", "4"], "--max-batch is a setting of the LoadGen scenarios"),
    (["--scenario", "offline", "--target-qps", "5"], "is a setting of the server scenario"),
    (["--scenario", "offline", "-b", "4"], "--batch-size is a closed-loop setting"),
    (["--scenario", "offline", "--mode", "model"],
     "--mode must be e2e or e2e-jpeg for the LoadGen"),
])
def test_bad_scenario_input(cli, workdir, args, needle):
    r = cli("run", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep", *args)
    assert r.exit_code == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def test_loadgen_missing_is_one_line_saying_how_to_install_it(workdir):
    code = ("import sys; sys.modules['mlperf_loadgen'] = None; "
            "from densebench.cli import main; sys.argv = ['densebench', 'run', '-m', "
            "'pool-tiny', '-v', 'sleep', '--scenario', 'offline']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "densebench: error: --scenario offline needs MLPerf LoadGen, which is not installed: "
        "pip install mlcommons-loadgen"]


def test_a_server_run_without_a_budget_is_judged_against_the_default_one():
    """A server run given no --latency-budget runs under LoadGen's 100 ms, its record says
    so, and an INVALID verdict over it reads as words (a loaded host's latency bound missed
    once raised a TypeError there, and the cell failed)."""
    from densebench.run import RunConfig
    from densebench.scenarios.loadgen import verdict

    cfg = RunConfig(scenario="server", target_qps=20, variants=["eager"])
    assert cfg.scenario_object.record(cfg, 1)["latency_budget_ms"] == 100.0
    missed = {"result_validity": "INVALID", "result_perf_constraints_met": False}
    assert verdict(missed, 100.0, 99)["reasons"] == [
        "latency bound not met (p99 over the 100 ms budget)"]
    assert "over the latency bound" in verdict(missed, None, 99)["reasons"][0]
