"""`densebench run` as a library: plan the cells, run each variant as a job on an executor
(a worker process per variant by default), store each cell as it comes back.

``run_benchmark(RunConfig(...))`` is the whole command without the printing. A variant's
job is ``measure_variant(payload, emit)``: prepare the variant (``prepare.py``), then hand
it to the run's scenario (``scenarios/``), which emits a cell event per planned cell.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from densebench.artifacts import ExportSpec
from densebench.backends import get_backend
from densebench.calibration import Calibration
from densebench.errors import (
    ConfigError,
    bad_setting,
    check_threads,
    interrupted,
    one_line,
    threads_warning,
)
from densebench.executors import get_executor
from densebench.measure.engine import MODES, StopRule, Warmup
from densebench.prepare import ModelRef
from densebench.processes import this_process_start, usable_cores
from densebench.results.schema import Cell
from densebench.scenarios import check_batch_sizes, get_scenario
from densebench.variants import expand

Emit = Callable[[dict], None]
MEASURE_VARIANT = "densebench.run:measure_variant"
EXPORT_VARIANT = "densebench.run:export_variant"
MAX_EXPORT_LANES = 4  # exports side by side at most (each holds a model and its compiler)


@dataclass(init=False)
class RunConfig:
    """A run's configuration: the model, the cells every scenario shares (variants, batch
    sizes, modes, device, threads), the closed-loop measurement, the repetition and the
    executor, and ``settings``: the scenario's own, by name (its ``Settings`` dataclass
    reads and checks them). A scenario's settings may also be given as keywords
    (``RunConfig(scenario="server", target_qps=20)``), as the Python API always took them.
    """

    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    calib: str | None = None  # int8 calibration data: synthetic | imagefolder:PATH
    variants: list[str] = field(default_factory=lambda: ["eager"])
    compile_modes: list[str] = field(default_factory=lambda: ["default"])
    batch_sizes: list[int] | None = None  # fixed batches; None: [1]
    modes: list[str] | None = None  # None: the scenario's (model and e2e; LoadGen: e2e)
    device: str = "auto"
    threads: int | None = None  # intra-op threads (per instance in LoadGen scenarios)
    scenario: str = "closed-loop"
    settings: dict = field(default_factory=dict)  # the scenario's own settings, by name
    # closed-loop measurement
    warmup: str = "3"
    min_iters: int = 10
    min_time: float = 3.0
    iters: int | None = None
    max_time: float | None = None
    # repetition: worker processes per cell, rounds interleaved across variants
    repeats: int | None = None  # None: the scenario's default
    # where
    timeout: float = 1800.0
    executor: str = "subprocess"
    name: str | None = None

    def __init__(self, **kw):
        own = {f.name: f for f in dataclasses.fields(RunConfig)}
        settings = dict(kw.pop("settings", None) or {})
        # a scenario's settings given as keywords; None and False are "not given"
        settings.update({k: kw.pop(k) for k in list(kw) if k not in own
                         and kw[k] is not None and kw[k] is not False})
        for k in [k for k in kw if k not in own]:
            del kw[k]
        for name, f in own.items():
            if name == "settings":
                continue
            if name in kw:
                value = kw[name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, name, value)
        self.settings = settings
        self.__post_init__()

    def __post_init__(self):
        if not self.variants:
            raise bad_setting("variants", "is empty: name at least one variant (or all)")
        check_batch_sizes("batch_sizes", self.batch_sizes)
        for m in self.modes or []:
            if m not in MODES:
                raise bad_setting("modes", f"has unknown mode {m!r}: choose from "
                                  f"{', '.join(MODES)}")
        check_threads(self.threads)
        if self.repeats is not None and not 1 <= self.repeats <= 100:
            raise bad_setting("repeats", f"must be between 1 and 100, got {self.repeats}")
        if not self.timeout > 0:
            raise bad_setting("timeout", f"must be positive, got {self.timeout}")
        if self.image_size is not None and self.image_size < 1:
            raise bad_setting("image_size", f"must be at least 1, got {self.image_size}")
        if not math.isfinite(self.min_time):
            raise bad_setting("min_time", f"must be a finite number, got {self.min_time}")
        if self.max_time is not None and not math.isfinite(self.max_time):
            raise bad_setting("max_time", f"must be a finite number, got {self.max_time}")
        Warmup.parse(self.warmup)
        self.stop_rule()
        scenario = get_scenario(self.scenario)
        self.scenario_settings = scenario.configure(self.settings)
        get_executor(self.executor)
        if self.calib is not None:
            self._check_calibration()
        scenario.check(self)

    def _check_calibration(self) -> None:
        """A missing folder, or fewer images than a batch calibrates on, is refused before
        anything runs: PT2E calibrates at the cell's batch size, the artifacts in batches
        of ``ExportSpec.calib_batch_size``."""
        calib = Calibration.parse(self.calib)
        chosen, _ = expand(self.variants, self.compile_modes, None)
        int8 = [v for v in chosen if v.precision == "int8"]
        if calib.source == "synthetic" or not int8:
            return
        need = ExportSpec.calib_batch_size
        if any(get_backend(v.backend).CALIBRATED for v in int8):
            need = max(need, *self.cell_batch_sizes())
        have = calib.count()
        if have < need:
            raise ConfigError(f"calib: the calibration set ({calib.label}) has {have} images, "
                              f"fewer than the batch of {need}: give more images",
                              setting="calib")

    def to_dict(self) -> dict:
        """Plain data (the job payload, the run file); ``RunConfig(**d)`` reads it back."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def scenario_object(self):
        return get_scenario(self.scenario)

    def cell_batch_sizes(self) -> list[int]:
        """Batch sizes of the cells: fixed batches, or the batcher's max batch."""
        return self.scenario_object.batch_sizes(self)

    def effective_repeats(self) -> int:
        return self.scenario_object.repeats(self)

    def cell_modes(self) -> list[str]:
        return self.scenario_object.modes(self)

    def stop_rule(self) -> StopRule:
        return StopRule(self.min_iters, self.min_time, self.iters, self.max_time)

    def model_ref(self) -> ModelRef:
        return ModelRef(self.model, self.weights, self.num_classes, self.image_size,
                        self.calib)


