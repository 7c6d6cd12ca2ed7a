"""PyTorch runtimes: eager (NCHW / channels_last / autocast), TorchScript, torch.compile,
AOTInductor."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch

from densebench.backends import Session

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TorchSession(Session):
    fn: object = None
    memory_format: torch.memory_format = torch.contiguous_format
    autocast: str | None = None

    @classmethod
    def create(cls, variant, loaded, device: str, artifact=None) -> TorchSession:
        dev_type = torch.device(device).type
        timer = "cuda" if dev_type == "cuda" else "host"
        options: dict = {"channels_last": variant.channels_last, "autocast": variant.autocast}
        mf = torch.channels_last if variant.channels_last else torch.contiguous_format
        if variant.backend in ("eager", "compile"):
            module = copy.deepcopy(loaded.module).eval().to(device)
            if variant.channels_last:
                module = module.to(memory_format=torch.channels_last)
            fn = module
            if variant.backend == "compile":
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True  # constant-fold weights: the inference setting
                mode = None if variant.compile_mode in (None, "default") else variant.compile_mode
                fn = torch.compile(module, mode=mode, dynamic=False)
                options.update(compile_mode=variant.compile_mode or "default", freezing=True,
                               dynamic=False)
        elif variant.backend == "torchscript":
            from densebench.exporters import load_artifact

            module = load_artifact(artifact, device).module
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = torch.jit.optimize_for_inference(module)
            options.update(optimize_for_inference=True, artifact=artifact.key)
        elif variant.backend == "aoti":
            from densebench.exporters import load_artifact

            fn = load_artifact(artifact, device)
            options.update(artifact=artifact.key)
        else:
            raise ValueError(f"not a PyTorch backend: {variant.backend}")
        return cls(label=variant.label, device=device, timer=timer, options=options, fn=fn,
                   memory_format=mf, autocast=variant.autocast)

    def __post_init__(self):
        # built once: the timed loop only enters the contexts
        self._device_type = torch.device(self.device).type
        self._dtype = _AUTOCAST[self.autocast] if self.autocast else None

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=False)
        if self.memory_format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self._dtype is None:
                return self.fn(x)
            with torch.autocast(self._device_type, dtype=self._dtype):
                return self.fn(x)

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().cpu()
