"""`densebench search` as a library: the highest LoadGen Server QPS whose run is VALID with
the chosen latency percentile under a budget, for each combination of variant, maximum
batch and instance count, and the best configuration overall.

For each combination (a job on an executor, like a `run` variant): prepare the variant
once, then probe with full LoadGen Server runs: bracketing from half the capacity a quick
timing predicts (doubling while VALID, halving while INVALID), then bisection until the
bracket [highest VALID, lowest INVALID] is within ``precision`` (relative). Each probe is
sized by query count as well as duration (LoadGen's early stopping needs several hundred
queries before a p99 can be VALID), and every probe is stored (``probes.jsonl`` as it
happens, and in the combination's cell). A combination that is INVALID even at a small
fraction of its capacity cannot meet the budget, and says so. The search stops at
``max_time`` with what it has found.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from densebench.errors import bad_setting, check_threads, interrupted, one_line
from densebench.executors import Task
from densebench.prepare import ModelRef
from densebench.results.schema import Cell

Emit = Callable[[dict], None]
SEARCH_COMBINATION = "densebench.search:search_combination"
# INVALID at this fraction of the predicted capacity means the latency is not queueing (one
# sample is slow, or threads contend): lower loads would not help, and probes there are
# long (a p99 needs 662 queries whatever the rate)
LOWEST_FRACTION = 1 / 4


@dataclass
class SearchConfig:
    latency_budget_ms: float
    percentile: float = 99.0
    variants: list[str] = field(default_factory=lambda: ["eager"])
    max_batch: list[int] = field(default_factory=lambda: [1])
    instances: list[int] = field(default_factory=lambda: [1])
    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    device: str = "auto"
    threads: int | None = None  # intra-op threads per instance
    oversubscribe: bool = False
    batch_timeout_ms: float = 2.0
    samples: int = 256
    data: str = "synthetic"
    precision: float = 0.05
    probe_duration: float = 10.0  # seconds, at least, per probe
    min_queries: int | None = None  # per probe; default: what the percentile needs
    start_qps: float | None = None
    max_time: float | None = None  # seconds for the whole search
    executor: str = "subprocess"
    timeout: float = 3600.0
    name: str | None = None

    def __post_init__(self):
        from densebench.executors import get_executor
        from densebench.scenarios.loadgen import check_cores, require_loadgen

        if not self.latency_budget_ms > 0 or not math.isfinite(self.latency_budget_ms):
            raise bad_setting("latency_budget_ms", f"must be a positive duration, got "
                              f"{self.latency_budget_ms} ms")
        if not 0 < self.percentile < 100:
            raise bad_setting("percentile", f"must be between 0 and 100 (exclusive), got "
                              f"{self.percentile}")
        if not self.variants:
            raise bad_setting("variants", "is empty: name at least one variant")
        for b in self.max_batch:
            if not isinstance(b, int) or b < 1:
                raise bad_setting("max_batch", f"must be at least 1, got {b}")
        for n in self.instances:
            if not isinstance(n, int) or n < 1:
                raise bad_setting("instances", f"must be at least 1, got {n}")
        check_threads(self.threads)
        if not 0 < self.precision < 1:
            raise bad_setting("precision", f"must be between 0 and 1 (0.05 is 5%), got "
                              f"{self.precision}")
        if not self.probe_duration > 0:
            raise bad_setting("probe_duration", f"must be positive, got {self.probe_duration}")
        if self.max_time is not None and not self.max_time > 0:
            raise bad_setting("max_time", f"must be positive, got {self.max_time}")
        if self.start_qps is not None and not self.start_qps > 0:
            raise bad_setting("start_qps", f"must be positive, got {self.start_qps}")
        if self.samples < 1:
            raise bad_setting("samples", f"must be at least 1, got {self.samples}")
        if self.batch_timeout_ms < 0:
            raise bad_setting("batch_timeout_ms", f"must not be negative, got "
                              f"{self.batch_timeout_ms} ms")
        for n in self.instances:
            check_cores(n, self.threads, self.oversubscribe)
        require_loadgen()
        get_executor(self.executor)

    def model_ref(self) -> ModelRef:
        return ModelRef(self.model, self.weights, self.num_classes, self.image_size)


# ============================================================================ one combination


@dataclass
class SearchTask(Task):
    """One (variant, max batch, instances) combination, probed in its worker: the payload
    of a search's job."""

    TARGET: ClassVar[str] = SEARCH_COMBINATION
    config: dict  # SearchConfig, asdict
    variant: str
    device: str
    threads: int  # per instance
    max_batch: int
    instances: int
    cells: list[dict]  # the one planned cell
    run_dir: str
    deadline: float | None = None  # time.time() past which no probe starts (max_time)


