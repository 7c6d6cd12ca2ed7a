"""`densebench search`: screen, admit, predict, verify with real LoadGen Server runs, answer
with replicas and cost. On the test runtime, whose service time is known (5 ms a sample
for ``sleep``, 2 ms for ``sleep-bf16``), so predictions are checked against arithmetic."""

from __future__ import annotations

import json
import math
import platform
import re
import signal
import time

import numpy as np
import pytest
from PIL import Image

from densebench.report.plots import _predicted_curves
from densebench.results.store import RunStore
from densebench.sweep import load_sweep

from .conftest import blocked_at, run_cli_process, wait_for

pytestmark = pytest.mark.loadgen

FAST = ["--device", "cpu", "-m", "pool-tiny", "--latency-budget", "30ms", "--percentile",
        "90", "--probe-duration", "1.5s", "--samples", "32", "--screen-time", "0.2s",
        "--no-isolate"]


def _search(cli, *args, env=None):
    r = cli("search", *FAST, *args, "--json", env=env)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _md1_percentile(lam, service, pct, n=40_000, seed=0):
    """M/D/1 sojourn-time percentile by Lindley's recursion (Poisson arrivals at ``lam``)."""
    gaps = np.random.default_rng(seed).exponential(1 / lam, n)
    work, soj = 0.0, np.empty(n)
    for i, g in enumerate(gaps):
        work = max(0.0, work - g) + service
        soj[i] = work
    return np.percentile(soj, pct)


def _md1_max_rate(service, budget, pct):
    lo, hi = 0.01 / service, 0.999 / service
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _md1_percentile(mid, service, pct) <= budget else (lo, mid)
    return lo


def test_search_predicts_then_verifies_with_loadgen(cli, workdir):
    """One sample takes 5 ms: the prediction is at most what steady-state M/D/1 allows (a
    LoadGen verdict also needs confidence in the percentile), LoadGen's verified rate is
    near it, every probe carries its prediction, and the error is stored."""
    out = _search(cli, "-v", "sleep", "--max-batch", "1", "--instances", "1",
                  "--precision", "0.1")
    (combo,) = out["combinations"]
    s = combo["search"]
    (screened,) = out["screened"]
    one_ms = screened["search"]["one_sample_ms"]
    assert 5.0 <= one_ms < 5.0 * 6  # the sleep, and what a loaded host adds
    ideal = _md1_max_rate(0.005, 0.030, 90)  # ~159 QPS
    assert 0.4 * _md1_max_rate(one_ms / 1e3, 0.030, 90) <= s["predicted_qps"] <= 1.1 * ideal
    # it starts at the prediction from the screened calls, scaled by what the harness
    # adds (a saturating Server run): for a 5 ms sleep little, never less than nothing
    assert 1.0 <= s["harness_factor"] and s["saturated_qps"] > 0
    assert s["calibrated_qps"] <= s["predicted_qps"] * (1 + 1e-9)
    assert s["probes"][0]["qps"] == pytest.approx(s["calibrated_qps"])
    assert s["calibrated_error"] == pytest.approx(s["calibrated_qps"] / s["best_qps"] - 1)
    # low: only as far as verification steps down before it calls the latency not
    # queueing (a quarter), which a host loaded more during verification can push it to
    assert s["met"] and 0.25 * s["calibrated_qps"] <= s["best_qps"] <= 1.3 * ideal
    assert s["prediction_error"] == pytest.approx(s["predicted_qps"] / s["best_qps"] - 1)
    assert s["lowest_invalid_qps"] / s["best_qps"] - 1 <= 0.1 + 1e-9
    # the answer is run again for twice a probe's duration; each run that fails is the next
    # one's ceiling, a step of the precision lower
    confirms = [p for p in s["probes"] if p["confirm"]]
    assert confirms and all(p["duration_s"] == 3.0 for p in confirms)
    assert not any(p["confirm"] for p in s["probes"][:-len(confirms)])
    assert all(b["qps"] == pytest.approx(a["qps"] / 1.1) and a["validity"] == "INVALID"
               for a, b in zip(confirms, confirms[1:], strict=False))
    if s["confirmed"]:
        assert confirms[-1]["validity"] == "VALID" and confirms[-1]["qps"] == s["best_qps"]
        assert s["stopped"].endswith("; confirmed for 3 s")
    else:  # a host loaded more than the probes saw: the best VALID below every INVALID
        assert all(p["qps"] < s["best_qps"] for p in s["probes"] if p["validity"] != "VALID")
    for p in s["probes"]:
        assert set(p["predicted"]) == {"qps", "percentile_ms", "early_stopping_ms", "valid"}
        assert set(p["calibrated"]) == set(p["predicted"])
        assert p["predicted"]["qps"] == p["qps"]
    rec = RunStore().load(out["run"])
    assert [p["qps"] for p in rec.records("probes.jsonl")] == [p["qps"] for p in s["probes"]]
    (pred,) = rec.records("predictions.jsonl")  # one variant, split, max batch
    assert pred["qps"] == s["predicted_qps"]
    assert out["best"]["qps"] == s["best_qps"]
    assert f"--target-qps {s['best_qps']:.4g}" in out["best"]["command"]
    assert (rec.path / s["probes"][0]["logs"] / "mlperf_log_detail.txt").is_file()
    shown = cli("show", out["run"]).stdout
    assert "predicted QPS" in shown and re.search(r"(?<!IN)VALID|QPS per replica", shown)
    r = cli("report", out["run"], "--out", workdir / "rep")
    assert r.exit_code == 0 and (workdir / "rep" / "serving.png").stat().st_size > 5000
    # the predicted latency-versus-load curve the report draws under the probes: from a
    # trickle (within the budget) to past every probe and the capacity (beyond it)
    curve = s["curve"]
    rates = [p["qps"] for p in curve]
    assert len(curve) == 12 and rates == sorted(rates)
    assert rates[-1] >= max(p["qps"] for p in s["probes"]) * 1.25 * (1 - 1e-9)
    assert curve[0]["valid"] and not curve[-1]["valid"]
    assert curve[-1]["percentile_ms"] > curve[0]["percentile_ms"]
    assert list(_predicted_curves([rec])) == ["sleep b1 x1 (search)"]


