"""`densebench search` as a library: what to deploy to serve Poisson load with a latency
percentile under a budget, found by predicting, then verifying.

1. **Screen** (a job per variant, on every host): prepare the variant for each split of
   the cores into instances x threads (1 x 2 and 2 x 1 on 2 cores), and time its calls at
   every batch size the batcher can form, with all instances busy at once (short closed
   loops: about ``screen_time`` seconds a size). The same job measures the variant's
   parity with eager fp32 (and top-1 with labelled ``data``).
2. **Admit**: a variant beyond its precision's parity threshold, or whose top-1 drop's
   upper bound exceeds ``max_accuracy_drop``, is left out, and the run says why.
3. **Predict** (here, in a second or two): for every configuration (variant, split, max
   batch, batch timeout), the highest Poisson rate whose simulated LoadGen Server runs
   pass (``queueing.py``: densebench's own batcher replayed with the measured times).
4. **Verify** the ``verify`` best predictions of each host with real LoadGen Server runs
   on that host, starting at the prediction and bracketing around it to ``precision``;
   every probe is stored with what the simulation predicted for it, and each verified
   configuration with the prediction's error.
5. **Answer**: the best verified configuration per host and overall; with
   ``target_qps``, the replicas each host needs; with ``prices``, the cost per million
   images at the budget, by which the hosts are ranked.

The search stops at ``max_time`` with what it has found: nothing starts after it, and a
LoadGen run in progress is cut there (LoadGen's ``max_duration``).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from densebench import queueing
from densebench.cost import price_for, usd_per_million
from densebench.errors import bad_setting, check_threads, interrupted, one_line
from densebench.executors import Task, get_executor
from densebench.parity import ParityAccumulator, threshold, within
from densebench.prepare import ModelRef, prepare_variant
from densebench.processes import usable_cores
from densebench.results.schema import Cell

Emit = Callable[[dict], None]
# INVALID at this fraction of the predicted rate means the latency is not queueing (one
# sample is slow, or threads contend): lower loads would not help, and probes there are
# long (a p99 needs 662 queries whatever the rate)
LOWEST_FRACTION = 1 / 4
DEFAULT_MAX_BATCH = (1, 4, 8)
DEFAULT_TIMEOUTS_MS = (0.0, 2.0)  # for max batches above 1
PARITY_SAMPLES = 32  # screened for parity (and accuracy: the whole library with labels)
MAX_INSTANCES = 8
SATURATE_S = 0.5  # the saturating Server run that measures the harness's cost (seconds)
CONFIRM_FACTOR = 2.0  # the answer is run again for this many probe durations
CONFIRM_TRIES = 3  # confirmation runs, each a step of the precision lower than the last


@dataclass
class SearchConfig:
    latency_budget_ms: float
    percentile: float = 99.0
    variants: list[str] | None = None  # None: every candidate (the quick set)
    max_batch: list[int] = field(default_factory=lambda: list(DEFAULT_MAX_BATCH))
    batch_timeout_ms: list[float] | None = None  # None: 0 and 2 ms above max batch 1
    instances: list[int] | None = None  # None: every split of the cores
    threads: int | None = None  # per instance; None: the cores shared out
    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    device: str = "auto"
    oversubscribe: bool = False
    samples: int = 256
    data: str = "synthetic"
    precision: float = 0.05
    probe_duration: float = 10.0  # seconds, at least, per probe
    min_queries: int | None = None  # per probe; default: what the percentile needs
    start_qps: float | None = None  # first probe; default: the prediction
    max_time: float | None = None  # seconds for the whole search
    verify: int = 2  # configurations verified with LoadGen per host
    verify_all: bool = False  # also those predicted below what their host verified
    screen_time: float = 0.5  # seconds of closed loop per batch size and split
    max_probes: int = 8  # per verified configuration
    target_qps: float | None = None  # replicas needed for this load
    prices: dict[str, float] = field(default_factory=dict)  # host -> USD per hour
    max_accuracy_drop: float = 0.01  # top-1, with labelled data: upper end of its interval
    # the JPEG path: served from JPEG bytes (densebench.imaging), decode workers beside
    # the instances, counted against the cores
    input: str | None = None  # jpeg:PATH | imagefolder:PATH | jpeg:synthetic[:WxH]
    decoder: str = "pil"
    decode_workers: int = 0
    executor: str = "subprocess"
    address: str | None = None  # ray: the cluster
    timeout: float = 3600.0
    name: str | None = None

    def __post_init__(self):
        from densebench.scenarios.loadgen import check_cores, require_loadgen

        if not self.latency_budget_ms > 0 or not math.isfinite(self.latency_budget_ms):
            raise bad_setting("latency_budget_ms", f"must be a positive duration, got "
                              f"{self.latency_budget_ms} ms")
        if not 0 < self.percentile < 100:
            raise bad_setting("percentile", f"must be between 0 and 100 (exclusive), got "
                              f"{self.percentile}")
        if self.variants is not None and not self.variants:
            raise bad_setting("variants", "is empty: name at least one variant")
        if not self.max_batch:
            raise bad_setting("max_batch", "is empty: name at least one")
        for b in self.max_batch:
            if not isinstance(b, int) or b < 1:
                raise bad_setting("max_batch", f"must be at least 1, got {b}")
        for n in self.instances or []:
            if not isinstance(n, int) or n < 1:
                raise bad_setting("instances", f"must be at least 1, got {n}")
        for t in self.batch_timeout_ms or []:
            if not t >= 0:
                raise bad_setting("batch_timeout_ms", f"must not be negative, got {t} ms")
        check_threads(self.threads)
        for setting, low in (("precision", 0), ("max_accuracy_drop", 0)):
            v = getattr(self, setting)
            if not low < v < 1:
                raise bad_setting(setting, f"must be between 0 and 1 (0.05 is 5%), got {v}")
        for setting in ("probe_duration", "max_time", "start_qps", "target_qps",
                        "screen_time"):
            v = getattr(self, setting)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise bad_setting(setting, f"must be positive, got {v}")
        for setting in ("samples", "verify", "max_probes"):
            if getattr(self, setting) < 1:
                raise bad_setting(setting, f"must be at least 1, got {getattr(self, setting)}")
        for host, usd in self.prices.items():
            if not (usd > 0 and math.isfinite(usd)):
                raise bad_setting("price", f"for {host} must be a positive USD per hour, "
                                  f"got {usd}")
        for n in self.instances or []:
            check_cores(n, self.threads, self.oversubscribe)
        self._check_jpeg()
        require_loadgen()
        get_executor(self.executor)

    def _check_jpeg(self) -> None:
        from densebench.imaging.decoders import get_decoder
        from densebench.imaging.sources import parse

        if self.input is not None:
            parse(self.input)
        get_decoder(self.decoder)
        if not isinstance(self.decode_workers, int) or not 0 <= self.decode_workers <= 256:
            raise bad_setting("decode_workers", f"must be a whole number from 0 to 256, got "
                              f"{self.decode_workers}")
        if self.input is None and (self.decode_workers or self.decoder != "pil"):
            raise bad_setting("decode_workers" if self.decode_workers else "decoder",
                              "is a setting of the JPEG path: give its images with --input "
                              "(jpeg:synthetic, say)")

    def model_ref(self) -> ModelRef:
        return ModelRef(self.model, self.weights, self.num_classes, self.image_size)

    @property
    def mode(self) -> str:
        return "e2e-jpeg" if self.input is not None else "e2e"

    def library(self, prepared):
        """The sample library every screening and probe serves: tensors, or JPEG bytes that
        the instances decode, with the decode workers of the JPEG path."""
        from densebench.scenarios.loadgen import SampleLibrary

        library = SampleLibrary.build(prepared, self.samples, self.data, self.mode,
                                      {"input": self.input, "decoder": self.decoder})
        library.use_workers(self.decode_workers)
        return library

    def splits(self, cores: int, device: str = "cpu") -> list[tuple[int, int]]:
        """(instances, threads per instance) to screen on a host with ``cores`` (less the
        JPEG path's decode workers, which take cores of their own)."""
        if device == "cpu" and self.decode_workers:
            cores = max(1, cores - self.decode_workers)
        if self.instances:
            return [(n, self.threads or max(1, cores // n)) for n in self.instances]
        if device != "cpu":  # a GPU: streams, not a split of the cores
            return [(1, self.threads or cores), (2, self.threads or max(1, cores // 2))]
        out, n = [], 1
        while n <= min(cores, MAX_INSTANCES):
            t = self.threads or cores // n
            if n * t <= cores or self.oversubscribe:
                out.append((n, t))
            n *= 2
        return out

    def batch_sizes(self) -> list[int]:
        """What screening times: every power of two up to the largest max batch, and each."""
        top = max(self.max_batch)
        sizes = {b for b in self.max_batch}
        b = 1
        while b <= top:
            sizes.add(b)
            b *= 2
        return sorted(sizes)

    def timeouts(self, max_batch: int) -> list[float]:
        if max_batch == 1:
            return [0.0]  # nothing to wait for
        chosen = self.batch_timeout_ms if self.batch_timeout_ms is not None else \
            DEFAULT_TIMEOUTS_MS
        return [t for t in chosen if t < self.latency_budget_ms] or [0.0]

    def queries(self) -> int:
        from densebench.scenarios.loadgen import default_min_queries

        return self.min_queries or default_min_queries(self.percentile)


# ============================================================================ 1. screening


@dataclass
class ScreenTask(Task):
    """One variant's screening on one host: the payload of a screening job."""

    TARGET: ClassVar[str] = "densebench.search:screen_variant"
    config: dict  # SearchConfig, asdict
    variant: str
    device: str
    cells: list[dict]  # the one planned screening cell
    threads: int | None = None  # the host's cores for the job (a cluster node's share)
    deadline: float | None = None


def screen_variant(payload: dict, emit: Emit) -> None:
    from densebench.environment import host_identity
    from densebench.pipeline import worker_identity
    from densebench.variants import get_variant

    task = ScreenTask.from_payload(payload)
    cfg = SearchConfig(**task.config)
    variant = get_variant(task.variant)
    planned = Cell.from_dict({**task.cells[0], "host": host_identity()})
    cores = task.threads or usable_cores()
    sizes = cfg.batch_sizes()

    def phase(name: str) -> None:
        emit({"event": "phase", "variant": variant.label, "phase": name})

    splits, loaded, library, parity, accuracy, cold = [], None, None, None, None, {}
    try:
        for n, t in cfg.splits(cores, task.device):
            if task.deadline is not None and time.time() >= task.deadline:
                break
            prepared = prepare_variant(variant, cfg.model_ref(), task.device, t,
                                       loaded=loaded, phase=phase)
            loaded, cold = prepared.loaded, cold or dict(prepared.cold_start)
            if library is None:
                phase("sample library")
                library = cfg.library(prepared)
                phase("parity")
                parity, accuracy = screen_answers(prepared.session, library)
            sessions = prepared.sessions(n)
            phase(f"screen {n} x {t}: batch {', '.join(map(str, sizes))}")
            times = service_times(sessions, library, sizes, cfg.screen_time)
            splits.append({"instances": n, "threads": t, "service_ms": times,
                           "options": dict(sessions[0].options)})
            del sessions, prepared
    except Exception as e:
        emit({"event": "cell", "cell": planned.failed(one_line(e)).to_dict()})
        return
    if not splits:
        emit({"event": "cell", "cell": planned.failed(
            "not screened: time limit (max_time) reached").to_dict()})
        return
    b1 = splits[0]["service_ms"][str(sizes[0])]
    cell = Cell.from_dict({
        **planned.to_dict(), "status": "ok", "parity": parity, "accuracy": accuracy,
        "cold_start": cold, "threads": cores, "worker": worker_identity(cores),
        "search": {"phase": "screen", "cores": cores, "splits": splits, "sizes": sizes,
                   "one_sample_ms": float(np.median(b1))},
    })
    emit({"event": "cell", "cell": cell.to_dict()})


def screen_answers(session, library) -> tuple[dict, dict | None]:
    """Parity with eager fp32 on the library's first samples (all of them, and top-1,
    where the library has labels)."""
    import torch

    n = library.count if library.labels is not None else min(library.count, PARITY_SAMPLES)
    par, outs = ParityAccumulator(), []
    for i in range(0, n, 8):
        out = library.infer(session, list(range(i, min(n, i + 8)))).float()
        par.add(out, library.reference[i:i + 8])
        outs.append(out)
    if library.labels is None:
        return par.result(), None
    got = torch.cat(outs).argmax(1)
    labels = library.labels[:n]
    ref = library.reference[:n].argmax(1)
    return par.result(), {"images": n, "top1": float((got == labels).float().mean()),
                          "reference_top1": float((ref == labels).float().mean()),
                          "drop_upper": drop_upper(ref == labels, got == labels)}


def drop_upper(ref_correct, got_correct, z: float = 1.959964) -> float:
    """The upper end of the 95% interval of top-1's drop, paired over the same images."""
    d = ref_correct.float() - got_correct.float()
    n = len(d)
    mean = float(d.mean())
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else 1.0
    return mean + z * max(se, 1.0 / n)


def service_times(sessions, library, sizes: list[int], min_time: float) -> dict:
    """Milliseconds per call at each batch size, every instance calling at once (as they
    do near capacity): at least ``min_time`` seconds and 3 calls an instance per size."""
    out = {}
    for b in sizes:
        x = [i % library.count for i in range(b)]
        for s in sessions:  # each shape's first call (a compile, an allocation) untimed
            library.infer(s, x)
        calls: list[list[float]] = [[] for _ in sessions]
        start = threading.Barrier(len(sessions))
        threads = [threading.Thread(target=_calls, args=(library, s, x, start, min_time,
                                                         into))
                   for s, into in zip(sessions, calls, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[str(b)] = [round(v, 4) for c in calls for v in c]
    return out


def _calls(library, session, x: list[int], start: threading.Barrier, min_time: float,
           into: list) -> None:
    """One instance's closed loop: answers the samples ``x`` with ``session`` for
    ``min_time`` seconds and at least 3 times, once every instance is ready, into ``into``
    (ms; on the JPEG path each call decodes its batch too)."""
    start.wait()
    t_end = time.perf_counter() + min_time
    while time.perf_counter() < t_end or len(into) < 3:
        t0 = time.perf_counter()
        library.infer(session, x)
        into.append((time.perf_counter() - t0) * 1e3)


# ============================================================================ 4. verifying


@dataclass
class VerifyTask(Task):
    """One predicted configuration, verified with LoadGen Server runs on its host."""

    TARGET: ClassVar[str] = "densebench.search:verify_configuration"
    config: dict  # SearchConfig, asdict
    variant: str
    device: str
    threads: int  # per instance
    instances: int
    max_batch: int
    batch_timeout_ms: float
    service_ms: dict  # the screened times, by batch size (what each probe is predicted from)
    predicted_qps: float
    cells: list[dict]  # the one planned cell
    run_dir: str
    deadline: float | None = None


def verify_configuration(payload: dict, emit: Emit) -> None:
    from densebench.environment import host_identity
    from densebench.pipeline import worker_identity
    from densebench.scenarios.loadgen import (
        Server,
        require_loadgen,
        verdict,
        warm_up,
    )
    from densebench.variants import get_variant

    lg = require_loadgen()
    task = VerifyTask.from_payload(payload)
    cfg = SearchConfig(**task.config)
    variant = get_variant(task.variant)
    planned = Cell.from_dict({**task.cells[0], "host": host_identity()})
    serving = queueing.Serving(task.max_batch, task.batch_timeout_ms, task.instances)
    service = queueing.ServiceTimes.from_dict(task.service_ms)
    workdir, deadline = Path(task.run_dir), task.deadline
    label = config_label(task.variant, task.max_batch, task.batch_timeout_ms,
                         task.instances, task.threads)

    def phase(name: str) -> None:
        emit({"event": "phase", "variant": label, "phase": name})

    try:
        prepared = prepare_variant(variant, cfg.model_ref(), task.device, task.threads,
                                   phase=phase)
        phase("sample library")
        library = cfg.library(prepared)
        sessions = prepared.sessions(task.instances)
        phase("warm-up")
        timing = warm_up(sessions, library, task.max_batch)
    except Exception as e:
        emit({"event": "cell", "cell": planned.failed(one_line(e)).to_dict()})
        return
    scenario = Server()
    min_queries = cfg.queries()
    probes: list[dict] = []
    passed: list[dict] = []  # the VALID runs, with LoadGen's detail
    stopped = None

    def settings(qps: float, duration_s: float, queries: int | None) -> dict:
        return {"samples": cfg.samples, "max_batch": task.max_batch,
                "batch_timeout_ms": task.batch_timeout_ms, "instances": task.instances,
                "threads_per_instance": task.threads,
                "duration_ms": int(duration_s * 1000), "min_query_count": queries,
                "official": False, "accuracy": False, "data": cfg.data, "target_qps": qps,
                "max_duration_ms": int(max(1.0, deadline - time.time()) * 1000)
                if deadline is not None else None,
                "latency_budget_ms": cfg.latency_budget_ms, "percentile": cfg.percentile,
                "samples_per_query": None, "expected_qps": None}

    # The harness's own cost: LoadGen's callbacks, the batcher's queue and the answers
    # cost tens of microseconds a query, hold the GIL, and are not in the screened calls.
    # A short Server run at twice the screened capacity keeps every instance busy with
    # full batches: the rate it completes at, against the screened capacity, is the factor
    # every call takes longer under LoadGen. The first probe is at the prediction from
    # the calls scaled by it (for DenseNet about 1; for a sub-millisecond model, several).
    capacity = service.capacity(task.max_batch, task.instances)
    saturated = None
    try:
        phase(f"saturate at {2 * capacity:.4g} QPS: the harness's cost per query")
        out = workdir / "loadgen" / f"search-{_safe(label)}" / "saturate"
        s = settings(2 * capacity, SATURATE_S, 1)
        detail, _, _ = scenario.run_loadgen(lg, sessions, library, s, timing, out)
        saturated = scenario.figures(detail, s)["completed_samples_per_sec"]
    except Exception as e:  # a probe would fail the same way: it is said there
        phase(f"saturation run failed: {one_line(e)}")
    factor = max(1.0, capacity / saturated) if saturated else 1.0
    calibrated_service = service.scaled(factor)
    calibrated, floor = task.predicted_qps, LOWEST_FRACTION * task.predicted_qps
    if factor > 1.0:
        p = queueing.max_rate(calibrated_service, serving, cfg.latency_budget_ms,
                              cfg.percentile, cfg.probe_duration, min_queries)
        # none: not even a trickle meets the budget at that cost; one probe there says so
        calibrated = p.rate if p else floor
        floor = min(floor, LOWEST_FRACTION * calibrated) if p else floor

    def probe(qps: float, duration_s: float | None = None) -> bool:
        confirm = duration_s is not None
        duration_s = duration_s or cfg.probe_duration
        s = settings(qps, duration_s, min_queries)
        phase(f"{'confirm' if confirm else 'probe'} {len(probes) + 1}: {qps:.4g} QPS"
              + (f" for {duration_s:g} s" if confirm else ""))
        out = workdir / "loadgen" / f"search-{_safe(label)}" / f"probe-{len(probes) + 1:02d}"
        out.mkdir(parents=True, exist_ok=True)
        library.reset_times()
        detail, batcher, wall = scenario.run_loadgen(lg, sessions, library, s, timing, out)
        v = verdict(detail, cfg.latency_budget_ms, cfg.percentile)
        fig = scenario.figures(detail, s)
        predicted = queueing.predict(service, serving, qps, cfg.latency_budget_ms,
                                     cfg.percentile, duration_s, min_queries)
        calibrated_p = queueing.predict(calibrated_service, serving, qps,
                                        cfg.latency_budget_ms, cfg.percentile,
                                        duration_s, min_queries)
        rec = {"combination": label, "variant": variant.label, "max_batch": task.max_batch,
               "batch_timeout_ms": task.batch_timeout_ms, "instances": task.instances,
               "threads": task.threads, "host": planned.host, "qps": qps, **v,
               "confirm": confirm, "duration_s": duration_s,
               "percentile_latency_ms": fig["percentile_latency_ms"],
               "early_stopping_ms": _early_stopping_ms(detail),
               "predicted": predicted.to_dict(), "calibrated": calibrated_p.to_dict(),
               "completed_qps": fig["completed_samples_per_sec"],
               "scheduled_qps": fig["scheduled_samples_per_sec"],
               "query_count": detail.get("result_query_count"), "wall_s": round(wall, 2),
               "batch_sizes": {str(k): n for k, n in sorted(batcher.batch_sizes.items())},
               "logs": str(out.relative_to(workdir)),
               "pipeline": library.stage_summary(batcher.batch_sizes)}
        probes.append(rec)
        emit({"event": "probe", "probe": rec})
        valid = v["validity"] == "VALID"
        if valid:
            passed.append({"probe": rec, "detail": detail, "settings": s})
        return valid

    def go_on() -> bool:
        nonlocal stopped
        if deadline is not None and time.time() >= deadline:
            stopped = "time limit (max_time) reached"
        elif len(probes) >= cfg.max_probes:
            stopped = f"{cfg.max_probes} probes (max_probes)"
        return stopped is None

    predicted = calibrated  # where verification starts and how far down it goes
    lo = hi = None  # highest VALID, lowest INVALID
    q = cfg.start_qps or predicted
    step = 1.25  # around the prediction first; doubled each step the bracket is not found
    while go_on():
        if probe(q):
            lo = q
            if hi is not None:
                break
            q *= step
        else:
            hi = q
            if lo is not None:
                break
            if q <= floor * 1.0001:
                stopped = (f"cannot meet p{cfg.percentile:g} <= {cfg.latency_budget_ms:g} ms "
                           f"even at {q:.3g} QPS ({q / task.predicted_qps:.0%} of the "
                           "predicted rate), where the latency is not queueing")
                break
            q = max(q / step, floor)
        step = min(step * step, 2.0)
    while lo is not None and hi is not None and hi / lo - 1 > cfg.precision and go_on():
        mid = math.sqrt(lo * hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    if stopped is None:
        stopped = "bracket within precision" if lo is not None and hi is not None else \
            "no bracket"
    # The answer must hold for longer than a probe: near the knee a queue that grows slowly
    # passes ten seconds and fails twenty. The highest VALID rate runs again for twice the
    # probe's duration; where that fails, it is the lowest INVALID, and the next run is a
    # step of the precision lower, until one holds or the tries or the time run out.
    confirm_s = CONFIRM_FACTOR * cfg.probe_duration
    confirmed = None
    for _ in range(CONFIRM_TRIES if lo is not None else 0):
        if deadline is not None and time.time() >= deadline:
            stopped += "; time limit before the answer was confirmed"
            break
        if probe(lo, confirm_s):
            confirmed = passed[-1]
            stopped += f"; confirmed for {confirm_s:g} s"
            break
        hi, lo = lo, lo / (1 + cfg.precision)
    else:
        if lo is not None:
            stopped += f"; not confirmed in {CONFIRM_TRIES} runs of {confirm_s:g} s"
    # unconfirmed, the answer is the highest VALID probe below every INVALID one
    best = confirmed or max((r for r in passed if hi is None or r["probe"]["qps"] < hi),
                            key=lambda r: r["probe"]["qps"], default=None)
    lo = best["probe"]["qps"] if best else None
    search = {"phase": "verify", "latency_budget_ms": cfg.latency_budget_ms,
              "percentile": cfg.percentile, "precision": cfg.precision, "best_qps": lo,
              "confirmed": confirmed is not None, "lowest_invalid_qps": hi,
              "predicted_qps": task.predicted_qps,
              "prediction_error": task.predicted_qps / lo - 1 if lo else None,
              "calibrated_qps": calibrated, "harness_factor": round(factor, 4),
              "saturated_qps": saturated,
              "calibrated_error": calibrated / lo - 1 if lo else None,
              "predicted_capacity_qps": capacity,
              "one_sample_ms": timing["one_ms"], "batch_latency_ms": timing["batch_ms"],
              "min_queries_per_probe": min_queries, "probe_duration_s": cfg.probe_duration,
              "stopped": stopped, "probes": probes, "met": lo is not None,
              # for the report: what the calibrated simulation predicts at each load, up to
              # past the highest rate probed
              "curve": queueing.curve(calibrated_service, serving, cfg.latency_budget_ms,
                                      cfg.percentile, cfg.probe_duration, min_queries,
                                      top=1.25 * max([capacity / factor]
                                                     + [p["qps"] for p in probes]))}
    base = {**planned.to_dict(), "status": "ok", "search": search,
            "worker": worker_identity(task.threads),
            "cold_start": dict(prepared.cold_start), "options": prepared.session.options}
    if best is None:
        cell = Cell.from_dict(base)
    else:
        s = best["settings"]
        v = {k: best["probe"][k] for k in ("validity", "reasons")}
        lg_info = {**v, **scenario.figures(best["detail"], s), "scenario": "Server",
                   "query_count": best["probe"]["query_count"], "short_run": True,
                   "duration_ms": s["duration_ms"], "batch_sizes": best["probe"]["batch_sizes"],
                   "logs": {"dir": best["probe"]["logs"]}}
        cell = Cell.from_dict({**base, "stats": scenario.stats(best["detail"], s, lg_info),
                               "loadgen": lg_info, "scenario_settings": s, "timer": "loadgen",
                               "pipeline": best["probe"]["pipeline"]})
    emit({"event": "cell", "cell": cell.to_dict()})


def _early_stopping_ms(detail: dict) -> float | None:
    v = detail.get("early_stopping_latency_ss") or detail.get("early_stopping_latency_ms")
    return None if v is None else float(v) / 1e6


def config_label(variant: str, max_batch: int, timeout_ms: float, instances: int,
                 threads: int) -> str:
    wait = f"/{timeout_ms:g}ms" if max_batch > 1 else ""
    return f"{variant} b{max_batch}{wait} {instances}x{threads}"


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


# ============================================================================ the search


def run_search(cfg: SearchConfig, *, progress: Emit | None = None, store=None):
    """Screen, admit, predict, verify, answer; return the stored run (kind ``search``)."""
    from densebench.config import RunConfig
    from densebench.devices import resolve_device
    from densebench.environment import fingerprint, host_identity
    from densebench.models import check_image_size, load_model
    from densebench.pipeline import export_ahead
    from densebench.results.store import RunStore
    from densebench.variants import expand

    emit = progress or (lambda ev: None)
    device = resolve_device(cfg.device)
    # on a cluster each node decides what it runs (its screening says why it cannot)
    variants, skipped = expand(cfg.variants or ["quick"], ["default"],
                               None if cfg.executor == "ray" else device)
    loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
    image_size = cfg.image_size or loaded.default_image_size
    check_image_size(cfg.model, image_size, cfg.num_classes)
    if cfg.input is not None:  # its images found (or encoded) here, before the run exists
        from densebench.imaging import sources

        cfg = replace(cfg, input=sources.resolve(cfg.input).resolved_spec())
    options = {"address": cfg.address} if cfg.executor == "ray" else {}
    store = store or RunStore()
    rec = store.create("search", cfg.name, asdict(cfg), fingerprint(), extra={
        "command": sys.argv, "device": device, "scenario": "server",
        "model": {"name": cfg.model, "weights": loaded.weights.label,
                  "weights_id": loaded.weights_id, "random_weights": loaded.random_weights,
                  "weights_description": loaded.describe_weights(),
                  "num_classes": loaded.num_classes, "image_size": image_size},
        "skipped": skipped, "plan": [v.label for v in variants],
    })
    executor = get_executor(cfg.executor, log_dir=rec.path / "logs", **options)
    deadline = time.time() + cfg.max_time if cfg.max_time else None
    config, host = asdict(cfg), host_identity()

    def on_event(ev: dict) -> None:
        if ev.get("event") == "cell":
            rec.add_cell(Cell.from_dict(ev["cell"]))
        elif ev.get("event") == "probe":
            rec.append_record("probes.jsonl", ev["probe"])
        emit(ev)

    try:
        rec.data["cluster"] = executor.describe()
        emit({"event": "start", "run": rec.id, "path": str(rec.path),
              "cells": len(variants), "variants": [v.label for v in variants],
              "skipped": skipped})
        rc = RunConfig(model=cfg.model, weights=cfg.weights, num_classes=cfg.num_classes,
                       image_size=cfg.image_size, variants=[v.label for v in variants],
                       device=device, timeout=cfg.timeout)
        export_ahead(rc, variants, device, loaded, image_size, executor, emit)
        jobs = [ScreenTask(config=config, variant=v.label, device=device, deadline=deadline,
                           cells=[screen_cell(cfg, v, device, host).to_dict()])
                .job(f"screen-{_safe(v.label)}", timeout=cfg.timeout) for v in variants]
        executor.check(jobs)
        executor.run_all(jobs, on_event, placement="each")
        screened = [c for c in rec.cells if c.axes.get("search") == "screen"]
        admitted, refused = admit(screened, cfg)
        rec.data["not_admitted"] = refused
        for r in refused:
            emit({"event": "phase", "variant": r["variant"],
                  "phase": f"not admitted: {r['why']}"})
        predictions = predict_all(admitted, cfg)
        rec.data["predictions"] = predictions
        for p in predictions:
            rec.append_record("predictions.jsonl", p)
        chosen = choose(predictions, cfg.verify)

        def job(p: dict):
            return VerifyTask(
                config=config, variant=p["variant"], device=device, threads=p["threads"],
                instances=p["instances"], max_batch=p["max_batch"],
                batch_timeout_ms=p["batch_timeout_ms"], service_ms=p["service_ms"],
                predicted_qps=p["qps"], cells=[verify_cell(cfg, p, device).to_dict()],
                run_dir=str(rec.path), deadline=deadline,
            ).job(f"verify-{_safe(p['label'])}", timeout=cfg.timeout, needs={"host": p["host"]})

        emit({"event": "more", "cells": len(chosen)})
        emit({"event": "phase", "variant": "search",
              "phase": f"verifying {len(chosen)} of {len(predictions)} predicted "
                       "configuration(s) with LoadGen"})
        # Each host's best prediction first, every host at once; then the others, except
        # those predicted below what their host already verified: the screened prediction
        # runs above what LoadGen verifies (it leaves out the harness), so such a
        # configuration cannot be the answer, and on a slow host its probes, 662 queries
        # each at a low rate, would take minutes.
        first = {_host_name(p["host"]): p for p in reversed(chosen)}
        for round_ in (list(first.values()), [p for p in chosen if p not in first.values()]):
            jobs = []
            for p in round_:
                cell = Cell.from_dict(job(p).cells[0])
                verified = _verified_qps(rec, _host_name(p["host"]))
                if deadline is not None and time.time() >= deadline:
                    rec.add_cell(cell.failed("not verified: time limit (max_time) reached"))
                elif verified and p["qps"] < verified and not cfg.verify_all:
                    why = (f"not verified: predicted {p['qps']:.4g} QPS, below the "
                           f"{verified:.4g} QPS verified on its host (--verify-all runs it)")
                    rec.add_cell(replace(cell.failed(why), status="skipped", search={
                        "phase": "verify", "predicted_qps": p["qps"]}))
                    emit({"event": "cell", "cell": rec.cells[-1].to_dict()})
                else:
                    jobs.append(job(p))
            if jobs:
                executor.run_all(jobs, on_event, placement="each")
    except KeyboardInterrupt as e:
        rec.finish("incomplete")
        raise interrupted(e, f"search {rec.id} kept what it screened and verified, and "
                          "every probe, and is marked incomplete") from None
    finally:
        executor.close()
    rec.data["answer"] = answer(rec, cfg)
    rec.data["best"] = (rec.data["answer"] or {}).get("best")
    rec.finish("complete")
    emit({"event": "end", "run": rec.id})
    return rec


def plan_search(cfg: SearchConfig) -> dict:
    """What a search would screen and predict on this machine, without running it."""
    from densebench.devices import resolve_device
    from densebench.variants import expand

    device = resolve_device(cfg.device)
    variants, skipped = expand(cfg.variants or ["quick"], ["default"], device)
    splits = cfg.splits(usable_cores(), device)
    serving = [{"max_batch": b, "batch_timeout_ms": t} for b in cfg.max_batch
               for t in cfg.timeouts(b)]
    return {"device": device, "variants": [v.label for v in variants], "skipped": skipped,
            "splits": [{"instances": n, "threads": t} for n, t in splits],
            "batch_sizes_screened": cfg.batch_sizes(), "serving": serving,
            "configurations": len(variants) * len(splits) * len(serving),
            "verified_per_host": cfg.verify}


def screen_cell(cfg: SearchConfig, v, device: str, host: dict) -> Cell:
    return Cell(model=cfg.model, variant=v.label, batch_size=max(cfg.max_batch),
                mode=cfg.mode, device=device, scenario="server", host=host, status="planned",
                precision=v.precision, backend=v.backend, description=v.description,
                axes={"search": "screen"},
                scenario_settings={"samples": cfg.samples, "data": cfg.data,
                                   "screen_time_s": cfg.screen_time})


def verify_cell(cfg: SearchConfig, p: dict, device: str) -> Cell:
    return Cell(model=cfg.model, variant=p["variant"], batch_size=p["max_batch"],
                mode=cfg.mode, device=device, scenario="server", host=p["host"],
                status="planned", precision=p["precision"], backend=p["backend"],
                threads=p["threads"],
                axes={"search": "verify", "instances": p["instances"],
                      "batch_timeout_ms": p["batch_timeout_ms"]},
                scenario_settings={"latency_budget_ms": cfg.latency_budget_ms,
                                   "percentile": cfg.percentile, "max_batch": p["max_batch"],
                                   "instances": p["instances"],
                                   "threads_per_instance": p["threads"],
                                   "batch_timeout_ms": p["batch_timeout_ms"],
                                   "samples": cfg.samples, "data": cfg.data, "search": True})


# ============================================================================ 2, 3 and 5


def admit(screened: list[Cell], cfg: SearchConfig) -> tuple[list[Cell], list[dict]]:
    """The screened variants that may be served: they ran, their parity is within their
    precision's threshold, and (with labels) top-1 drops by no more than allowed."""
    ok, refused = [], []
    for c in screened:
        why = None
        if not c.ok:
            why = f"screening failed: {c.error}"
        elif within(c.precision, c.parity) is False:
            rel = c.parity["max_abs_error"] / c.parity["max_abs_reference"]
            why = (f"parity beyond its {c.precision or 'fp32'} threshold (max |error| "
                   f"{rel:.2g} of the largest logit; allowed {threshold(c.precision):g})")
        elif c.accuracy and c.accuracy["drop_upper"] > cfg.max_accuracy_drop:
            why = (f"top-1 may drop by up to {c.accuracy['drop_upper']:.1%} "
                   f"(95% upper bound, {c.accuracy['images']} images), more than "
                   f"--max-accuracy-drop {cfg.max_accuracy_drop:.1%}")
        if why:
            refused.append({"variant": c.variant, "host": c.host, "why": why})
        else:
            ok.append(c)
    return ok, refused


def predict_all(screened: list[Cell], cfg: SearchConfig) -> list[dict]:
    """Every configuration's highest predicted rate within the budget, best first."""
    out = []
    for c in screened:
        for split in c.search["splits"]:
            service = queueing.ServiceTimes.from_dict(split["service_ms"])
            for b in cfg.max_batch:
                for timeout in cfg.timeouts(b):
                    serving = queueing.Serving(b, timeout, split["instances"])
                    p = queueing.max_rate(service, serving, cfg.latency_budget_ms,
                                          cfg.percentile, cfg.probe_duration, cfg.queries())
                    # the smallest budget it could meet: its latency under a trickle of
                    # load, judged as LoadGen's early stopping judges it
                    trickle = queueing.predict(
                        service, serving, service.capacity(b, split["instances"]) / 256,
                        cfg.latency_budget_ms, cfg.percentile, cfg.probe_duration,
                        cfg.queries())
                    out.append({
                        "label": config_label(c.variant, b, timeout, split["instances"],
                                              split["threads"]),
                        "variant": c.variant, "precision": c.precision,
                        "backend": c.backend, "host": c.host, "max_batch": b,
                        "batch_timeout_ms": timeout, "instances": split["instances"],
                        "threads": split["threads"],
                        "qps": p.rate if p else None,
                        "why": None if p else _why_not(service, serving, cfg),
                        "percentile_ms": p.percentile_ms if p else None,
                        "min_budget_ms": round(trickle.early_stopping_ms, 4),
                        "capacity_qps": service.capacity(b, split["instances"]),
                        "service_ms": split["service_ms"]})
    return sorted(out, key=lambda p: -(p["qps"] or 0))


def _why_not(service, serving, cfg: SearchConfig) -> str:
    one = service.median(1)
    if one > cfg.latency_budget_ms:
        return f"one sample alone takes {one:.3g} ms (over the {cfg.latency_budget_ms:g} ms budget)"
    return (f"even a trickle of load is predicted over the budget at max batch "
            f"{serving.max_batch} (a batch waits {serving.batch_timeout_ms:g} ms)")


def choose(predictions: list[dict], k: int) -> list[dict]:
    """The ``k`` best predictions of each host (those that can meet the budget at all)."""
    per: dict = {}
    for p in predictions:
        if p["qps"]:
            per.setdefault(_host_name(p["host"]), []).append(p)
    out = []
    for ps in per.values():  # different variants first: the runtime decides most
        firsts = [p for i, p in enumerate(ps)
                  if all(q["variant"] != p["variant"] for q in ps[:i])]
        out += (firsts + [p for p in ps if p not in firsts])[:k]
    return out


def _verified_qps(rec, host: str) -> float | None:
    """The highest rate verified so far on ``host`` in the search ``rec``."""
    return max((c.search["best_qps"] for c in rec.cells
                if c.ok and (c.search or {}).get("phase") == "verify"
                and c.search.get("best_qps") and _host_name(c.host) == host), default=None)


def _host_name(host: dict) -> str:
    return host.get("node") or host.get("hostname") or "?"


def answer(rec, cfg: SearchConfig) -> dict | None:
    """The best verified configuration per host and overall, with replicas and cost."""
    verified = [c for c in rec.cells if c.ok and (c.search or {}).get("phase") == "verify"
                and c.search.get("best_qps")]
    hosts: dict[str, dict] = {}
    for c in verified:
        name = _host_name(c.host)
        if name not in hosts or c.search["best_qps"] > hosts[name]["qps"]:
            hosts[name] = best_record(c, cfg)
    if not hosts:
        return None
    for h in hosts.values():
        price = price_for(cfg.prices, h["host"])
        h["replicas"] = math.ceil(cfg.target_qps / h["qps"]) if cfg.target_qps else None
        if price:
            h["usd_per_hour"] = price
            h["usd_per_million"] = usd_per_million(price, h["qps"])
            if cfg.target_qps:
                h["fleet_usd_per_hour"] = h["replicas"] * price
                h["usd_per_million_at_target"] = usd_per_million(h["replicas"] * price,
                                                                 cfg.target_qps)
    unknown = [n for n in cfg.prices if n not in hosts and
               not any(h["host"].get("hostname") == n for h in hosts.values())]
    if cfg.prices:
        ranked = sorted(hosts.values(), key=lambda h: (
            h.get("usd_per_million_at_target") or h.get("usd_per_million") or math.inf,
            -h["qps"]))
    else:
        ranked = sorted(hosts.values(), key=lambda h: -h["qps"])
    return {"best": ranked[0], "hosts": ranked, "target_qps": cfg.target_qps,
            "prices_for_no_host": unknown}


def best_record(c: Cell, cfg: SearchConfig) -> dict:
    s, qps = c.search, c.search["best_qps"]
    inst, threads = c.axes["instances"], c.threads
    timeout = c.axes["batch_timeout_ms"]
    cmd = (f"densebench run --scenario server --model {cfg.model} --weights {cfg.weights} "
           + (f"--image-size {cfg.image_size} " if cfg.image_size else "")
           + f"--device {c.device} -v {c.variant} --max-batch {c.batch_size} "
           f"--instances {inst} --threads {threads} "
           f"--batch-timeout {timeout:g}ms --target-qps {qps:.4g} "
           f"--latency-budget {cfg.latency_budget_ms:g}ms --percentile {cfg.percentile:g} "
           f"--duration {cfg.probe_duration:g}s"
           + (f" --mode e2e-jpeg --input {cfg.input} --decoder {cfg.decoder} "
              f"--decode-workers {cfg.decode_workers}" if cfg.input else ""))
    return {"host": c.host, "host_name": _host_name(c.host), "variant": c.variant,
            "max_batch": c.batch_size, "batch_timeout_ms": timeout, "instances": inst,
            "threads_per_instance": threads, "qps": qps, "predicted_qps": s["predicted_qps"],
            "prediction_error": s["prediction_error"],
            "percentile_latency_ms": (c.loadgen or {}).get("percentile_latency_ms"),
            "command": cmd}
