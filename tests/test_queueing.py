"""The queueing model the search predicts with, against queueing theory's closed forms.

Every simulation here is seeded: each check is deterministic (no false alarms), and the
tolerances are what the seeded estimates of a long run are known to fall within."""

from __future__ import annotations

import math

import numpy as np
import pytest

from densebench import queueing
from densebench.queueing import ServiceTimes, Serving, simulate


def _exponential(mean_ms: float, n: int = 20_000, seed: int = 1) -> ServiceTimes:
    return ServiceTimes({1: np.random.default_rng(seed).exponential(mean_ms, n).tolist()})


def test_one_instance_without_batching_is_mm1():
    """M/M/1: the time in the system is exponential with rate mu - lambda, so its mean is
    1/(mu - lambda) and its p99 ln(100)/(mu - lambda). At 70% load, 200,000 queries."""
    mu, lam = 1 / 10.0, 0.07  # per ms: 10 ms a sample, 70 per second
    lat = simulate(_exponential(10.0), Serving(1, 0.0, 1), lam * 1e3, 200_000, seed=3)
    assert lat.mean() == pytest.approx(1 / (mu - lam), rel=0.08)
    assert np.percentile(lat, 99) == pytest.approx(math.log(100) / (mu - lam), rel=0.08)


def test_two_instances_are_mm2():
    """M/M/2: mean time in the system = C(2, a) / (2 mu - lambda) + 1 / mu (Erlang C)."""
    mu, lam = 1 / 10.0, 0.15  # a = 1.5 erlangs on two servers: 75% load
    a, c = lam / mu, 2
    top = a ** c / math.factorial(c) * c / (c - a)
    erlang_c = top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)
    lat = simulate(_exponential(10.0), Serving(1, 0.0, 2), lam * 1e3, 200_000, seed=5)
    assert lat.mean() == pytest.approx(erlang_c / (c * mu - lam) + 1 / mu, rel=0.08)
    one = simulate(_exponential(10.0), Serving(1, 0.0, 1), lam * 1e3 / 2, 200_000, seed=5)
    assert lat.mean() < one.mean()  # one queue before two servers beats two queues


def test_the_batcher_waits_its_timeout_and_batches_under_load():
    """A call of b samples takes 2 + b ms. At 1 QPS a query is nearly always alone: with a
    5 ms timeout it waits 5 ms, then takes 3 (8 ms exactly); without, 3 ms. At 450 QPS (more
    than one sample at a time can serve: 333 QPS) batches of 4 keep up, batches of 1 do
    not: their queue grows through the run."""
    service = ServiceTimes({b: [2.0 + b] for b in (1, 2, 3, 4)})
    waited = simulate(service, Serving(4, 5.0, 1), 1, 2000, seed=1)
    assert np.isclose(waited, 8.0).mean() > 0.98  # 0.5% have another within 5 ms
    assert np.isclose(simulate(service, Serving(4, 0.0, 1), 1, 2000, seed=1), 3.0).mean() > 0.98
    batched = simulate(service, Serving(4, 0.0, 1), 450, 20_000, seed=2)
    single = simulate(service, Serving(1, 0.0, 1), 450, 20_000, seed=2)
    assert np.percentile(batched, 99) < 40
    assert single[-1000:].mean() > 100 * np.percentile(batched, 99)


def test_a_size_not_measured_is_interpolated():
    s = ServiceTimes({1: [3.0], 4: [6.0]})
    assert s.median(2) == pytest.approx(4.0) and s.median(3) == pytest.approx(5.0)
    assert s.pool(2).tolist() == [pytest.approx(4.0)]
    assert s.median(8) == pytest.approx(12.0)  # past the largest: per sample as there
    assert s.capacity(4, 2) == pytest.approx(2 * 4 / 0.006)


def test_early_stopping_needs_mlperfs_query_counts():
    """MLPerf's published minimum: 662 queries for a p99 with none over the budget; longer
    runs may have some over it, never the plain percentile's share."""
    assert queueing.allowed_over(661, 99) == -1 and queueing.allowed_over(662, 99) == 0
    assert queueing.allowed_over(5000, 99) > queueing.allowed_over(2000, 99) > 0
    lat = np.arange(1, 1001, dtype=float)  # 1..1000 ms
    h = queueing.allowed_over(1000, 90)
    assert 0 < h < 100  # fewer than the 10% a plain p90 allows
    assert queueing.early_stopping_latency(lat, 90) == 1000 - h


def test_max_rate_brackets_the_budget():
    """The rate found passes, 3% more does not, and a tighter budget finds less."""
    service = ServiceTimes({1: [5.0]})
    serving = Serving(1, 0.0, 1)
    p = queueing.max_rate(service, serving, 30.0, 90, 2.0, 64)
    assert p is not None and p.valid and p.early_stopping_ms <= 30.0
    over = queueing.predict(service, serving, p.rate * 1.03, 30.0, 90, 2.0, 64)
    assert not over.valid
    tight = queueing.max_rate(service, serving, 15.0, 90, 2.0, 64)
    assert tight.rate < p.rate < 200  # 5 ms a sample: never more than 200 QPS
    assert queueing.max_rate(service, serving, 4.0, 90, 2.0, 64) is None  # 5 ms > 4 ms
