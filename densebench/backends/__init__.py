"""Backends: one small protocol over every runtime.

``build_session(variant, ...)`` loads a variant on a device and returns a ``Session``:

- ``to_device(x_host)``: the input as the runtime wants it on the device (untimed in
  ``model`` mode);
- ``session(x_dev)``: compute only, output left on the device;
- ``to_host(out)``: logits as a float32 CPU tensor;
- ``e2e(x_host)``: host tensor in, host logits out (``end-to-end`` mode);
- ``timer``: ``cuda`` (CUDA events around each call) or ``host`` (perf_counter_ns, after
  the runtime has synchronised).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass
class Session(ABC):
    label: str
    device: str
    timer: str = "host"
    options: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @abstractmethod
    def to_device(self, x: torch.Tensor):
        """The input as the runtime takes it, on the device."""

    @abstractmethod
    def __call__(self, x):
        """Compute only; the output stays where the runtime put it."""

    @abstractmethod
    def to_host(self, out) -> torch.Tensor:
        """Logits as a float32 CPU tensor."""

    def e2e(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_host(self(self.to_device(x)))

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)


def build_session(variant, loaded, device: str, *, artifact=None, threads: int | None = None,
                  trt_cache=None) -> Session:
    if variant.backend == "onnxruntime":
        from densebench.backends.ort import OrtSession

        return OrtSession.create(variant, artifact, device, threads=threads, trt_cache=trt_cache)
    from densebench.backends.pytorch import TorchSession

    return TorchSession.create(variant, loaded, device, artifact=artifact)