# ============================================================================ the job


def measure_variant(payload: dict, emit: Emit) -> None:
    """One variant's planned cells: prepare it, then let the scenario measure them."""
    import torch

    from densebench.backends import get_backend
    from densebench.environment import host_identity
    from densebench.prepare import prepare_variant
    from densebench.scenarios import get_scenario
    from densebench.variants import get_variant

    cfg = RunConfig(**payload["config"])
    variant = get_variant(payload["variant"])
    threads = payload["threads"] or torch.get_num_threads()  # None: this node's default
    torch.set_num_threads(threads)
    host = host_identity()  # where this job really runs (a remote node, say)
    worker = worker_identity(threads)
    cells = [Cell.from_dict({**c, "host": host, "threads": threads, "worker": worker})
             for c in payload["cells"]]
    label = variant.label
    why = get_backend(variant.backend).supported(variant, payload["device"])
    if why is not None and payload.get("skip_unsupported"):  # a sweep: this node can't
        for c in cells:
            emit({"event": "cell", "cell": dataclasses.replace(
                c, status="skipped", error=why).to_dict()})
        return
    try:
        prepared = prepare_variant(
            variant, cfg.model_ref(), payload["device"], threads,
            phase=lambda name: emit({"event": "phase", "variant": label, "phase": name}))
    except Exception as e:
        for c in cells:
            emit({"event": "cell", "cell": c.failed(one_line(e)).to_dict()})
        return
    emit({"event": "variant", "variant": label, "info": prepared.info()})
    get_scenario(cfg.scenario).run(prepared, cells, payload["settings"], emit,
                                   Path(payload["run_dir"]))


def export_variant(payload: dict, emit: Emit) -> None:
    """One artifact of the run's export phase, into the cache; says how it went in an
    ``exported`` event (``export_s`` and ``key``, or ``error``)."""
    import torch

    from densebench.exporters import export_artifact
    from densebench.prepare import artifact_spec
    from densebench.variants import get_variant

    cfg = RunConfig(**payload["config"])
    torch.set_num_threads(payload["threads"])
    variants = payload["variants"]  # every variant of the run that uses this artifact
    variant = get_variant(variants[0])
    t0 = time.perf_counter()
    try:
        spec = artifact_spec(variant, cfg.model_ref(), payload["device"], payload["image_size"])
        art, cached = export_artifact(spec, progress=lambda what: emit(
            {"event": "phase", "variant": variant.label, "phase": what}))
    except Exception as e:
        emit({"event": "exported", "variants": variants, "error": one_line(e)})
        return
    emit({"event": "exported", "variants": variants, "key": art.key, "cached": cached,
          "export_s": round(time.perf_counter() - t0, 3)})


