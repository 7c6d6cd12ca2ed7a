from __future__ import annotations

import math

import numpy as np
import pytest

from densebench.errors import ConfigError
from densebench.measure.engine import StopRule, Warmup, time_calls
from densebench.measure.stats import bootstrap_ci, min_samples, percentile_supported, summarize


def test_mlperf_minimum_samples():
    assert min_samples(90) == 64
    assert min_samples(99) == 662
    assert 64 < min_samples(95) < 662
    assert percentile_supported(50, 1)
    assert not percentile_supported(90, 63) and percentile_supported(90, 64)
    assert not percentile_supported(99, 661) and percentile_supported(99, 662)


def test_summarize_against_hand_computed_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, 10.0], batch_size=2)
    assert s["n"] == 5
    assert s["mean_ms"] == pytest.approx(4.0)
    assert s["stdev_ms"] == pytest.approx(math.sqrt((9 + 4 + 1 + 0 + 36) / 4))
    assert s["cov"] == pytest.approx(s["stdev_ms"] / 4.0)
    assert s["min_ms"] == 1.0 and s["max_ms"] == 10.0
    assert s["p50_ms"] == 3.0
    # 2 images x 5 iterations in 20 ms
    assert s["throughput"] == pytest.approx(10 / 0.020)
    assert s["p90_ms"] is None and s["p99_ms"] is None and s["p95_ms"] is None
    assert any(u.startswith("p90 (needs 64") for u in s["unsupported"])
    assert s["noisy"] is True


def test_percentiles_appear_once_supported():
    x = np.arange(1, 701, dtype=float)  # 700 samples: 1..700 ms
    s = summarize(x, batch_size=1)
    assert s["p90_ms"] == pytest.approx(np.percentile(x, 90))
    assert s["p99_ms"] == pytest.approx(np.percentile(x, 99))
    assert s["unsupported"] == []
    s64 = summarize(x[:64], 1)
    assert s64["p90_ms"] is not None and s64["p99_ms"] is None


def test_bootstrap_intervals_bracket_the_estimate_and_are_repeatable():
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 1.0, size=400)
    s = summarize(x, batch_size=4)
    lo, hi = s["p50_ci_ms"]
    assert lo <= s["p50_ms"] <= hi and hi - lo < 0.5
    tlo, thi = s["throughput_ci"]
    assert tlo <= s["throughput"] <= thi
    assert summarize(x, 4)["p50_ci_ms"] == s["p50_ci_ms"]
    assert bootstrap_ci(np.array([1.0]), lambda m: m.mean(axis=1)) is None


def test_constant_samples_are_not_noisy():
    s = summarize([5.0] * 20, 1)
    assert s["stdev_ms"] == 0 and s["cov"] == 0 and not s["noisy"]
    assert s["p50_ci_ms"] == (5.0, 5.0)


def test_stop_rule():
    assert StopRule(iters=5).done(5, 0.0) and not StopRule(iters=5).done(4, 100.0)
    r = StopRule(min_iters=10, min_time=1.0)
    assert not r.done(10, 0.5) and not r.done(5, 2.0) and r.done(10, 1.0)
    assert StopRule(min_iters=100, min_time=0, max_time=1.0).done(3, 1.5)
    for bad in ({"iters": 0}, {"min_iters": 0}, {"min_time": -1}, {"max_time": 0}):
        with pytest.raises(ConfigError):
            StopRule(**bad)


def test_warmup_parse():
    assert Warmup.parse("5") == Warmup(count=5)
    assert Warmup.parse("2s") == Warmup(count=None, seconds=2.0)
    for bad in ("-1", "x", "-2s"):
        with pytest.raises(ConfigError):
            Warmup.parse(bad)


def test_time_calls_counts_and_times_real_work():
    calls = []

    def work(x):
        calls.append(x)
        sum(range(20000))

    samples = time_calls(work, 1, timer="host", device="cpu", stop=StopRule(iters=7))
    assert len(samples) == 7 == len(calls)
    assert all(s > 0 for s in samples)


def test_durations_read_the_same_way_everywhere(cli, workdir):
    """A bare number is seconds, or a number with its unit: in every command's options
    and in sweep files."""
    from densebench.durations import duration_ms, seconds
    from densebench.errors import ConfigError
    from densebench.sweep import parse_sweep

    assert seconds(3, "x") == 3.0 and seconds("3", "x") == 3.0
    assert seconds("500ms", "x") == 0.5 and seconds("2m", "x") == 120.0
    assert duration_ms("0.1s", "x") == pytest.approx(100.0) and duration_ms("250us", "x") == 0.25
    for bad in ("fast", "3 parsecs", "-1", True):
        with pytest.raises(ConfigError, match="x"):
            seconds(bad, "x")
    with pytest.raises(ConfigError, match="positive"):
        seconds(0, "x")
    sw = parse_sweep({"models": ["pool-tiny"], "variants": ["sleep"],
                      "measure": {"min_time": "200ms", "max_time": 2, "timeout": "1m"}})
    assert (sw.measure["min_time"], sw.measure["max_time"], sw.measure["timeout"]) == (
        0.2, 2.0, 60.0)
    r = cli("sweep", "--dry-run", _write_sweep(workdir, 'min_time = "soon"'))
    assert r.exit_code == 2 and "[measure] min_time 'soon' is not a duration" in r.stderr
    # the same option takes either form in run and search
    for form in ("0.05", "50ms"):
        r = cli("run", "-m", "pool-tiny", "-v", "sleep", "-b", "1", "--mode", "model",
                "--device", "cpu", "--no-isolate", "--repeats", "1", "--warmup", "0",
                "--min-iters", "1", "--min-time", form, "--max-time", form, "--json")
        assert r.exit_code == 0, r.stderr
    for form in ("120", "2m"):  # refused before anything runs: for the percentile only
        r = cli("search", "-m", "pool-tiny", "-v", "sleep", "--device", "cpu",
                "--latency-budget", "0.05", "--max-time", form, "--percentile", "101")
        assert r.exit_code == 2 and "--percentile" in r.stderr, r.stderr


def _write_sweep(workdir, measure_line: str):
    p = workdir / "sweep.toml"
    p.write_text(f'models = ["pool-tiny"]\nvariants = ["sleep"]\n[measure]\n{measure_line}\n')
    return p