def test_search_ranks_variants_and_verifies_the_best_of_each(cli, workdir):
    """sleep-bf16 (2 ms) beats sleep (5 ms) at every max batch: both are screened, every
    configuration predicted, sleep-bf16's best verified first, and it is the answer."""
    out = _search(cli, "-v", "sleep,sleep-bf16", "--max-batch", "1,2", "--instances", "1",
                  "--precision", "0.5", env={"SLEEPY_FLAGS": "bf16"})
    preds = out["predictions"]
    # 2 variants x (max batch 1, max batch 2 at 0 and 2 ms)
    assert len(preds) == 6 and [p["qps"] for p in preds] == sorted(
        (p["qps"] for p in preds), reverse=True)
    assert preds[0]["variant"] == "sleep-bf16"
    by = {(p["variant"], p["max_batch"], p["batch_timeout_ms"]): p["qps"] for p in preds}
    for b, t in ((1, 0.0), (2, 0.0), (2, 2.0)):
        assert by[("sleep-bf16", b, t)] > by[("sleep", b, t)]
    bf16, plain = out["combinations"]  # the two variants' best, best first
    assert bf16["variant"] == "sleep-bf16" and bf16["status"] == "ok"
    assert out["best"]["variant"] == "sleep-bf16"
    assert out["best"]["qps"] == bf16["search"]["best_qps"]
    # sleep's best prediction, under what sleep-bf16 verified, cannot be the answer: it is
    # not verified (a loaded host may verify sleep-bf16 below it: then it is)
    predicted = max(q for (v, _, _), q in by.items() if v == "sleep")
    assert plain["variant"] == "sleep"
    if predicted < bf16["search"]["best_qps"]:
        assert plain["status"] == "skipped", plain
        assert plain["error"] == (
            f"not verified: predicted {predicted:.4g} QPS, below the "
            f"{bf16['search']['best_qps']:.4g} QPS verified on its host (--verify-all runs it)")
    else:
        assert plain["status"] == "ok" and plain["search"]["best_qps"]


