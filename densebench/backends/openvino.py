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
from pathlib import Path

import numpy as np
import torch

from densebench.backends import Backend, Session, distribution_version, register_backend
from densebench.errors import VariantError

_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}  # int8: the rest stays f32


def require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise VariantError("openvino variants need OpenVINO: pip install openvino "
                           "(make install installs it)") from None
    return ov


def compile_model(path: Path, precision: str = "f32", threads: int | None = None,
                  hint: str = "LATENCY", streams: int | None = None):
    """The IR compiled for the CPU with the precision asked for, and the one it reads back."""
    ov = require_openvino()
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if streams:
        config["NUM_STREAMS"] = int(streams)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    got = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: f32, bf16
    return compiled, got.get_type_name() if hasattr(got, "get_type_name") else str(got)


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
