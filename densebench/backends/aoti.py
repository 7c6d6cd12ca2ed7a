"""AOTInductor: the torch.export + AOTInductor package from the cache."""

from __future__ import annotations

from densebench.backends import register_backend
from densebench.backends._torch import TorchBackend


@register_backend
class AotiBackend(TorchBackend):
    NAME = "aoti"
    DESCRIPTION = "torch.export + AOTInductor package from the artifact cache"

    def supported(self, variant, device: str) -> str | None:
        if variant.precision == "int8":
            from densebench.quantize import torchao_installed

            if device != "cpu":
                return f"{variant.name} runs on the CPU (the x86 Inductor quantizer)"
            if not torchao_installed():
                return f"{variant.name} needs torchao: pip install torchao"
        return super().supported(variant, device)

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        from densebench.exporters import load_artifact

        return self.session(variant, device, load_artifact(artifact, device),
                            {"artifact": artifact.key})
