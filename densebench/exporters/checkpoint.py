"""Checkpoint: the model's state_dict with what is needed to rebuild it (fp32 or fp16)."""

from __future__ import annotations

from pathlib import Path

import torch

from densebench.exporters import Exporter, register_exporter
from densebench.models import get_entry

MAIN = "model.pt"


@register_exporter
class CheckpointExporter(Exporter):
    FORMAT = "checkpoint"
    PRECISIONS = ("fp32", "fp16")

    def export(self, loaded, spec, out: Path, example: torch.Tensor, *, cache, progress
               ) -> tuple[str, dict]:
        dtype = torch.float16 if spec.precision == "fp16" else torch.float32
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v)
            for k, v in loaded.module.state_dict().items()
        }
        torch.save({
            "format": "densebench-checkpoint",
            "model": loaded.name,
            "num_classes": loaded.num_classes,
            "weights": loaded.weights_id,
            "precision": spec.precision,
            "state_dict": state,
        }, out / MAIN)
        return MAIN, {"exporter": "torch.save(state_dict)"}

    def load(self, path: Path, device: str, fields: dict):
        module = build_module(path, device)
        dtype = next(module.parameters()).dtype

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x.to(dtype))

        run.module = module  # type: ignore[attr-defined]
        return run


def build_module(path: Path, device: str = "cpu") -> torch.nn.Module:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        module = get_entry(ckpt["model"]).builder(num_classes=ckpt["num_classes"])
    module.load_state_dict(ckpt["state_dict"], assign=True)
    return module.eval().to(device)

