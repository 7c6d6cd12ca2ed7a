"""AOTInductor: the torch.export + AOTInductor package from the cache."""

from __future__ import annotations

from densebench.backends import register_backend
from densebench.backends._torch import TorchBackend


@register_backend
class AotiBackend(TorchBackend):
    NAME = "aoti"
    DESCRIPTION = "torch.export + AOTInductor package from the artifact cache"

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        from densebench.exporters import load_artifact

        return self.session(variant, device, load_artifact(artifact, device),
                            {"artifact": artifact.key})
