"""Parity: how far a variant's logits are from eager fp32's on the same inputs.

One module for all of it: the fixed input every parity check uses, each precision's
threshold, one parity record (``ParityAccumulator.result()``, whether over one batch or a
whole dataset), the judgement against the threshold, and the eager logits kept in the
artifact cache so the workers of a run compute them once.

A record: ``max_abs_error``, ``mean_abs_error``, ``max_abs_reference`` (the largest
reference logit, which the thresholds are relative to), ``cosine_similarity_min`` and
``_mean``, ``top1_agreement`` and ``images``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from densebench.checksums import sha256_json

SEED = 1234

# How far a precision's logits may be from eager fp32 on the parity input, relative to the
# largest reference logit: fp32 runtimes reorder sums (1e-4); fp16 and bf16 keep 11 and 8
# bits of mantissa; int8 quantizes activations and weights to 256 levels (10%). Beyond
# it, a result is flagged in the table, not hidden.
THRESHOLDS = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int8": 1e-1}


def threshold(precision: str | None) -> float:
    """The largest error relative to the largest reference logit ``precision`` allows."""
    return THRESHOLDS.get(precision or "fp32", THRESHOLDS["fp32"])


def fixed_input(batch: int, image_size: int, seed: int = SEED) -> torch.Tensor:
    """The fixed input every parity check uses: standard normal, like normalised images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, image_size, image_size, generator=g)


def within(precision: str | None, parity: dict | None) -> bool | None:
    """Whether ``parity`` is within ``precision``'s threshold (None: nothing to judge, or
    a record without the reference's scale, as stored before it was kept)."""
    if not parity or parity.get("max_abs_error") is None:
        return None
    scale = parity.get("max_abs_reference")
    if not scale:
        return None
    return parity["max_abs_error"] / scale <= threshold(precision)


class ParityAccumulator:
    """Parity of a variant's logits with the reference, over one batch or many."""

    def __init__(self):
        self.n = 0
        self.agree = 0
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.values = 0
        self.max_ref = 0.0
        self.cos_min = 1.0
        self.cos_sum = 0.0

    def add(self, out: torch.Tensor, ref: torch.Tensor) -> ParityAccumulator:
        out = out.detach().float().cpu().flatten(1)
        ref = ref.detach().float().cpu().flatten(1)
        err = (out - ref).abs()
        self.n += out.shape[0]
        self.agree += int((out.argmax(1) == ref.argmax(1)).sum())
        self.max_abs = max(self.max_abs, float(err.max()))
        self.abs_sum += float(err.sum())
        self.values += err.numel()
        self.max_ref = max(self.max_ref, float(ref.abs().max()))
        cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
        self.cos_min = min(self.cos_min, float(cos.min()))
        self.cos_sum += float(cos.sum())
        return self

    def result(self) -> dict:
        return {"top1_agreement": self.agree / self.n if self.n else None,
                "max_abs_error": self.max_abs,
                "mean_abs_error": self.abs_sum / self.values if self.values else None,
                "max_abs_reference": self.max_ref,
                "cosine_similarity_min": self.cos_min,
                "cosine_similarity_mean": self.cos_sum / self.n if self.n else None,
                "images": self.n}


def parity_stats(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """The parity record of one batch."""
    return ParityAccumulator().add(out, ref).result()


def kept_reference(directory: Path, loaded, x: torch.Tensor,
                   compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``'s logits for ``x``, read from ``directory`` when kept there, else
    computed and kept (written whole, then renamed). A file that cannot be read, or holds
    logits of the wrong shape, is computed again and replaced."""
    x = x.detach().cpu().contiguous()
    key = sha256_json({"model": loaded.name, "weights": loaded.weights_id,
                       "num_classes": loaded.num_classes, "torch": torch.__version__,
                       "shape": list(x.shape), "dtype": str(x.dtype),
                       "input": hashlib.sha256(x.numpy().tobytes()).hexdigest()})
    path = directory / f"{key[:32]}.pt"
    want = (x.shape[0], loaded.num_classes)
    try:
        kept = torch.load(path, weights_only=True)
        if isinstance(kept, torch.Tensor) and tuple(kept.shape) == want and \
                kept.dtype == torch.float32:
            return kept
    except Exception:  # absent, or damaged: computed again below
        pass
    ref = compute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        torch.save(ref.detach().cpu().clone(), tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the logits are simply not kept
        pass
    return ref
