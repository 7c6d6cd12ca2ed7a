"""`densebench eval` as a library: accuracy (top-1/top-5 with Wilson intervals) and parity
with the fp32 reference, every variant over the same images, stored as a run whose cells
have the scenario ``eval``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from densebench.errors import bad_setting, check_threads, interrupted, one_line
from densebench.parity import ParityAccumulator
from densebench.results.schema import Cell

Emit = Callable[[dict], None]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        raise ValueError("no trials")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels.unsqueeze(1)).any(dim=1).sum())


def accuracy_result(top1: int, top5: int, n: int, meaningful: bool, why: str | None) -> dict:
    return {"top1": top1 / n, "top5": top5 / n, "top1_ci": wilson_interval(top1, n),
            "top5_ci": wilson_interval(top5, n), "images": n, "top1_correct": top1,
            "top5_correct": top5, "meaningful": meaningful, "not_meaningful_because": why}


@dataclass
class EvalConfig:
    variants: list[str]
    data: str = "synthetic"
    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    batch_size: int = 32
    limit: int | None = None
    device: str = "auto"
    threads: int | None = None
    strict: bool = False
    download: bool = False
    split: str = "test"
    name: str | None = None

    def __post_init__(self):
        if not self.variants:
            raise bad_setting("variants", "is empty: name at least one variant (or all)")
        if self.batch_size < 1:
            raise bad_setting("batch_size", f"must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise bad_setting("limit", f"must be at least 1, got {self.limit}")
        check_threads(self.threads)


def run_eval(cfg: EvalConfig, *, progress: Emit | None = None):
    """Evaluate every variant on the same images; store and return the run (kind 'eval')."""
    import sys

    import torchvision

    from densebench import data as data_mod
    from densebench.devices import resolve_device
    from densebench.environment import fingerprint, host_identity
    from densebench.measure.stats import summarize
    from densebench.models import check_image_size, get_entry, load_model
    from densebench.prepare import ModelRef, prepare_variant
    from densebench.results.store import RunStore
    from densebench.variants import expand

    emit = progress or (lambda ev: None)
    device = resolve_device(cfg.device)
    variants, skipped = expand(cfg.variants, ["default"], device)
    source = data_mod.Source.parse(cfg.data)
    loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
    image_size = cfg.image_size or (224 if source.kind == "cifar10"
                                    else loaded.default_image_size)
    check_image_size(cfg.model, image_size, cfg.num_classes)
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    weights_enum = None
    entry = get_entry(cfg.model)
    if loaded.weights.kind == "imagenet" and entry.torchvision_name:
        weights_enum = torchvision.models.get_model_weights(entry.torchvision_name).DEFAULT
    ds = data_mod.load(source, image_size, weights_enum=weights_enum, limit=cfg.limit,
                       download=cfg.download, split=cfg.split)
    if ds.num_classes is not None and ds.num_classes != loaded.num_classes:
        raise data_mod.DataError(
            f"the model has {loaded.num_classes} classes but {source.label} has "
            f"{ds.num_classes}: top-1 would mean nothing; pass --num-classes "
            f"{ds.num_classes} with weights trained for it"
        )
    meaningful = ds.num_classes is not None and not loaded.random_weights
    why = None
    if ds.num_classes is None:
        why = "synthetic data has no labels"
    elif loaded.random_weights:
        why = ("random weights" if not loaded.head_replaced
               else "random classifier head")

    # the reference: eager fp32 on the CPU, once, over the same preprocessed images
    emit({"event": "phase", "variant": "reference", "phase": "eager fp32 reference"})
    batches: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    refs: list[torch.Tensor] = []
    for x, y in ds.batches(cfg.batch_size, strict=cfg.strict):
        with torch.inference_mode():
            refs.append(loaded.module(x))
        batches.append((x, y))
        emit({"event": "batch", "variant": "reference", "done": len(batches)})
    n_images = sum(len(x) for x, _ in batches)
    if n_images == 0:
        raise data_mod.DataError(
            f"{source.label}: none of its {len(ds)} images could be read"
        )

    store = RunStore()
    rec = store.create("eval", cfg.name, asdict(cfg), fingerprint(), extra={
        "command": sys.argv, "device": device, "threads": threads,
        "model": {"name": cfg.model, "weights": loaded.weights.label,
                  "weights_id": loaded.weights_id, "random_weights": loaded.random_weights,
                  "weights_description": loaded.describe_weights(),
                  "num_classes": loaded.num_classes, "image_size": image_size},
        "data": {"source": source.label, "images": n_images, "requested": len(ds),
                 "unreadable": len(ds.unreadable), "unreadable_examples": ds.unreadable[:10],
                 "classes": ds.num_classes, "notes": ds.notes, "split": cfg.split
                 if source.kind == "cifar10" else None},
        "skipped": skipped,
    })
    emit({"event": "start", "run": rec.id, "batches": len(batches) * len(variants)})
    ref = ModelRef(cfg.model, cfg.weights, cfg.num_classes, image_size)
    host = host_identity()
    settings = {"data": source.label, "images": n_images, "batch_size": cfg.batch_size}
    try:
        for v in variants:
            cell = Cell(model=cfg.model, variant=v.label, batch_size=cfg.batch_size,
                        mode="e2e", device=device, scenario="eval", host=host,
                        precision=v.precision, backend=v.backend, description=v.description,
                        threads=threads, scenario_settings=settings)
            try:
                prepared = prepare_variant(v, ref, device, threads, loaded=loaded,
                                           phase=lambda name, v=v: emit({
                                               "event": "phase", "variant": v.label,
                                               "phase": name}))
                session = prepared.session
                emit({"event": "phase", "variant": v.label, "phase": "evaluate"})
                par = ParityAccumulator()
                top1 = top5 = 0
                samples = []
                for i, ((x, y), ref_out) in enumerate(zip(batches, refs, strict=True)):
                    t0 = time.perf_counter_ns()
                    out = session.e2e(x)
                    if len(x) == cfg.batch_size:  # a short last batch would skew the timing
                        samples.append((time.perf_counter_ns() - t0) / 1e6)
                    par.add(out, ref_out)
                    if y is not None:
                        top1 += topk_correct(out, y, 1)
                        top5 += topk_correct(out, y, 5)
                    emit({"event": "batch", "variant": v.label, "done": i + 1})
                cell.parity = par.result()
                cell.samples_ms = samples
                cell.cold_start = {"load_s": prepared.cold_start["load_s"]}
                cell.timer = "perf_counter_ns"
                cell.stats = summarize(samples, cfg.batch_size) if samples else None
                cell.model_size_mb = (round(prepared.artifact.size_bytes / 1e6, 2)
                                      if prepared.artifact else None)
                cell.options = session.options
                if ds.num_classes is not None:
                    cell.accuracy = accuracy_result(top1, top5, n_images, meaningful, why)
            except Exception as e:
                cell = cell.failed(one_line(e))
            rec.add_cell(cell)
            emit({"event": "cell", "cell": cell.to_dict()})
    except KeyboardInterrupt as e:
        rec.finish("incomplete")
        raise interrupted(e, f"eval run {rec.id} kept its finished variants and is marked "
                          "incomplete") from None
    rec.finish("complete")
    return rec
