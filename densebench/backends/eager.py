"""Eager PyTorch: NCHW or channels_last, with or without autocast."""

from __future__ import annotations

from densebench.backends import register_backend
from densebench.backends._torch import TorchBackend


@register_backend
class EagerBackend(TorchBackend):
    NAME = "eager"
    DESCRIPTION = "PyTorch eager (memory format and autocast from the variant)"

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        return self.session(variant, device, self.module(variant, loaded, device))
