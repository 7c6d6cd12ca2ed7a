"""ONNX Runtime: CPU, CUDA (IO binding) and TensorRT providers; never a silent fallback."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from densebench.backends import Session
from densebench.exporters.onnx import INPUT, OUTPUT, input_dtype, make_session


@dataclass
class OrtSession(Session):
    session: object = None
    dtype: type = np.float32

    @classmethod
    def create(cls, variant, artifact, device: str, *, threads: int | None = None,
               trt_cache=None, profile_prefix: str | None = None) -> OrtSession:
        artifact.verify()
        artifact.touch()
        target = device
        if variant.provider == "tensorrt":
            index = torch.device(device).index or 0
            target = f"tensorrt:{index}"
        sess = make_session(artifact.main_file, target, threads=threads,
                            profile_prefix=profile_prefix, trt_cache=trt_cache,
                            fp16=variant.precision == "fp16")
        cuda = device.startswith("cuda")
        options = {"providers": sess.get_providers(), "threads": threads,
                   "graph_optimization": "ORT_ENABLE_ALL", "io_binding": cuda,
                   "artifact": artifact.key}
        klass = OrtCudaSession if cuda else cls
        return klass(label=variant.label, device=device, timer="host", options=options,
                     session=sess, dtype=input_dtype(sess))

    def to_device(self, x: torch.Tensor):
        return np.ascontiguousarray(x.detach().cpu().numpy().astype(self.dtype, copy=False))

    def __call__(self, x):
        return self.session.run([OUTPUT], {INPUT: x})[0]

    def to_host(self, out) -> torch.Tensor:
        return torch.from_numpy(np.asarray(out)).float()


@dataclass
class OrtCudaSession(OrtSession):
    """Inputs and outputs bound on the GPU (IO binding): no host copies in ``model`` mode."""

    def _index(self) -> int:
        return torch.device(self.device).index or 0

    def to_device(self, x: torch.Tensor):
        import onnxruntime as ort

        arr = np.ascontiguousarray(x.detach().cpu().numpy().astype(self.dtype, copy=False))
        return ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self._index())

    def __call__(self, x):
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT, x)
        binding.bind_output(OUTPUT, "cuda", self._index())
        self.session.run_with_iobinding(binding)
        return binding

    def to_host(self, out) -> torch.Tensor:
        return torch.from_numpy(out.copy_outputs_to_cpu()[0]).float()
