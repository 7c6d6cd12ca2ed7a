"""int8 with torchao's PT2E static quantization and torch.compile: the x86 Inductor
quantizer, calibrated on the run's calibration data (``densebench.calibration``), then
compiled with freezing (Inductor's int8 passes need it); ``densebench.quantize`` does the
quantizing. The ``aoti-int8`` variant is the same model compiled once into the cache.

Shapes are static: a batch size is exported, calibrated on batches of that size and
compiled on its first call (shown as ``compile``), so each batch size pays once. Variant
option ``autocast: bf16`` runs what is not int8 in bf16 (int8-mixed-bf16), and needs a
CPU with native bf16.
"""

from __future__ import annotations

import torch

from densebench.backends import register_backend
from densebench.backends._torch import TorchBackend
from densebench.quantize import QUANTIZER, quantize_pt2e, torchao_installed


class QuantizedByBatch:
    """The int8 model, exported, calibrated and compiled per batch size on first use."""

    def __init__(self, module: torch.nn.Module, calibration, image_size: int):
        self.module = module
        self.calibration = calibration
        self.image_size = image_size
        self.compiled: dict[int, object] = {}

    def _build(self, batch: int):
        import torch._inductor.config as inductor_config

        converted = quantize_pt2e(self.module, self.calibration.batches(self.image_size, batch))
        inductor_config.freezing = True  # the int8 passes run on frozen weights
        return torch.compile(converted, dynamic=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fn = self.compiled.get(len(x))
        if fn is None:
            fn = self.compiled[len(x)] = self._build(len(x))
        return fn(x)


@register_backend
class Pt2eBackend(TorchBackend):
    NAME = "pt2e"
    DESCRIPTION = "torchao PT2E int8 (x86 Inductor quantizer) + torch.compile with freezing"
    FIRST_CALL = "compile"
    CALIBRATED = True

    def supported(self, variant, device: str) -> str | None:
        if device != "cpu":
            return f"{variant.name} runs on the CPU (the x86 Inductor quantizer)"
        if not torchao_installed():
            return f"{variant.name} needs torchao: pip install torchao"
        return super().supported(variant, device)

    def versions(self) -> dict[str, str | None]:
        from densebench.backends import distribution_version

        return {"torch": torch.__version__, "torchao": distribution_version("torchao")}

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None, calibration=None, image_size=None):
        from densebench.calibration import Calibration

        calib = calibration or Calibration()
        fn = QuantizedByBatch(loaded.module.eval(), calib,
                              image_size or loaded.default_image_size)
        return self.session(variant, device, fn, {  # the session enters bf16 autocast
            "quantizer": QUANTIZER,
            "calibration": calib.identity(), "freezing": True, "dynamic": False})
