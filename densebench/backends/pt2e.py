"""int8 with torchao's PT2E static quantization and torch.compile: the x86 Inductor
quantizer, calibrated on the run's calibration data (``densebench.calibration``), then
compiled with freezing (Inductor's int8 passes need it). In torch 2.14 PT2E lives in
``torchao``, not ``torch.ao``.

Shapes are static: a batch size is exported, calibrated on batches of that size and
compiled on its first call (shown as ``compile``), so each batch size pays once. Variant
option ``autocast: bf16`` runs what is not int8 in bf16 (int8-mixed-bf16), and needs a
CPU with native bf16.
"""

from __future__ import annotations

import torch

from densebench.backends import register_backend
from densebench.backends._torch import TorchBackend


def _require_torchao():
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        return None
    return xiq, prepare_pt2e, convert_pt2e


class QuantizedByBatch:
    """The int8 model, exported, calibrated and compiled per batch size on first use."""

    def __init__(self, module: torch.nn.Module, calibration, image_size: int):
        self.module = module
        self.calibration = calibration
        self.image_size = image_size
        self.compiled: dict[int, object] = {}

    def _build(self, batch: int):
        import torch._inductor.config as inductor_config

        xiq, prepare_pt2e, convert_pt2e = _require_torchao()
        batches = self.calibration.batches(self.image_size, batch)
        # quantized in fp32 even under the session's bf16 autocast (int8-mixed-bf16 runs
        # the compiled model under autocast, as the session does)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            exported = torch.export.export(self.module, (batches[0],)).module()
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)
            for x in batches:
                prepared(x)
            converted = convert_pt2e(prepared)
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
        if _require_torchao() is None:
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
            "quantizer": "X86InductorQuantizer (static, per-channel weights)",
            "calibration": calib.identity(), "freezing": True, "dynamic": False})