def export_ahead(cfg: RunConfig, variants: list, device: str, loaded, image_size: int,
                 executor, emit: Emit) -> dict[str, dict]:
    """Before anything is measured, export the artifacts the run needs and the cache lacks,
    side by side: one worker process each, one lane per core (at most MAX_EXPORT_LANES),
    each worker with its share of the cores. aoti-int8's two-minute compile then hides the
    other exports instead of adding to them, and no export ever runs beside a measurement.

    Returns each variant's outcome (``export_s`` and ``key``, or ``error``). Nothing is
    exported here (``{}``) where nothing would overlap (fewer than two artifacts missing,
    one core) or the jobs run elsewhere (a cluster): each worker exports as it prepares.
    """

    from densebench.artifacts import ArtifactCache, key_fields
    from densebench.checksums import sha256_json
    from densebench.executors import Job
    from densebench.prepare import artifact_spec

    cores = usable_cores()
    if not executor.LOCAL or cores < 2:
        return {}
    cache, ref, missing = ArtifactCache(), cfg.model_ref(), {}
    for v in variants:
        spec = artifact_spec(v, ref, device, image_size)
        if spec is None:
            continue
        try:
            fields = key_fields(spec, loaded.weights_id, image_size, loaded.num_classes)
            if cache.lookup(fields, verify=False) is None:
                missing.setdefault(sha256_json(fields), []).append(v)
        except Exception:  # a damaged entry: the variant's worker says what is wrong
            continue
    if len(missing) < 2:
        return {}
    lanes = min(len(missing), cores, MAX_EXPORT_LANES)
    config = cfg.to_dict()
    # the compiles first (the longest export starts at once, the others fill the other
    # lanes), then fp32 before what is quantized from it (an int8 export waits for its fp32
    # base: started together they would hold two lanes for the work of one)
    groups = sorted(missing.values(),
                    key=lambda vs: (vs[0].artifact[0] != "aoti", vs[0].artifact[1] != "fp32"))
    jobs = [Job(name=f"export-{vs[0].label}", target=EXPORT_VARIANT, timeout=cfg.timeout,
                payload={"config": config, "variants": [v.label for v in vs],
                         "device": device, "image_size": image_size,
                         "threads": max(1, cores // lanes)})
            for vs in groups]
    emit({"event": "export_ahead", "variants": [j.payload["variants"][0] for j in jobs],
          "lanes": lanes})
    outcome: dict[str, dict] = {}

    def on_event(ev: dict) -> None:
        if ev.get("event") == "exported":
            for label in ev["variants"]:
                outcome[label] = {k: ev[k] for k in ("export_s", "key", "error") if k in ev}
        emit(ev)

    executor.run_concurrently(jobs, on_event, lanes)
    return outcome


def worker_identity(threads: int) -> dict:
    """What this worker process ran with: its pid, the threads it was given and the thread
    variables of its environment (a cluster scheduler sets its own), the Ray node."""
    import os

    import torch

    env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
    return {"pid": os.getpid(), "threads": threads, "torch_threads": torch.get_num_threads(),
            "env": {k: os.environ.get(k) for k in env},
            **({"ray_node_id": os.environ["DENSEBENCH_RAY_NODE_ID"]}
               if os.environ.get("DENSEBENCH_RAY_NODE_ID") else {})}


def plan_cells(cfg: RunConfig, variant, device: str, threads: int, settings: dict,
               host: dict, repeat: int = 0) -> list[Cell]:
    return [Cell(model=cfg.model, variant=variant.label, batch_size=bs, mode=mode,
                 device=device, scenario=cfg.scenario, host=host, status="planned",
                 repeat=repeat,
                 precision=variant.precision, backend=variant.backend,
                 description=variant.description, threads=threads,
                 scenario_settings=settings)
            for bs in cfg.cell_batch_sizes() for mode in cfg.cell_modes()]


# ============================================================================ the run


def run_benchmark(cfg: RunConfig, *, progress: Emit | None = None, store=None):
    """Run every cell of ``cfg``; return the stored RunRecord (status complete/incomplete)."""
    import torch

    from densebench.devices import resolve_device
    from densebench.environment import fingerprint, host_identity
    from densebench.executors import Job, get_executor
    from densebench.models import check_image_size, load_model, model_stats
    from densebench.results.store import RunStore
    from densebench.scenarios import get_scenario
    from densebench.variants import expand, left_out

    emit = progress or (lambda ev: None)
    device = resolve_device(cfg.device)
    variants, skipped = expand(cfg.variants, cfg.compile_modes, device)
    threads = get_scenario(cfg.scenario).threads(cfg) or torch.get_num_threads()
    loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
    image_size = cfg.image_size or loaded.default_image_size
    check_image_size(cfg.model, image_size, cfg.num_classes)
    torch.set_num_threads(threads)
    env = fingerprint()
    env["settings"]["threads_requested"] = cfg.threads
    warnings = [w for w in [threads_warning(cfg.threads)] if w]
    try:
        stats = model_stats(cfg.model, image_size)
        macs = {"params": stats.params, "gmacs_per_image": round(stats.gmacs, 4)}
    except Exception:
        macs = {}
    store = store or RunStore()
    rec = store.create("benchmark", cfg.name, asdict(cfg), env, extra={
        "command": sys.argv,
        "device": device,
        "threads": threads,
        "scenario": cfg.scenario,
        "model": {
            "name": cfg.model, "weights": loaded.weights.label, "weights_id": loaded.weights_id,
            "random_weights": loaded.random_weights, "weights_description":
            loaded.describe_weights(), "num_classes": loaded.num_classes,
            "image_size": image_size, **macs,
        },
        "skipped": skipped,
        "not_in_quick": left_out(cfg.variants, variants, device),
        "plan": [v.label for v in variants],
        "timeline": {"first_timed_iteration_s": None},
        "warnings": warnings,
    })
    for w in warnings:
        emit({"event": "warning", "message": w})
    repeats = cfg.effective_repeats()
    rec.data["repeats"] = {"processes_per_cell": repeats, "interleaved": repeats > 1,
                           "independent": cfg.executor != "inline"}
    emit({"event": "start", "run": rec.id, "path": str(rec.path), "variants": rec.data["plan"],
          "cells": len(variants) * len(cfg.cell_batch_sizes()) * len(cfg.cell_modes())
          * repeats, "skipped": skipped, "repeats": repeats})
    config = cfg.to_dict()
    settings = get_scenario(cfg.scenario).record(cfg, threads)
    host = host_identity()
    started = this_process_start()
    executor = get_executor(cfg.executor, log_dir=rec.path / "logs")

    def on_event(ev: dict) -> None:
        kind = ev.get("event")
        if kind == "cell":
            cell = Cell.from_dict(ev["cell"])
            rec.add_cell(cell)
            info = rec.data["variants"].get(cell.variant)
            first = cell.cold_start.get("first_inference_s")
            if info is not None and first is not None and \
                    "first_inference_s" not in info["cold_start"]:
                info["cold_start"]["first_inference_s"] = first  # known after the warm-up
                rec.save()
        elif kind == "variant":
            done = ahead.get(ev["variant"], {})
            if "export_s" in done:  # exported by this run, ahead: found in the cache
                ev["info"]["cold_start"].update(export_s=done["export_s"],
                                                artifact_cached=False, exported_ahead=True)
            rec.data["variants"][ev["variant"]] = ev["info"]
            rec.save()
        elif kind == "exported":
            rec.data.setdefault("exports_ahead", []).append(
                {k: v for k, v in ev.items() if k != "event"})
            rec.save()
        elif (kind == "phase" and ev["phase"] == "measure"
              and rec.data["timeline"]["first_timed_iteration_s"] is None):
            rec.data["timeline"]["first_timed_iteration_s"] = round(time.time() - started, 3)
            rec.save()
        emit(ev)

    ahead: dict[str, dict] = {}
    try:
        ahead.update(export_ahead(cfg, variants, device, loaded, image_size, executor,
                                  on_event))
        # rounds interleaved across variants (A B C, A B C, ...): drift falls on all alike
        for v, r in [(v, r) for r in range(repeats) for v in variants]:
            cells = [c.to_dict() for c in plan_cells(cfg, v, device, threads, settings, host,
                                                     repeat=r)]
            failed = ahead.get(v.label, {}).get("error")
            if failed:  # its export failed ahead: not tried again in every worker
                for c in cells:
                    on_event({"event": "cell", "cell": Cell.from_dict(c).failed(failed)
                              .to_dict()})
                continue
            name = v.label if repeats == 1 else f"{v.label}.{r + 1}"
            job = Job(name=name, target=MEASURE_VARIANT, cells=cells, timeout=cfg.timeout,
                      payload={"config": config, "variant": v.label, "device": device,
                               "threads": threads, "settings": settings, "cells": cells,
                               "run_dir": str(rec.path)})
            executor.run(job, on_event)
    except KeyboardInterrupt as e:
        rec.finish("incomplete")
        raise interrupted(e, f"run {rec.id} kept its {sum(c.ok for c in rec.cells)} "
                          f"finished cells and is marked incomplete ({rec.path})") from None
    rec.finish("complete")
    emit({"event": "end", "run": rec.id})
    return rec
