"""The eval scenario: accuracy (top-1/top-5 with Wilson intervals) and parity with eager
fp32, over the same images for every variant.

``densebench eval`` (``densebench/eval.py``) reads and preprocesses the dataset once and
keeps the batches in the run directory (``EvalSettings.inputs``); each variant's worker
reads them there, takes the reference logits from the prepared variant (eager fp32, kept
in the artifact cache, so computed once for the run) and measures one cell: parity over
every image, top-1/top-5 where the images have labels, and the time of each full batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from densebench.errors import one_line
from densebench.measure.stats import summarize
from densebench.parity import ParityAccumulator
from densebench.results.schema import Cell
from densebench.scenarios import Emit, Scenario, register_scenario

INPUTS = "eval-inputs.pt"  # in the run directory: [(images, labels or None), ...]


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
class EvalSettings:
    inputs: str = INPUTS  # the preprocessed batches, relative to the run directory
    data: str = "synthetic"  # where they came from (a label)
    images: int | None = None
    meaningful: bool = False  # labelled data and trained weights
    not_meaningful_because: str | None = None


@register_scenario
class Eval(Scenario):
    NAME = "eval"
    DESCRIPTION = "accuracy and parity with eager fp32 over a dataset's images"
    Settings = EvalSettings
    MODES = ("e2e",)
    MODES_WHY = ": it feeds host images and reads host logits"
    DEFAULT_REPEATS = 1  # the numbers are counts, not timings

    def run(self, prepared, cells: list[Cell], settings: dict, emit: Emit, workdir) -> None:
        label = prepared.variant.label
        try:
            batches = torch.load(Path(workdir) / settings["inputs"], weights_only=True)
        except Exception as e:
            for planned in cells:
                emit({"event": "cell", "cell": planned.failed(
                    f"cannot read the evaluation images: {one_line(e)}").to_dict()})
            return
        for planned in cells:
            emit({"event": "phase", "variant": label, "phase": "evaluate"})
            try:
                cell = self.evaluate(prepared, planned, batches, settings, emit)
            except Exception as e:
                cell = planned.failed(one_line(e))
            emit({"event": "cell", "cell": cell.to_dict()})

    def evaluate(self, prepared, planned: Cell, batches: list, settings: dict,
                 emit: Emit) -> Cell:
        session, bs = prepared.session, planned.batch_size
        par = ParityAccumulator()
        top1 = top5 = images = 0
        labelled = False
        samples = []
        for i, (x, y) in enumerate(batches):
            ref = prepared.reference(x)
            t0 = time.perf_counter_ns()
            out = session.e2e(x)
            if len(x) == bs:  # a short last batch would skew the timing
                samples.append((time.perf_counter_ns() - t0) / 1e6)
            par.add(out, ref)
            images += len(x)
            if y is not None:
                labelled = True
                top1 += topk_correct(out, y, 1)
                top5 += topk_correct(out, y, 5)
            emit({"event": "batch", "variant": planned.variant, "done": i + 1})
        return Cell.from_dict({
            **planned.to_dict(), "status": "ok", "error": None, "parity": par.result(),
            "samples_ms": samples, "timer": "perf_counter_ns",
            "stats": summarize(samples, bs) if samples else None,
            "cold_start": {"load_s": prepared.cold_start["load_s"]},
            "model_size_mb": round(prepared.model_size_mb, 2) if prepared.artifact else None,
            "options": session.options,
            "accuracy": accuracy_result(top1, top5, images, settings["meaningful"],
                                        settings["not_meaningful_because"])
            if labelled else None,
        })
