"""OpenVINO's CPU plugin on an IR artifact from the cache (fp32, or NNCF int8).

The execution precision is set explicitly and read back from the compiled model: on a CPU
with AVX512_BF16 or AMX the plugin runs bf16 unless told f32, which would mislabel an
"fp32" result. ``openvino-bf16`` needs a CPU with native bf16 (elsewhere the plugin quietly
stays f32). Latency hint, one stream, the run's threads. Serving several at once (the
LoadGen scenarios' ``--instances N``) is OpenVINO's own multi-stream form: one model
compiled with the throughput hint and N streams (N x the threads), one infer request per
instance; the hint and the streams read back are recorded with the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from densebench.backends import Backend, Session, distribution_version, register_backend

_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}  # int8: the rest stays f32


@dataclass
class OpenVinoSession(Session):
    request: object = None

    def to_device(self, x: torch.Tensor):
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)

    def __call__(self, x):
        return self.request.infer({0: x})[0]

    def to_host(self, out) -> torch.Tensor:
        return torch.from_numpy(np.array(out, dtype=np.float32))


@register_backend
class OpenVinoBackend(Backend):
    NAME = "openvino"
    DESCRIPTION = "OpenVINO CPU plugin on an IR artifact, precision set and read back"

    def supported(self, variant, device: str) -> str | None:
        from densebench.environment import cpu_supports_bf16

        if device != "cpu":
            return f"{variant.name} runs on the CPU (OpenVINO's GPU plugin is for Intel GPUs)"
        try:
            import openvino  # noqa: F401
        except ImportError:
            return f"{variant.name} needs OpenVINO: pip install openvino"
        if variant.precision == "bf16" and not cpu_supports_bf16():
            return (f"{variant.name} needs a CPU with native bf16 (AVX-512 BF16 or AMX); on "
                    "this CPU OpenVINO would quietly run f32")
        return None

    def versions(self) -> dict[str, str | None]:
        return {"openvino": distribution_version("openvino"),
                "nncf": distribution_version("nncf")}

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        compiled, got = self._compile(variant, artifact, threads, "LATENCY", None)
        return self._session(variant, device, compiled, got, threads, artifact)

    def instance_sessions(self, variant, loaded, device, n, *, artifact=None, threads=None,
                          **context):
        total = threads * n if threads else None
        compiled, got = self._compile(variant, artifact, total, "THROUGHPUT", n)
        return [self._session(variant, device, compiled, got, threads, artifact)
                for _ in range(n)]

    def _compile(self, variant, artifact, threads, hint: str, streams: int | None):
        from densebench.errors import VariantError
        from densebench.exporters.openvino import compile_model

        artifact.verify()
        artifact.touch()
        asked = _PRECISION[variant.precision]
        compiled, got = compile_model(artifact.main_file, asked, threads, hint, streams)
        if got != asked:
            raise VariantError(f"{variant.name}: OpenVINO compiled with {got} where {asked} "
                               "was asked for: refusing a mislabelled result")
        return compiled, got

    def _session(self, variant, device, compiled, got: str, threads, artifact):
        return OpenVinoSession(
            label=variant.label, device=device, timer="host",
            options={"inference_precision": got,
                     "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
                     "num_streams": int(compiled.get_property("NUM_STREAMS")),
                     "threads": threads, "artifact": artifact.key},
            request=compiled.create_infer_request())
