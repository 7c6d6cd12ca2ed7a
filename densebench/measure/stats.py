"""Statistics over raw latency samples: one function, used for every number shown.

Tail percentiles are reported only when the sample supports them: MLPerf's early-stopping
counts (64 queries for p90, 662 for p99); other percentiles use the same rule (99%
confidence that the true percentile is no worse than reported, with MLPerf's tolerance).
"""

from __future__ import annotations

import math

import numpy as np

PERCENTILES = (50, 90, 95, 99)
NOISY_COV = 0.10  # coefficient of variation above which a measurement is flagged noisy
_MLPERF_MIN_SAMPLES = {90.0: 64, 99.0: 662}
CONFIDENCE = 0.99
TOLERANCE = math.log(2)  # fits MLPerf's published counts


def min_samples(percentile: float) -> int:
    """Samples needed before ``percentile`` (e.g. 99) is reported as a number."""
    p = float(percentile)
    if p in _MLPERF_MIN_SAMPLES:
        return _MLPERF_MIN_SAMPLES[p]
    q = 1.0 - (1.0 - p / 100.0) * TOLERANCE
    return math.ceil(math.log(1.0 - CONFIDENCE) / math.log(q))


def percentile_supported(percentile: float, n: int) -> bool:
    """The median is always shown (with its bootstrap interval); tails need enough samples."""
    if percentile <= 50:
        return n >= 1
    return n >= min_samples(percentile)


def bootstrap(samples: list[np.ndarray], stat, *, resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap interval at ``level`` of ``stat(*resampled)``.

    Each array in ``samples`` is resampled independently (with replacement, its own size);
    ``stat`` receives one ``(k, n_i)`` matrix per array and returns ``k`` values. This is
    the one bootstrap: a run's p50 and throughput intervals and compare's ratio intervals
    all come from it. ``None`` when an array has fewer than two values.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in samples]
    if not arrays or any(len(a) < 2 for a in arrays):
        return None
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 4_000_000 // max(len(a) for a in arrays)))
    values = []
    done = 0
    while done < resamples:
        k = min(chunk, resamples - done)
        values.append(np.asarray(stat(*[a[rng.integers(0, len(a), size=(k, len(a)))]
                                        for a in arrays])))
        done += k
    v = np.concatenate(values)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))


def bootstrap_ci(samples: np.ndarray, stat, *, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Interval of ``stat`` (a function over axis 1) of one sample."""
    return bootstrap([samples], stat, resamples=resamples, seed=seed, level=level)


def summarize(samples_ms, batch_size: int) -> dict:
    """Statistics of per-iteration latencies (ms) for batches of ``batch_size`` images.

    Unsupported percentiles are ``None`` and listed in ``unsupported``.
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("no samples")
    mean = float(x.mean())
    stdev = float(x.std(ddof=1)) if n > 1 else 0.0
    out: dict = {
        "n": n,
        "mean_ms": mean,
        "stdev_ms": stdev,
        "cov": stdev / mean if mean > 0 else 0.0,
        "min_ms": float(x.min()),
        "max_ms": float(x.max()),
        "total_s": float(x.sum() / 1e3),
        "batch_size": batch_size,
    }
    unsupported = []
    for p in PERCENTILES:
        if percentile_supported(p, n):
            out[f"p{p}_ms"] = float(np.percentile(x, p))
        else:
            out[f"p{p}_ms"] = None
            unsupported.append(f"p{p} (needs {min_samples(p)} samples)")
    out["unsupported"] = unsupported
    # throughput: images over the time spent computing them
    out["throughput"] = batch_size * n / (x.sum() / 1e3)
    out["p50_ci_ms"] = bootstrap_ci(x, lambda m: np.median(m, axis=1)) if out["p50_ms"] else None
    tp = bootstrap_ci(x, lambda m: m.mean(axis=1))
    out["throughput_ci"] = (batch_size * 1e3 / tp[1], batch_size * 1e3 / tp[0]) if tp else None
    out["noisy"] = out["cov"] > NOISY_COV
    return out


def bootstrap_processes(runs: list[list[np.ndarray]], stat, *, resamples: int = 2000,
                        seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Two-level bootstrap: for each run, resample its worker processes (with replacement),
    then the iterations within each chosen process; ``stat`` gets one ``(1, n)`` pooled
    resample per run and returns one value. The interval so includes what differs between
    processes (compilation, memory layout, the host's drift), not only iteration noise."""
    runs = [[np.asarray(g, dtype=np.float64) for g in groups if len(g)] for groups in runs]
    if any(len(groups) < 1 for groups in runs):
        return None
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        pooled = []
        for groups in runs:
            picks = rng.integers(0, len(groups), len(groups))
            pooled.append(np.concatenate(
                [groups[j][rng.integers(0, len(groups[j]), len(groups[j]))] for j in picks]
            )[None, :])
        values[i] = np.asarray(stat(*pooled)).ravel()[0]
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


DISAGREE_FACTOR = 2.0  # processes disagree when their spread is this many times the noise


def summarize_processes(groups: list, batch_size: int) -> dict:
    """``summarize`` over several worker processes' samples: the statistics of all samples
    pooled, intervals from ``bootstrap_processes``, and how much the processes disagreed.

    ``processes_disagree`` flags a spread of the processes' medians beyond what their own
    iteration noise explains (more than ``DISAGREE_FACTOR`` times the typical half-width
    of a process's p50 interval, and more than 1%).
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    out = summarize(np.concatenate(groups), batch_size)
    out["processes"] = len(groups)
    medians = [float(np.median(g)) for g in groups]
    out["process_p50_ms"] = medians
    out["process_throughput"] = [batch_size * len(g) / (g.sum() / 1e3) for g in groups]
    if len(groups) < 2:
        out["between_process_spread"] = None
        out["processes_disagree"] = False
        return out
    if out["p50_ms"] is not None:
        out["p50_ci_ms"] = bootstrap_processes([groups], lambda m: np.median(m, axis=1))
    tp = bootstrap_processes([groups], lambda m: m.mean(axis=1))
    out["throughput_ci"] = (batch_size * 1e3 / tp[1], batch_size * 1e3 / tp[0]) if tp else None
    spread = (max(medians) - min(medians)) / float(np.mean(medians))
    within = []
    for g in groups:
        ci = bootstrap_ci(g, lambda m: np.median(m, axis=1), resamples=500)
        if ci is not None:
            within.append((ci[1] - ci[0]) / 2 / float(np.median(g)))
    noise = float(np.median(within)) if within else 0.0
    out["between_process_spread"] = spread
    out["within_process_halfwidth"] = noise
    out["processes_disagree"] = spread > max(DISAGREE_FACTOR * noise, 0.01)
    return out
