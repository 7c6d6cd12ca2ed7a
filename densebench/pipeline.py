"""The one pipeline every command goes through: plan a configuration's cells as typed
jobs, execute them on an executor, store each cell as it comes back.

``execute(RunConfig(...), kind=..., header=...)`` is the whole lifecycle: resolve the
device and the variants, check the model and its input size, create the run, export the
missing artifacts ahead (side by side, never beside a measurement), run every variant's
job (rounds interleaved across variants when there are repeats), keep each cell the
moment it arrives, and mark the run complete, or incomplete when interrupted. ``run``
and ``eval`` call it; a variant's job is ``measure_variant(payload, emit)`` in a worker
process: prepare the variant (``prepare.py``), then hand it to the run's scenario.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from densebench.artifacts import ArtifactCache
from densebench.backends import get_backend
from densebench.checksums import sha256_json
from densebench.config import RunConfig
from densebench.devices import resolve_device
from densebench.environment import fingerprint, host_identity
from densebench.errors import ConfigError, interrupted, one_line, threads_warning
from densebench.executors import Task, get_executor
from densebench.exporters import export_artifact, get_exporter, key_fields
from densebench.imaging import sources as jpeg_sources
from densebench.imaging.decoders import get_decoder
from densebench.models import check_image_size, load_model, model_stats
from densebench.prepare import artifact_spec, prepare_variant
from densebench.processes import this_process_start, usable_cores
from densebench.results.schema import Cell
from densebench.results.store import RunRecord, RunStore
from densebench.scenarios import get_scenario
from densebench.variants import expand, get_variant, left_out

Emit = Callable[[dict], None]
MEASURE_VARIANT = "densebench.pipeline:measure_variant"
EXPORT_VARIANT = "densebench.pipeline:export_variant"
MAX_EXPORT_LANES = 4  # exports side by side at most (each holds a model and its compiler)


# ============================================================================ the jobs


@dataclass
class MeasureTask(Task):
    """One variant's cells, measured in its worker: the payload of a run's or a sweep's job."""

    TARGET: ClassVar[str] = MEASURE_VARIANT
    config: dict  # RunConfig.to_dict()
    variant: str  # its label
    device: str
    threads: int | None  # None: the node's default
    settings: dict  # the scenario's settings
    cells: list[dict]  # planned (Cell.to_dict())
    run_dir: str
    skip_unsupported: bool = False  # a sweep's: a node that cannot run it skips its cells


@dataclass
class ExportTask(Task):
    """One artifact of the export phase: the payload of an export job."""

    TARGET: ClassVar[str] = EXPORT_VARIANT
    config: dict
    variants: list[str]  # every variant of the run that uses this artifact
    device: str
    threads: int
    image_size: int


def measure_variant(payload: dict, emit: Emit) -> None:
    """One variant's planned cells: prepare it, then let the scenario measure them."""
    task = MeasureTask.from_payload(payload)
    cfg = RunConfig(**task.config)
    variant = get_variant(task.variant)
    threads = task.threads or torch.get_num_threads()  # None: this node's default
    torch.set_num_threads(threads)
    host = host_identity()  # where this job really runs (a remote node, say)
    worker = worker_identity(threads)
    cells = [Cell.from_dict({**c, "host": host, "threads": threads, "worker": worker})
             for c in task.cells]
    label = variant.label
    why = get_backend(variant.backend).supported(variant, task.device)
    if why is not None and task.skip_unsupported:  # a sweep: this node can't
        for c in cells:
            emit({"event": "cell", "cell": dataclasses.replace(
                c, status="skipped", error=why).to_dict()})
        return
    scenario, workdir = get_scenario(cfg.scenario), Path(task.run_dir)
    try:
        prepared = prepare_variant(
            variant, cfg.model_ref(), task.device, threads,
            phase=lambda name: emit({"event": "phase", "variant": label, "phase": name}),
            **scenario.prepare_options(workdir, label))
    except Exception as e:
        for c in cells:
            emit({"event": "cell", "cell": c.failed(one_line(e)).to_dict()})
        return
    emit({"event": "variant", "variant": label, "info": prepared.info()})
    scenario.run(prepared, cells, task.settings, emit, workdir)


def export_variant(payload: dict, emit: Emit) -> None:
    """One artifact of the run's export phase, into the cache; says how it went in an
    ``exported`` event (``export_s`` and ``key``, or ``error``)."""
    task = ExportTask.from_payload(payload)
    cfg = RunConfig(**task.config)
    torch.set_num_threads(task.threads)
    variants = task.variants
    variant = get_variant(variants[0])
    t0 = time.perf_counter()
    try:
        spec = artifact_spec(variant, cfg.model_ref(), task.device, task.image_size)
        art, cached = export_artifact(spec, progress=lambda what: emit(
            {"event": "phase", "variant": variant.label, "phase": what}))
    except Exception as e:
        emit({"event": "exported", "variants": variants, "error": one_line(e)})
        return
    emit({"event": "exported", "variants": variants, "key": art.key, "cached": cached,
          "export_s": round(time.perf_counter() - t0, 3)})


