"""torch.compile (Inductor) with freezing: the first call compiles."""

from __future__ import annotations

from densebench.backends import register_backend
from densebench.backends._torch import TorchBackend


@register_backend
class CompileBackend(TorchBackend):
    NAME = "compile"
    DESCRIPTION = "torch.compile with Inductor, weights frozen, static shapes"
    FIRST_CALL = "compile"
    MODES = ("default", "reduce-overhead", "max-autotune")

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        import torch
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold weights: the inference setting
        mode = None if variant.mode in (None, "default") else variant.mode
        fn = torch.compile(self.module(variant, loaded, device), mode=mode, dynamic=False)
        return self.session(variant, device, fn, {
            "compile_mode": variant.mode or "default", "freezing": True, "dynamic": False})