def test_a_variant_beyond_its_parity_threshold_is_not_admitted(cli, workdir):
    """``perturbed`` answers 1e-3 off (fp32's threshold: 1e-4) and is faster than sleep:
    screened, refused with the reason, never predicted or verified."""
    out = _search(cli, "-v", "sleep,perturbed", "--max-batch", "1", "--instances", "1",
                  "--precision", "0.5")
    (refused,) = out["not_admitted"]
    assert refused["variant"] == "perturbed"
    assert "parity beyond its fp32 threshold" in refused["why"]
    assert {p["variant"] for p in out["predictions"]} == {"sleep"}
    assert [c["variant"] for c in out["combinations"]] == ["sleep"]
    r = cli("show", out["run"])
    assert "parity beyond its fp32 threshold" in r.stdout


def test_with_labelled_data_a_possible_accuracy_drop_is_not_admitted(cli, workdir):
    """16 labelled images: even a variant that agrees with eager on every image may drop
    by 1.96/16 at the upper end of its interval, beyond a 1% allowance; within 50%."""
    root = workdir / "imgs"
    rng = np.random.default_rng(0)
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                root / f"c{k}" / f"{i}.png")
    args = ["-v", "sleep", "--max-batch", "1", "--instances", "1", "--data",
            f"imagefolder:{root}", "--samples", "16", "--precision", "0.5"]
    out = _search(cli, *args, "--max-accuracy-drop", "0.01")
    (refused,) = out["not_admitted"]
    assert "top-1 may drop by up to" in refused["why"] and "16 images" in refused["why"]
    assert out["combinations"] == [] and out["best"] is None
    (s,) = out["screened"]
    assert s["accuracy"]["images"] == 16
    assert s["accuracy"]["top1"] == s["accuracy"]["reference_top1"]  # sleep is eager's
    out = _search(cli, *args, "--max-accuracy-drop", "0.5")
    assert out["not_admitted"] == [] and out["best"]["variant"] == "sleep"


def test_replicas_and_cost_for_a_target_load(cli, workdir):
    """This host's price from a sweep file's [prices] table, another's from --price."""
    host = platform.node()
    fleet = workdir / "fleet.toml"
    fleet.write_text(f'models = ["pool-tiny"]\nvariants = ["sleep"]\n'
                     f'[prices]\n"{host}" = 0.5\n')
    assert load_sweep(fleet).prices == {host: 0.5}  # a sweep file like any other
    out = _search(cli, "-v", "sleep", "--max-batch", "1", "--instances", "1",
                  "--precision", "0.5", "--target-qps", "1000", "--price", fleet,
                  "--price", "elsewhere=1")
    best = out["answer"]["best"]
    qps = best["qps"]
    assert best["host_name"] == host and best["replicas"] == math.ceil(1000 / qps)
    assert best["usd_per_million"] == pytest.approx(0.5 / (qps * 3600) * 1e6)
    assert best["fleet_usd_per_hour"] == pytest.approx(best["replicas"] * 0.5)
    assert best["usd_per_million_at_target"] == pytest.approx(
        best["replicas"] * 0.5 / (1000 * 3600) * 1e6)
    assert out["answer"]["prices_for_no_host"] == ["elsewhere"]
    shown = cli("show", out["run"]).stdout
    assert f"{best['replicas']} replica(s) for 1000 QPS" in shown
    assert "--price elsewhere: no host of that name was searched" in shown


