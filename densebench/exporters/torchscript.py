"""TorchScript: traced, frozen."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from densebench.exporters import Exporter, register_exporter

MAIN = "model.ts"


@register_exporter
class TorchScriptExporter(Exporter):
    FORMAT = "torchscript"

    def export(self, loaded, spec, out: Path, example: torch.Tensor, *, cache, progress
               ) -> tuple[str, dict]:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(loaded.module, example, check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
            torch.jit.save(frozen, str(out / MAIN))
        return MAIN, {"exporter": "torch.jit.trace + torch.jit.freeze"}

    def load(self, path: Path, device: str, fields: dict):
        with warnings.catch_warnings():
            # torch.jit is deprecated, but it is the artifact asked for
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device).eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        run.module = module  # type: ignore[attr-defined]
        return run
