"""Comparison of stored runs as data: ratios, bootstrap intervals, verdicts. No formatting.

Runs are ``RunRecord``s of any schema version (a v1 run compares with a v2 run through
its migration). Cells are matched by (model, variant, batch size, mode, device, scenario).
LoadGen scenario cells compare LoadGen's own figures (latency percentiles, samples/s); a
latency ratio's interval comes from the system under test's per-sample latencies,
centred on LoadGen's ratio; samples/s has no interval. A cell that was VALID and is
INVALID is a regression, whatever its figures.
For each matched cell and metric, the ratio is candidate / baseline (for latencies, above
1 is slower; for throughput, above 1 is faster). Its 95% interval comes from resampling
both runs' raw samples (``measure.stats.bootstrap``, the same function as a run's own
intervals); a change is called only when the interval excludes "no change" and the ratio
is beyond the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from densebench.errors import ConfigError, StoreError
from densebench.measure.stats import bootstrap, bootstrap_processes

METRICS = ("p50", "p90", "p99", "throughput")
_PCT = {"p50": 50, "p90": 90, "p99": 99}


@dataclass
class CellComparison:
    model: str
    variant: str
    batch_size: int
    mode: str
    device: str
    scenario: str
    run: str  # candidate run id
    metric: str
    baseline: float | None
    candidate: float | None
    ratio: float | None
    ci: tuple[float, float] | None
    verdict: str  # faster | slower | no significant change | not comparable
    values: dict = field(default_factory=dict)  # every metric: (baseline, candidate, ratio)
    note: str | None = None  # LoadGen: a change of verdict (VALID -> INVALID)


@dataclass
class Comparison:
    baseline: str
    runs: list[str]
    metric: str
    threshold: float
    cells: list[CellComparison]
    unmatched: list[dict]
    environment_warnings: list[str]
    geomean: dict[str, float | None]

    @property
    def regressions(self) -> list[CellComparison]:
        return [c for c in self.cells if c.verdict == "slower"]

    def to_dict(self) -> dict:
        return asdict(self)


def _key(c):
    """model, variant, batch size, mode, device, scenario (and a sweep's other varying
    axes): the cell key less its host."""
    return c.key().without_host()


def _stat(samples: np.ndarray, metric: str, batch: int, axis=None):
    if metric == "throughput":
        return batch * 1e3 / samples.mean(axis=axis)
    return np.percentile(samples, _PCT[metric], axis=axis)


def ratio_interval(base: np.ndarray, cand: np.ndarray, metric: str, batch: int, *,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of stat(cand) / stat(base), resampling each run."""
    return bootstrap([base, cand], lambda b, c: _stat(c, metric, batch, axis=1)
                     / _stat(b, metric, batch, axis=1), resamples=resamples, seed=seed)


def process_ratio_interval(base: list, cand: list, metric: str, batch: int
                           ) -> tuple[float, float] | None:
    """The same ratio, resampling each run's worker processes, then their iterations;
    widened to Welch's t interval on the processes' own figures where that is wider.

    With a handful of processes a bootstrap sees only a few distinct resamples and
    understates the spread between them (3 processes: 10); the t interval on the
    log of each process's figure carries the small-sample penalty (t = 2.78 at 4 degrees
    of freedom, not 1.96), so two runs of one configuration are not called different
    because three processes happened to land apart."""
    boot = bootstrap_processes([base, cand], lambda b, c: _stat(c, metric, batch, axis=1)
                               / _stat(b, metric, batch, axis=1))
    t = _welch_ratio_interval(base, cand, metric, batch)
    if boot is None or t is None:
        return boot or t
    return min(boot[0], t[0]), max(boot[1], t[1])


def _welch_ratio_interval(base: list, cand: list, metric: str, batch: int
                          ) -> tuple[float, float] | None:
    b = np.log([float(_stat(np.asarray(g, dtype=float), metric, batch)) for g in base if len(g)])
    c = np.log([float(_stat(np.asarray(g, dtype=float), metric, batch)) for g in cand if len(g)])
    if len(b) < 2 or len(c) < 2:
        return None
    vb, vc = b.var(ddof=1) / len(b), c.var(ddof=1) / len(c)
    se = math.sqrt(vb + vc)
    if se == 0:
        return None
    df = (vb + vc) ** 2 / (vb ** 2 / (len(b) - 1) + vc ** 2 / (len(c) - 1))
    d = float(c.mean() - b.mean())
    t = _t975(df)
    return math.exp(d - t * se), math.exp(d + t * se)


