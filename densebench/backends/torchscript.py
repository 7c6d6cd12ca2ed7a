"""TorchScript: the traced, frozen artifact from the cache, with optimize_for_inference."""

from __future__ import annotations

import warnings

from densebench.backends import register_backend
from densebench.backends._torch import TorchBackend


@register_backend
class TorchScriptBackend(TorchBackend):
    NAME = "torchscript"
    DESCRIPTION = "TorchScript artifact, torch.jit.optimize_for_inference"

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        import torch

        from densebench.exporters import load_artifact

        module = load_artifact(artifact, device).module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = torch.jit.optimize_for_inference(module)
        return self.session(variant, device, fn, {"optimize_for_inference": True,
                                                  "artifact": artifact.key})