def test_verification_stops_at_a_quarter_of_the_prediction_when_it_was_wrong(cli, workdir):
    """The verifying process runs 10 times slower than the screening one measured (the
    test runtime's per-process factors): 50 ms a sample against a 30 ms budget, so every
    probe is INVALID; verification steps down to a quarter of the prediction and says the
    latency is not queueing, and the prediction's error shows."""
    counter = workdir / "counter"
    out = _search(cli, "-v", "sleep", "--max-batch", "1", "--instances", "1",
                  env={"SLEEPY_PROCESS_FACTORS": "1,10",
                       "SLEEPY_PROCESS_COUNTER": str(counter)})
    (combo,) = out["combinations"]
    s = combo["search"]
    assert not s["met"] and s["best_qps"] is None and out["best"] is None
    assert "where the latency is not queueing" in s["stopped"], s["stopped"]
    # the saturating run sees the verifying process's calls take about 10x as long: at
    # that cost not even a trickle meets the budget, so the one probe is at the quarter
    assert s["harness_factor"] > 3, s["harness_factor"]
    qps = [p["qps"] for p in s["probes"]]
    assert qps == sorted(qps, reverse=True) and qps[0] == pytest.approx(s["calibrated_qps"])
    assert qps[-1] == pytest.approx(s["predicted_qps"] / 4, rel=1e-6)
    assert all(p["validity"] == "INVALID" and p["predicted"]["valid"] for p in s["probes"])
    assert not any(p["calibrated"]["valid"] for p in s["probes"])
    # no answer is not the end: what it measured at its lowest load, and what it could meet
    shown = " ".join(cli("show", out["run"]).stdout.split())
    low = min(s["probes"], key=lambda p: p["qps"])
    assert (f"{low['combination']}: p{s['percentile']:g} " in shown
            and f"ms measured at its lowest load, {low['qps']:.4g} QPS" in shown), shown
    assert "smallest p" in shown and "budgets they could meet" in shown


def test_an_answer_that_does_not_hold_for_twice_a_probe_is_not_the_answer(workdir, tmp_path):
    """The one probe (at 40 QPS, a fifth of the 5 ms sample's capacity) is VALID; once it is
    stored the host gets busy: each sample takes five times as long (25 ms, a 40 QPS load's
    whole gap). The answer's confirmations, run for twice the probe's duration, are INVALID,
    three of them, each a step of the precision lower, and the search reports no answer
    rather than the probe's."""
    busy = tmp_path / "busy"
    p = run_cli_process("search", *FAST, "-v", "sleep", "--max-batch", "1", "--instances", "1",
                        "--start-qps", "40", "--max-probes", "1", "--name", "unheld", "--json",
                        env={"SLEEPY_SLOW_WHEN": f"sleep:{busy}:5"})
    deadline = time.monotonic() + 120
    while not list((workdir / "runs").glob("*/probes.jsonl")):  # the probe is stored
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-2000:]
        time.sleep(0.05)
    busy.touch()
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    (combo,) = json.loads(out)["combinations"]
    s = combo["search"]
    first, *confirms = s["probes"]
    assert first["validity"] == "VALID" and not first["confirm"] and first["qps"] == 40
    assert [p["qps"] for p in confirms] == pytest.approx([40, 40 / 1.05, 40 / 1.05 ** 2])
    assert all(p["confirm"] and p["duration_s"] == 3 for p in confirms)
    assert [p["validity"] for p in confirms] == ["INVALID"] * 3
    assert not s["met"] and not s["confirmed"] and s["best_qps"] is None
    assert s["lowest_invalid_qps"] == pytest.approx(40 / 1.05 ** 2)
    assert s["stopped"] == "1 probes (max_probes); not confirmed in 3 runs of 3 s"
    assert json.loads(out)["best"] is None


def test_search_stops_at_its_time_limit_with_what_it_found(cli, workdir):
    """--max-time 3s: screening takes about a second, the first 1.5 s probe is cut short
    at the limit where it runs past it, and nothing starts after it."""
    out = _search(cli, "-v", "sleep", "--max-batch", "1", "--instances", "1",
                  "--max-time", "3")
    (combo,) = out["combinations"]
    if combo["status"] == "ok":
        # and the answer, if one was VALID, is not confirmed: that would run past the limit
        assert combo["search"]["stopped"] in (
            "time limit (max_time) reached",
            "time limit (max_time) reached; time limit before the answer was confirmed")
        assert not combo["search"]["confirmed"]
        assert 1 <= len(combo["search"]["probes"]) <= 2
    else:  # a slow host spent the 3 s screening: nothing was verified
        assert combo["error"] == "not verified: time limit (max_time) reached"
    rec = RunStore().load(out["run"])
    assert rec.status == "complete"
    wall = sum(p["wall_s"] for p in rec.records("probes.jsonl"))
    assert wall <= 3 + 1.5 + 1  # never past the limit by more than one probe