# Student's t, two-sided 95%, by degrees of freedom (Welch's df is rounded down)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def _t975(df: float) -> float:
    """The table's value at the largest tabled df not above ``df`` (never too narrow)."""
    for k in sorted(_T975, reverse=True):
        if df >= k:
            return _T975[k]
    return _T975[1]


def _verdict(metric: str, ratio: float, ci, threshold: float) -> str:
    if ci is None:
        return "no significant change" if abs(ratio - 1) <= threshold else (
            "not comparable")
    lo, hi = ci
    if metric == "throughput":
        if lo > 1 and ratio > 1 + threshold:
            return "faster"
        if hi < 1 and ratio < 1 - threshold:
            return "slower"
    else:
        if lo > 1 and ratio > 1 + threshold:
            return "slower"
        if hi < 1 and ratio < 1 - threshold:
            return "faster"
    return "no significant change"


def _supported(c, metric: str) -> bool:
    st = c.stats or {}
    return metric == "throughput" or st.get(f"{metric}_ms") is not None


def environment_differences(records: list) -> list[str]:
    """What differs between the runs' environments that could move a number."""
    runs = [r.data for r in records]

    def facts(r: dict) -> dict:
        e = r.get("environment", {})
        s = e.get("settings", {})
        f = {
            "CPU": e.get("cpu", {}).get("model"),
            "CPU flags": " ".join(e.get("cpu", {}).get("flags", [])),
            "cores": e.get("cpu", {}).get("logical_cores"),
            "GPU": ", ".join(g.get("name", "") for g in e.get("gpus", [])) or "none",
            "GPU driver": ", ".join(str(g.get("driver")) for g in e.get("gpus", [])) or "none",
            "threads": r.get("threads"),
        }
        for k, v in (e.get("libraries") or {}).items():
            f[k] = v
        for k in ("tf32_matmul", "tf32_cudnn", "cudnn_benchmark", "float32_matmul_precision"):
            f[k] = s.get(k)
        return f

    base = facts(runs[0])
    out = []
    for r in runs[1:]:
        other = facts(r)
        for k in base:
            if k in ("densebench",):
                continue
            if base.get(k) != other.get(k):
                out.append(f"{k} differs: {base.get(k)} (baseline {runs[0]['id']}) vs "
                           f"{other.get(k)} ({r['id']})")
    return out