def search_combination(payload: dict, emit: Emit) -> None:
    """Probe one (variant, max batch, instances) combination; emit its probes and a cell."""
    from densebench.environment import host_identity
    from densebench.prepare import prepare_variant
    from densebench.scenarios.loadgen import (
        SampleLibrary,
        Server,
        default_min_queries,
        require_loadgen,
        verdict,
        warm_up,
    )
    from densebench.variants import get_variant

    lg = require_loadgen()
    task = SearchTask.from_payload(payload)
    cfg = SearchConfig(**task.config)
    variant = get_variant(task.variant)
    planned = Cell.from_dict({**task.cells[0], "host": host_identity()})
    max_batch, instances, deadline = task.max_batch, task.instances, task.deadline
    workdir = Path(task.run_dir)
    label = f"{variant.label} b{max_batch} x{instances}"

    def phase(name: str) -> None:
        emit({"event": "phase", "variant": label, "phase": name})

    try:
        prepared = prepare_variant(variant, cfg.model_ref(), task.device, task.threads,
                                   phase=phase)
        phase("sample library")
        library = SampleLibrary.build(prepared, cfg.samples, cfg.data)
        sessions = prepared.sessions(instances)
        phase("warm-up")
        timing = warm_up(sessions, library, max_batch)
        per_batch_s = timing["batch_ms"] / 1e3
    except Exception as e:
        emit({"event": "cell", "cell": planned.failed(one_line(e)).to_dict()})
        return
    scenario = Server()
    # what a saturated batcher could serve, if batches were always full
    capacity = instances * max_batch / per_batch_s
    min_queries = cfg.min_queries or default_min_queries(cfg.percentile)
    probes: list[dict] = []
    best: dict | None = None
    stopped = None

    def probe(qps: float) -> bool:
        nonlocal best
        s = {"samples": cfg.samples, "max_batch": max_batch,
             "batch_timeout_ms": cfg.batch_timeout_ms, "instances": instances,
             "threads_per_instance": task.threads,
             "duration_ms": int(cfg.probe_duration * 1000), "min_query_count": min_queries,
             "official": False, "accuracy": False, "data": cfg.data, "target_qps": qps,
             "max_duration_ms": int(max(1.0, deadline - time.time()) * 1000)
             if deadline is not None else None,
             "latency_budget_ms": cfg.latency_budget_ms, "percentile": cfg.percentile,
             "samples_per_query": None, "expected_qps": None}
        phase(f"probe {len(probes) + 1}: {qps:.3g} QPS")
        out = workdir / "loadgen" / f"search-{_safe(label)}" / f"probe-{len(probes) + 1:02d}"
        out.mkdir(parents=True, exist_ok=True)
        detail, batcher, wall = scenario.run_loadgen(lg, sessions, library, s, timing, out)
        v = verdict(detail, cfg.latency_budget_ms, cfg.percentile)
        fig = scenario.figures(detail, s)
        rec = {"combination": label, "variant": variant.label, "max_batch": max_batch,
               "instances": instances, "qps": qps, **v,
               "percentile_latency_ms": fig["percentile_latency_ms"],
               "completed_qps": fig["completed_samples_per_sec"],
               "scheduled_qps": fig["scheduled_samples_per_sec"],
               "query_count": detail.get("result_query_count"), "wall_s": round(wall, 2),
               "batch_sizes": {str(k): n for k, n in sorted(batcher.batch_sizes.items())},
               "logs": str(out.relative_to(workdir))}
        probes.append(rec)
        emit({"event": "probe", "probe": rec})
        valid = v["validity"] == "VALID"
        if valid and (best is None or qps > best["probe"]["qps"]):
            best = {"probe": rec, "detail": detail, "settings": s}
        return valid

    def time_left() -> bool:
        nonlocal stopped
        if deadline is not None and time.time() >= deadline:
            stopped = "time limit (max_time) reached"
            return False
        return True

    lo = hi = None  # highest VALID, lowest INVALID
    q = cfg.start_qps or 0.5 * capacity
    if timing["one_ms"] > cfg.latency_budget_ms:  # no load is low enough
        stopped = (f"cannot meet p{cfg.percentile:g} <= {cfg.latency_budget_ms:g} ms at any "
                   f"load: one sample alone takes {timing['one_ms']:.3g} ms")
    while stopped is None and time_left():
        if probe(q):
            lo = q
            if hi is not None:
                break
            q *= 2
        else:
            hi = q
            if lo is not None:
                break
            if q <= LOWEST_FRACTION * capacity * 1.0001:
                stopped = (f"cannot meet p{cfg.percentile:g} <= {cfg.latency_budget_ms:g} ms "
                           f"even at {q:.3g} QPS ({q / capacity:.0%} of the predicted "
                           "capacity), where the latency is not queueing")
                break
            q /= 2
    while lo is not None and hi is not None and hi / lo - 1 > cfg.precision and time_left():
        mid = math.sqrt(lo * hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    if stopped is None:
        stopped = "bracket within precision" if lo is not None and hi is not None else \
            "no bracket"
    search = {"latency_budget_ms": cfg.latency_budget_ms, "percentile": cfg.percentile,
              "precision": cfg.precision, "best_qps": lo, "lowest_invalid_qps": hi,
              "predicted_capacity_qps": capacity, "batch_latency_ms": per_batch_s * 1e3,
              "one_sample_ms": timing["one_ms"],
              "min_queries_per_probe": min_queries, "probe_duration_s": cfg.probe_duration,
              "stopped": stopped, "probes": probes,
              "met": lo is not None}
    if best is None:
        cell = Cell.from_dict({**planned.to_dict(), "status": "ok", "search": search,
                               "scenario_settings": {**planned.scenario_settings},
                               "cold_start": dict(prepared.cold_start)})
    else:
        s = best["settings"]
        v = {k: best["probe"][k] for k in ("validity", "reasons")}
        lg_info = {**v, **scenario.figures(best["detail"], s), "scenario": "Server",
                   "query_count": best["probe"]["query_count"], "short_run": True,
                   "duration_ms": s["duration_ms"], "batch_sizes": best["probe"]["batch_sizes"],
                   "logs": {"dir": best["probe"]["logs"]}}
        cell = Cell.from_dict({
            **planned.to_dict(), "status": "ok",
            "stats": scenario.stats(best["detail"], s, lg_info), "loadgen": lg_info,
            "search": search, "scenario_settings": s, "timer": "loadgen",
            "cold_start": dict(prepared.cold_start), "options": prepared.session.options,
        })
    emit({"event": "cell", "cell": cell.to_dict()})


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


# ============================================================================ the search


def run_search(cfg: SearchConfig, *, progress: Emit | None = None, store=None):
    """Search every combination; return the stored run (kind ``search``)."""
    import torch

    from densebench.devices import resolve_device
    from densebench.environment import fingerprint, host_identity
    from densebench.executors import get_executor
    from densebench.models import check_image_size, load_model
    from densebench.results.store import RunStore
    from densebench.scenarios.loadgen import check_cores
    from densebench.variants import expand

    emit = progress or (lambda ev: None)
    device = resolve_device(cfg.device)
    variants, skipped = expand(cfg.variants, ["default"], device)
    loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
    image_size = cfg.image_size or loaded.default_image_size
    check_image_size(cfg.model, image_size, cfg.num_classes)
    store = store or RunStore()
    combos = [(v, b, n) for v in variants for b in cfg.max_batch for n in cfg.instances]
    rec = store.create("search", cfg.name, asdict(cfg), fingerprint(), extra={
        "command": sys.argv, "device": device, "scenario": "server",
        "threads": cfg.threads or torch.get_num_threads(),
        "model": {"name": cfg.model, "weights": loaded.weights.label,
                  "weights_id": loaded.weights_id, "random_weights": loaded.random_weights,
                  "weights_description": loaded.describe_weights(),
                  "num_classes": loaded.num_classes, "image_size": image_size},
        "skipped": skipped,
        "plan": [f"{v.label} b{b} x{n}" for v, b, n in combos],
    })
    emit({"event": "start", "run": rec.id, "path": str(rec.path), "cells": len(combos),
          "variants": [v.label for v in variants], "skipped": skipped})
    deadline = time.time() + cfg.max_time if cfg.max_time else None
    host = host_identity()
    executor = get_executor(cfg.executor, log_dir=rec.path / "logs")
    config = asdict(cfg)

    def on_event(ev: dict) -> None:
        if ev.get("event") == "cell":
            rec.add_cell(Cell.from_dict(ev["cell"]))
        elif ev.get("event") == "probe":
            rec.append_record("probes.jsonl", ev["probe"])
        emit(ev)

    try:
        for v, b, n in combos:
            threads = check_cores(n, cfg.threads, cfg.oversubscribe)
            settings = {"latency_budget_ms": cfg.latency_budget_ms,
                        "percentile": cfg.percentile, "max_batch": b, "instances": n,
                        "threads_per_instance": threads,
                        "batch_timeout_ms": cfg.batch_timeout_ms, "samples": cfg.samples,
                        "data": cfg.data, "search": True}
            cell = Cell(model=cfg.model, variant=v.label, batch_size=b, mode="e2e",
                        device=device, scenario="server", host=host, status="planned",
                        precision=v.precision, backend=v.backend, description=v.description,
                        threads=threads, scenario_settings=settings)
            if deadline is not None and time.time() >= deadline:
                rec.add_cell(cell.failed("not searched: time limit (max_time) reached"))
                continue
            task = SearchTask(config=config, variant=v.label, device=device, threads=threads,
                              max_batch=b, instances=n, cells=[cell.to_dict()],
                              run_dir=str(rec.path), deadline=deadline)
            executor.run(task.job(f"search-{_safe(v.label)}-b{b}-x{n}", timeout=cfg.timeout),
                         on_event)
    except KeyboardInterrupt as e:
        rec.finish("incomplete")
        raise interrupted(e, f"search {rec.id} kept its finished combinations and every "
                          "probe, and is marked incomplete") from None
    rec.data["best"] = best_configuration(rec, cfg)
    rec.finish("complete")
    emit({"event": "end", "run": rec.id})
    return rec


def best_configuration(rec, cfg: SearchConfig) -> dict | None:
    """The combination with the highest VALID QPS, with the command that reproduces it."""
    found = [c for c in rec.cells if c.ok and c.search and c.search.get("best_qps")]
    if not found:
        return None
    c = max(found, key=lambda c: c.search["best_qps"])
    s = c.scenario_settings
    qps = c.search["best_qps"]
    cmd = (f"densebench run --scenario server --model {cfg.model} --weights {cfg.weights} "
           + (f"--image-size {cfg.image_size} " if cfg.image_size else "")
           + f"--device {c.device} -v {c.variant} --max-batch {c.batch_size} "
           f"--instances {s['instances']} --threads {s['threads_per_instance']} "
           f"--batch-timeout {cfg.batch_timeout_ms:g}ms --target-qps {qps:.4g} "
           f"--latency-budget {cfg.latency_budget_ms:g}ms --percentile {cfg.percentile:g} "
           f"--duration {cfg.probe_duration:g}s")
    return {"variant": c.variant, "max_batch": c.batch_size, "instances": s["instances"],
            "threads_per_instance": s["threads_per_instance"], "qps": qps,
            "percentile_latency_ms": (c.loadgen or {}).get("percentile_latency_ms"),
            "command": cmd}