def test_search_says_when_no_load_meets_the_budget(cli, workdir):
    r = cli("search", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep",
            "--latency-budget", "2ms", "--max-batch", "1", "--instances", "1",
            "--samples", "16", "--screen-time", "0.1s", "--no-isolate")
    assert r.exit_code == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "no combination met the budget: one sample alone takes" in text, r.stdout
    # and what it could meet: a 5 ms sample (4 + 1 ms) under a trickle of load, no less
    found = re.search(r"smallest p99 budgets they could meet \(predicted under a trickle of "
                      r"load\): sleep b1 1x\d+ ([\d.]+) ms", text)
    assert found, r.stdout
    assert 5.0 <= float(found.group(1)) < 5.0 * 6


def test_ctrl_c_during_a_verification_probe_keeps_what_finished(workdir, tmp_path):
    """Interrupted inside the second verification's LoadGen run (the test runtime blocks
    at its 40th call; screening makes fewer): both screenings, the first verification and
    its probes stay, the run is incomplete, exit 130."""
    env, ready = blocked_at("sleep", "call40", tmp_path)
    p = run_cli_process("search", *FAST[:-1], "-v", "sleep,sleep-bf16", "--max-batch", "1",
                        "--instances", "1", "--verify-all", "--screen-time", "0.01s",
                        "--precision", "0.5", "--name", "cut", env={**env, "SLEEPY_FLAGS": "bf16"})
    wait_for(ready, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "incomplete" in err, err
    rec = RunStore().load("cut")
    assert rec.status == "incomplete"
    kept = [(c.variant, c.axes["search"], c.status) for c in rec.cells]
    assert kept == [("sleep", "screen", "ok"), ("sleep-bf16", "screen", "ok"),
                    ("sleep-bf16", "verify", "ok")]
    probes = rec.records("probes.jsonl")
    assert probes and {pr["variant"] for pr in probes} == {"sleep-bf16"}


def test_dry_run_plans_every_candidate_and_split(cli, workdir):
    """No -v: the quick set this machine runs; splits of the cores into instances x
    threads that use them all; what would be predicted; nothing run or stored."""
    import os

    from densebench.variants import QUICK

    cores = len(os.sched_getaffinity(0))
    r = cli("search", "--device", "cpu", "-m", "pool-tiny", "--latency-budget", "100ms",
            "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    # every member of the quick set, each either planned or skipped with its reason
    assert sorted(plan["variants"] + [s["variant"] for s in plan["skipped"]]) == sorted(QUICK)
    assert all(s["reason"] for s in plan["skipped"])
    assert "eager" in plan["variants"] and "onnxruntime" in plan["variants"]
    splits = [(s["instances"], s["threads"]) for s in plan["splits"]]
    assert (1, cores) in splits and all(n * t == cores for n, t in splits if cores % n == 0)
    assert (2, cores // 2) in splits or cores == 1
    assert plan["batch_sizes_screened"] == [1, 2, 4, 8]
    assert plan["configurations"] == len(plan["variants"]) * len(splits) * 5
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("args,needle", [
    (["--latency-budget", "50kg"], "--latency-budget '50kg' is not a duration"),
    (["--latency-budget", "50ms", "--percentile", "101"], "--percentile must be between"),
    (["--latency-budget", "50ms", "--max-batch", "0"], "--max-batch must be at least 1"),
    (["--latency-budget", "50ms", "--instances", "999", "--threads", "1"],
     "instances x threads (999 x 1) is more than"),
    (["--latency-budget", "50ms", "--price", "nohost"], "--price 'nohost' is not HOST=USD"),
    (["--latency-budget", "50ms", "--price", "h=-1"], "with a positive price"),
    (["--latency-budget", "50ms", "--price", "nofile.toml"], "--price nofile.toml: cannot read"),
    (["--latency-budget", "50ms", "--target-qps", "0"], "--target-qps must be positive"),
    (["--latency-budget", "50ms", "--verify", "0"], "--verify must be at least 1"),
    (["--latency-budget", "50ms", "--executor", "warp"], "--executor 'warp' is unknown"),
])
def test_bad_search_input(cli, workdir, args, needle):
    r = cli("search", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep", *args)
    assert r.exit_code == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (workdir / "runs").exists()