def compare_runs(runs: list, metric: str = "p50", threshold: float = 0.05) -> Comparison:
    """Compare runs[1:] against runs[0] (``RunRecord``s)."""
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}: choose from {', '.join(METRICS)}")
    if not 0 <= threshold < 1:
        raise ConfigError(f"--threshold must be between 0 and 1 (0.05 is 5%), got {threshold}")
    if len(runs) < 2:
        raise ConfigError("compare needs at least two runs: a baseline and a candidate")
    from densebench.results.repeats import merged

    base_run = runs[0]
    base_cells = {_key(c): c for c in merged(base_run.cells) if _comparable(c)}
    single = set()  # runs whose cells come from one worker process each
    cells: list[CellComparison] = []
    unmatched: list[dict] = []
    matched_base: set = set()
    geomean: dict[str, float | None] = {}
    settings_warnings: list[str] = []
    for run in runs[1:]:
        logs = []
        for c in merged(run.cells):
            if not _comparable(c):
                continue
            k = _key(c)
            b = base_cells.get(k)
            if b is None:
                unmatched.append({"run": run.id, **k.named(), "reason": "not in the baseline"})
                continue
            matched_base.add(k)
            bs = c.batch_size
            bx = np.asarray(b.samples_ms, dtype=float)
            cx = np.asarray(c.samples_ms, dtype=float)
            served = b.loadgen is not None or c.loadgen is not None
            values = _loadgen_values(b, c) if served else _sample_values(b, c, bx, cx, bs)
            note = None
            if metric in values:
                bv, cv, ratio = values[metric]
                ci = None
                if not served:
                    bp, cp = b.process_samples or [], c.process_samples or []
                    if len(bp) > 1 and len(cp) > 1:
                        ci = process_ratio_interval(bp, cp, metric, bs)
                    else:
                        ci = ratio_interval(bx, cx, metric, bs)
                        single |= {r for r, ps in ((base_run.id, bp), (run.id, cp))
                                   if len(ps) < 2}
                elif metric != "throughput" and len(bx) > 1 and len(cx) > 1:
                    sut = float(_stat(cx, metric, 1) / _stat(bx, metric, 1))
                    raw = ratio_interval(bx, cx, metric, 1)
                    ci = (raw[0] * ratio / sut, raw[1] * ratio / sut) if raw else None
                verdict = _verdict(metric, ratio, ci, threshold)
                logs.append(math.log(ratio))
            else:
                bv = cv = ratio = None
                ci = None
                verdict = "not comparable"
            for which, cell, rid in (("baseline", b, base_run.id), ("candidate", c, run.id)):
                if cell.busy:
                    settings_warnings.append(
                        f"{c.variant} batch {bs} {c.mode}: the {which} ({rid}) was measured on "
                        f"a busy host (others used {cell.host_load.get('others_cores')} "
                        "cores): its numbers include that contention")
            differ = _settings_differ(b, c) if served else ""
            if differ:
                settings_warnings.append(
                    f"{c.variant} batch {bs} {c.scenario} ({run.id}): scenario settings "
                    f"differ: {differ}")
            bval, cval = (b.loadgen or {}).get("validity"), (c.loadgen or {}).get("validity")
            if bval and cval and bval != cval:
                note = f"{bval} -> {cval}"
                if bval == "VALID":
                    verdict = "slower"  # a configuration that no longer meets its bound
            cells.append(CellComparison(
                model=k.model, variant=k.variant, batch_size=bs, mode=k.mode,
                device=k.device, scenario=k.scenario, run=run.id, metric=metric,
                baseline=bv, candidate=cv, ratio=ratio, ci=ci, verdict=verdict,
                values=values, note=note))
        geomean[run.id] = math.exp(sum(logs) / len(logs)) if logs else None
    for k in base_cells:
        if k not in matched_base:
            unmatched.append({"run": base_run.id, **k.named(), "reason": "only in the baseline"})
    if not cells:
        raise StoreError(
            "the runs have no cell in common (matched by model, variant, batch size, mode, "
            "device and scenario): nothing to compare"
        )
    for rid in sorted(single):
        settings_warnings.append(
            f"run {rid} measured each cell in one worker process: its intervals know only the "
            "noise between iterations, not between runs (measure with --repeats 3)")
    return Comparison(
        baseline=base_run.id, runs=[r.id for r in runs[1:]], metric=metric,
        threshold=threshold, cells=cells, unmatched=unmatched,
        environment_warnings=environment_differences(runs) + settings_warnings,
        geomean=geomean,
    )


_IGNORED_SETTINGS = {"threads_per_instance"}


def _settings_differ(b, c) -> str:
    """What differs between two matched cells' scenario settings (offered QPS, say)."""
    keys = (set(b.scenario_settings) | set(c.scenario_settings)) - _IGNORED_SETTINGS
    diffs = [f"{k} {b.scenario_settings.get(k)} vs {c.scenario_settings.get(k)}"
             for k in sorted(keys) if b.scenario_settings.get(k) != c.scenario_settings.get(k)]
    return ", ".join(diffs)


def _comparable(c) -> bool:
    return c.ok and bool(c.samples_ms or (c.loadgen and c.stats))


def _sample_values(b, c, bx, cx, bs) -> dict:
    values = {}
    for m in METRICS:
        if _supported(b, m) and _supported(c, m) and len(bx) and len(cx):
            bv, cv = float(_stat(bx, m, bs)), float(_stat(cx, m, bs))
            values[m] = (bv, cv, cv / bv)
    return values


def _loadgen_values(b, c) -> dict:
    """LoadGen's own figures: its latency percentiles and samples per second."""
    values = {}
    for m in METRICS:
        key = "throughput" if m == "throughput" else f"{m}_ms"
        bv, cv = (b.stats or {}).get(key), (c.stats or {}).get(key)
        if bv and cv:
            values[m] = (float(bv), float(cv), float(cv) / float(bv))
    return values


def rows(comp: Comparison) -> list[dict]:
    """Flat rows for CSV / JSON / tables."""
    out = []
    for c in comp.cells:
        row = {"run": c.run, "model": c.model, "variant": c.variant,
               "batch_size": c.batch_size, "mode": c.mode, "device": c.device,
               "scenario": c.scenario, "metric": c.metric, "baseline": c.baseline,
               "candidate": c.candidate,
               "ratio": c.ratio, "ci_low": c.ci[0] if c.ci else None,
               "ci_high": c.ci[1] if c.ci else None, "verdict": c.verdict, "note": c.note}
        for m in METRICS:
            v = c.values.get(m)
            row[f"{m}_baseline"] = v[0] if v else None
            row[f"{m}_candidate"] = v[1] if v else None
            row[f"{m}_ratio"] = v[2] if v else None
        out.append(row)
    return out