def export_order(groups: list[list]) -> list[list]:
    """The export phase's order, each group the variants sharing one artifact: the compiled
    packages first (the longest export starts at once, the others fill the other lanes),
    then fp32 before what is quantized from it (an int8 export waits for its fp32 base:
    started together they would hold two lanes for the work of one); otherwise as given."""
    return sorted(groups, key=lambda vs: (not get_exporter(vs[0].artifact[0]).DEVICE_BOUND,
                                          vs[0].artifact[1] != "fp32"))


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
    groups = export_order(list(missing.values()))
    jobs = [ExportTask(config=config, variants=[v.label for v in vs], device=device,
                       threads=max(1, cores // lanes), image_size=image_size)
            .job(f"export-{vs[0].label}", timeout=cfg.timeout) for vs in groups]
    emit({"event": "export_ahead", "variants": [vs[0].label for vs in groups],
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
    env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
    return {"pid": os.getpid(), "threads": threads, "torch_threads": torch.get_num_threads(),
            "env": {k: os.environ.get(k) for k in env},
            **({"ray_node_id": os.environ["DENSEBENCH_RAY_NODE_ID"]}
               if os.environ.get("DENSEBENCH_RAY_NODE_ID") else {})}


def plan_cells(cfg: RunConfig, variant, device: str, threads: int, settings: dict,
               host: dict, repeat: int = 0) -> list[Cell]:
    """Every cell of ``variant``: each batch size in each mode; e2e-jpeg cells once per
    decode-worker count (an axis of their own)."""
    return [Cell(model=cfg.model, variant=variant.label, batch_size=bs, mode=mode,
                 device=device, scenario=cfg.scenario, host=host, status="planned",
                 repeat=repeat, axes=axes,
                 precision=variant.precision, backend=variant.backend,
                 description=variant.description, threads=threads,
                 scenario_settings=settings)
            for bs in cfg.cell_batch_sizes() for mode in cfg.cell_modes()
            for axes in ([{"decode_workers": n} for n in cfg.decode_workers or [0]]
                         if mode == "e2e-jpeg" else [{}])]


def jpeg_source(cfg: RunConfig, device: str) -> dict:
    """The JPEG path's settings for the workers, checked here before the run is created:
    its images found (synthetic ones encoded into the cache), its decoder able to run on
    ``device``, and with ``strict`` every image decodable. {} without e2e-jpeg cells."""
    if "e2e-jpeg" not in cfg.cell_modes():
        return {}
    decoder = get_decoder(cfg.decoder)
    why = decoder.supported(device)
    if why is not None:
        raise ConfigError(f"decoder {cfg.decoder} {why}: choose another with --decoder",
                          setting="decoder")
    source = jpeg_sources.resolve(cfg.jpeg_input())
    if cfg.strict:
        bad = jpeg_sources.unreadable(source, decoder, device)
        if bad:
            raise jpeg_sources.ImageDataError(
                f"{len(bad)} of the {len(source)} images of {source.spec} cannot be decoded "
                f"(first: {bad[0][0]}: {bad[0][1]}): fix or remove them, or drop --strict "
                "to count and skip them")
    return {"input": source.resolved_spec(), "decoder": cfg.decoder, "strict": cfg.strict,
            "input_described": source.describe()}


# ============================================================================ the run


def execute(cfg: RunConfig, *, kind: str = "benchmark", header: dict | None = None,
            on_created: Callable[[RunRecord], None] | None = None,
            progress: Emit | None = None, store: RunStore | None = None) -> RunRecord:
    """Plan, execute and store every cell of ``cfg``: the one pipeline of every command.
    ``kind`` and ``header`` go into the run file; ``on_created`` sees the new run before
    any job starts (to keep what the jobs read there). Returns the stored run, complete,
    or marked incomplete when interrupted (KeyboardInterrupt, SIGTERM, SIGHUP)."""
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
    jpeg = jpeg_source(cfg, device)
    store = store or RunStore()
    rec = store.create(kind, cfg.name, cfg.to_dict(), env, extra={
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
        **({"jpeg_input": jpeg["input_described"]} if jpeg else {}),
        **(header or {}),
    })
    if on_created is not None:
        on_created(rec)
    for w in warnings:
        emit({"event": "warning", "message": w})
    repeats = cfg.effective_repeats()
    rec.data["repeats"] = {"processes_per_cell": repeats, "interleaved": repeats > 1,
                           "independent": cfg.executor != "inline"}
    per_variant = len(plan_cells(cfg, variants[0], device, threads, {}, {})) if variants else 0
    emit({"event": "start", "run": rec.id, "path": str(rec.path), "variants": rec.data["plan"],
          "cells": len(variants) * per_variant * repeats, "skipped": skipped,
          "repeats": repeats})
    config = cfg.to_dict()
    settings = {**get_scenario(cfg.scenario).record(cfg, threads),
                **{k: v for k, v in jpeg.items() if k != "input_described"}}
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
            task = MeasureTask(config=config, variant=v.label, device=device,
                               threads=threads, settings=settings, cells=cells,
                               run_dir=str(rec.path))
            executor.run(task.job(name, timeout=cfg.timeout), on_event)
    except KeyboardInterrupt as e:
        rec.finish("incomplete")
        raise interrupted(e, f"run {rec.id} kept its {sum(c.ok for c in rec.cells)} "
                          f"finished cells and is marked incomplete ({rec.path})") from None
    rec.finish("complete")
    emit({"event": "end", "run": rec.id})
    return rec
