"""What a served configuration's latency will be under Poisson load, before LoadGen says it.

``ServiceTimes`` holds measured per-call times of one variant on its instances, by batch
size (measured while every instance was busy, as they are near capacity). ``simulate``
replays densebench's own dynamic batcher (``scenarios.loadgen.DynamicBatcher``) against
Poisson arrivals with those times: each instance, once free, takes the oldest query, then
more until ``max_batch`` or ``batch_timeout_ms`` after it took the first, and serves the
batch in a time drawn from the measured calls of that batch size. ``verdict`` judges a
simulated run the way LoadGen's early stopping judges a real one (enough queries under
the budget for the percentile to hold at 99% confidence), and ``max_rate`` finds the
highest rate whose simulated runs pass: the prediction a search verifies.

Pure arithmetic (NumPy and the standard library), checked in the tests against queueing
theory's closed forms (M/M/1, M/M/c).
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass

import numpy as np

from densebench.measure.stats import CONFIDENCE, TOLERANCE, min_samples

MAX_QUERIES = 20_000  # per simulated run: beyond it a run's percentile moves no more
RUNS = 3  # simulated runs per rate (independent seeds); their median decides


@dataclass
class ServiceTimes:
    """Per-call milliseconds by batch size; sizes in between are interpolated."""

    samples_ms: dict[int, list[float]]

    def __post_init__(self):
        self.samples_ms = {int(b): sorted(float(v) for v in ms)
                           for b, ms in self.samples_ms.items() if ms}
        if not self.samples_ms:
            raise ValueError("no service time was measured")
        self._sizes = sorted(self.samples_ms)
        self._pools: dict[int, np.ndarray] = {}

    @property
    def sizes(self) -> list[int]:
        return list(self._sizes)

    def median(self, b: int) -> float:
        if b in self.samples_ms:
            return float(np.median(self.samples_ms[b]))
        sizes = self._sizes
        lo = max([s for s in sizes if s < b], default=sizes[0])
        hi = min([s for s in sizes if s > b], default=sizes[-1])
        if lo == hi:  # outside what was measured: per sample as at the nearest size
            return self.median(lo) * b / lo
        m_lo, m_hi = self.median(lo), self.median(hi)
        return m_lo + (m_hi - m_lo) * (b - lo) / (hi - lo)

    def pool(self, b: int) -> np.ndarray:
        """The times a batch of ``b`` may take: its own calls, or the nearest measured
        size's calls scaled to the interpolated median."""
        if b not in self._pools:
            if b in self.samples_ms:
                self._pools[b] = np.asarray(self.samples_ms[b])
            else:
                near = min(self._sizes, key=lambda s: (abs(s - b), -s))
                base = np.asarray(self.samples_ms[near])
                self._pools[b] = base * (self.median(b) / self.median(near))
        return self._pools[b]

    def capacity(self, max_batch: int, instances: int) -> float:
        """Queries per second with every batch full and every instance busy."""
        return instances * max_batch / (self.median(max_batch) / 1e3)

    def scaled(self, factor: float) -> ServiceTimes:
        """Every call ``factor`` times as long (what the harness adds per call, measured)."""
        return ServiceTimes({b: [v * factor for v in ms] for b, ms in self.samples_ms.items()})

    def to_dict(self) -> dict:
        return {str(b): ms for b, ms in self.samples_ms.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ServiceTimes:
        return cls({int(b): ms for b, ms in d.items()})


@dataclass(frozen=True)
class Serving:
    """A configuration of the batcher and its instances."""

    max_batch: int = 1
    batch_timeout_ms: float = 0.0
    instances: int = 1


def simulate(service: ServiceTimes, serving: Serving, rate: float, queries: int,
             seed: int = 0) -> np.ndarray:
    """Latency (ms, arrival to answer) of each of ``queries`` Poisson arrivals at ``rate``
    per second, starting from an idle system, as densebench's batcher serves them."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1e3 / rate, queries))
    draws = rng.random(queries)
    t = arrivals.tolist()
    pools = {b: service.pool(b) for b in range(1, serving.max_batch + 1)}
    free = [0.0] * serving.instances  # when each instance is next free (a heap)
    done = np.empty(queries)
    i = batches = 0
    timeout = serving.batch_timeout_ms
    while i < queries:
        start = max(heapq.heappop(free), t[i])  # takes the oldest query
        deadline = start + timeout
        end = min(i + serving.max_batch, queries)
        k = bisect.bisect_right(t, deadline, i, end) - i  # what arrives while it gathers
        if k == serving.max_batch:
            begin = max(start, t[i + k - 1])  # full: it starts as the last one arrives
        else:
            begin = deadline  # it waited the whole timeout (0: took what was queued)
        pool = pools[k]
        finish = begin + pool[int(draws[batches] * len(pool))]
        done[i:i + k] = finish
        heapq.heappush(free, finish)
        i += k
        batches += 1
    return done - arrivals


def allowed_over(queries: int, percentile: float, confidence: float = CONFIDENCE) -> int:
    """Queries over the budget a run of ``queries`` may have and still show, at
    ``confidence``, that the ``percentile`` is under it (LoadGen's early stopping): the
    largest h with P(Binomial(queries, q) <= h) <= 1 - confidence, where q is the share
    over the budget the percentile allows, less the tolerance that makes h = 0 need
    MLPerf's published counts (662 queries for p99); -1: no count is enough."""
    if queries < min_samples(percentile):  # MLPerf's own counts for h = 0
        return -1
    q = (1.0 - percentile / 100.0) * TOLERANCE
    log_q, log_p = math.log(q), math.log1p(-q)
    h, cdf, term = -1, 0.0, queries * log_p  # log P(X = 0)
    while h + 1 <= queries:
        pk = math.exp(term)
        if cdf + pk > 1.0 - confidence:
            break
        cdf += pk
        h += 1
        term += math.log(queries - h) - math.log(h + 1) + log_q - log_p
    return max(h, 0)


def early_stopping_latency(latencies: np.ndarray, percentile: float) -> float:
    """The latency a run must keep under the budget for LoadGen to call it VALID: the
    (h+1)-th largest, where h is ``allowed_over``; infinite when the run is too short."""
    h = allowed_over(len(latencies), percentile)
    if h < 0:
        return math.inf
    return float(np.partition(latencies, len(latencies) - 1 - h)[len(latencies) - 1 - h])


def run_queries(rate: float, duration_s: float, min_queries: int) -> int:
    """Queries LoadGen issues in a Server run of at least ``duration_s`` and
    ``min_queries`` at ``rate``."""
    return int(min(MAX_QUERIES, max(min_queries, math.ceil(rate * duration_s))))


@dataclass(frozen=True)
class Prediction:
    rate: float
    percentile_ms: float  # the percentile over the simulated runs
    early_stopping_ms: float  # what LoadGen's verdict rests on (median over the runs)
    valid: bool

    def to_dict(self) -> dict:
        return {"qps": self.rate, "percentile_ms": round(self.percentile_ms, 4),
                "early_stopping_ms": round(self.early_stopping_ms, 4), "valid": self.valid}


def predict(service: ServiceTimes, serving: Serving, rate: float, budget_ms: float,
            percentile: float, duration_s: float, min_queries: int,
            seed: int = 0) -> Prediction:
    """What a LoadGen Server run at ``rate`` will show: simulated ``RUNS`` times."""
    n = run_queries(rate, duration_s, min_queries)
    pct, es = [], []
    for r in range(RUNS):
        lat = simulate(service, serving, rate, n, seed=seed + r)
        pct.append(float(np.percentile(lat, percentile)))
        es.append(early_stopping_latency(lat, percentile))
    e = float(np.median(es))
    return Prediction(rate, float(np.median(pct)), e, e <= budget_ms)


def max_rate(service: ServiceTimes, serving: Serving, budget_ms: float, percentile: float,
             duration_s: float, min_queries: int, precision: float = 0.01,
             seed: int = 0) -> Prediction | None:
    """The highest rate whose simulated runs are VALID (bisection on a log scale from the
    capacity down), or None when even a trickle is not."""
    cap = service.capacity(serving.max_batch, serving.instances)

    def at(rate: float) -> Prediction:
        return predict(service, serving, rate, budget_ms, percentile, duration_s,
                       min_queries, seed)

    lo = at(cap / 256)
    if not lo.valid:
        return None
    hi_rate = cap * 1.5  # batches and spare instances can beat the full-batch figure
    while lo.rate * (1 + precision) < hi_rate:
        mid = at(math.sqrt(lo.rate * hi_rate))
        if mid.valid:
            lo = mid
        else:
            hi_rate = mid.rate
    return lo


def curve(service: ServiceTimes, serving: Serving, budget_ms: float, percentile: float,
          duration_s: float, min_queries: int, points: int = 12,
          top: float | None = None) -> list[dict]:
    """The predicted percentile latency against offered load: ``points`` rates spaced
    evenly on a log scale from 1/16 of ``top`` (the capacity by default) up to ``top``."""
    top = top or service.capacity(serving.max_batch, serving.instances)
    rates = [top * 16 ** (i / (points - 1) - 1) for i in range(points)]
    return [{"qps": r, "percentile_ms": round(p.percentile_ms, 4), "valid": p.valid}
            for r in rates
            for p in [predict(service, serving, r, budget_ms, percentile, duration_s,
                              min_queries)]]
