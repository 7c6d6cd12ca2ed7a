"""`densebench eval` as a library: accuracy (top-1/top-5 with Wilson intervals) and parity
with the fp32 reference, every variant over the same images, stored as a run of kind
``eval`` whose cells have the scenario ``eval``.

The command reads and preprocesses the dataset here, once, and refuses what cannot be
evaluated (a class-count mismatch, no readable image) before anything is stored; then the
one pipeline (``pipeline.execute``) runs each variant in its own worker process, where the
``eval`` scenario (``scenarios/eval.py``) reads the batches kept in the run directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision

from densebench import data as data_mod
from densebench.devices import resolve_device
from densebench.errors import bad_setting, check_threads
from densebench.models import check_image_size, get_entry, load_model
from densebench.pipeline import Emit, execute
from densebench.run import RunConfig
from densebench.scenarios.eval import INPUTS


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
    executor: str = "subprocess"  # each variant in its own worker process

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
    emit = progress or (lambda ev: None)
    resolve_device(cfg.device)  # a CUDA request on a CPU machine is refused first
    source = data_mod.Source.parse(cfg.data)
    loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
    image_size = cfg.image_size or (224 if source.kind == "cifar10"
                                    else loaded.default_image_size)
    check_image_size(cfg.model, image_size, cfg.num_classes)
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
    why = None
    if ds.num_classes is None:
        why = "synthetic data has no labels"
    elif loaded.random_weights:
        why = "random weights" if not loaded.head_replaced else "random classifier head"

    emit({"event": "phase", "variant": "images", "phase": f"reading {source.label}"})
    batches = list(ds.batches(cfg.batch_size, strict=cfg.strict))
    n_images = sum(len(x) for x, _ in batches)
    if n_images == 0:
        raise data_mod.DataError(f"{source.label}: none of its {len(ds)} images could be read")
    run_cfg = RunConfig(
        model=cfg.model, weights=cfg.weights, num_classes=cfg.num_classes,
        image_size=image_size, variants=cfg.variants, batch_sizes=[cfg.batch_size],
        device=cfg.device, threads=cfg.threads, scenario="eval", repeats=1,
        executor=cfg.executor, name=cfg.name,
        settings={"inputs": INPUTS, "data": source.label, "images": n_images,
                  "meaningful": ds.num_classes is not None and not loaded.random_weights,
                  "not_meaningful_because": why})
    header = {"eval": asdict(cfg), "data": {
        "source": source.label, "images": n_images, "requested": len(ds),
        "unreadable": len(ds.unreadable), "unreadable_examples": ds.unreadable[:10],
        "classes": ds.num_classes, "notes": ds.notes,
        "split": cfg.split if source.kind == "cifar10" else None}}

    kept: list[Path] = []

    def keep_images(rec) -> None:  # where every variant's worker reads them, while it runs
        kept.append(rec.path / INPUTS)
        torch.save(batches, kept[0])

    try:
        return execute(run_cfg, kind="eval", header=header, on_created=keep_images,
                       progress=progress)
    finally:  # the run keeps its results, not a copy of the dataset
        for f in kept:
            f.unlink(missing_ok=True)
