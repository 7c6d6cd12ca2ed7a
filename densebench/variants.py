"""Named variants: a backend plus options, and the device rules each needs."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from densebench.errors import VariantError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # eager | torchscript | compile | aoti | onnxruntime
    description: str
    precision: str = "fp32"  # numerics of the compute: fp32 | fp16 | bf16 | int8
    channels_last: bool = False
    autocast: str | None = None  # fp16 | bf16
    artifact: tuple[str, str] | None = None  # (format, precision) from the cache
    provider: str | None = None  # onnxruntime: device | tensorrt
    compile_mode: str | None = None

    @property
    def label(self) -> str:
        """The name a cell is stored under (compile modes other than default are suffixed)."""
        if self.compile_mode and self.compile_mode != "default":
            return f"{self.name}:{self.compile_mode}"
        return self.name

    def with_compile_mode(self, mode: str) -> Variant:
        from dataclasses import replace

        return replace(self, compile_mode=mode)

    def unsupported_reason(self, device: str) -> str | None:
        """Why this variant cannot run on ``device`` (``cpu``, ``cuda``, ``cuda:N``), or None."""
        from densebench.environment import cpu_supports_bf16

        cuda = device.startswith("cuda")
        if self.autocast == "fp16" and not cuda:
            return f"{self.name} needs a CUDA GPU (fp16 autocast is a GPU path)"
        if self.autocast == "bf16" and not cuda and not cpu_supports_bf16():
            return (f"{self.name} needs a CUDA GPU or a CPU with native bf16 "
                    "(AVX-512 BF16, AMX or Arm BF16); this CPU has none")
        if self.autocast == "bf16" and cuda:
            import torch

            if not torch.cuda.is_bf16_supported():
                return f"{self.name}: this GPU has no bf16 support"
        if self.provider == "tensorrt":
            if not cuda:
                return f"{self.name} needs a CUDA GPU with TensorRT"
            import onnxruntime as ort

            if "TensorrtExecutionProvider" not in ort.get_available_providers():
                return f"{self.name}: this ONNX Runtime build has no TensorRT provider"
        if self.backend == "onnxruntime" and cuda and self.provider != "tensorrt":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return (f"{self.name}: this ONNX Runtime build has no CUDA provider "
                        "(install onnxruntime-gpu)")
        return None


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("eager", "eager", "PyTorch fp32, NCHW"),
    Variant("channels-last", "eager", "PyTorch fp32, channels_last memory format",
            channels_last=True),
    Variant("amp-fp16", "eager", "autocast fp16, channels_last (CUDA)", precision="fp16",
            channels_last=True, autocast="fp16"),
    Variant("amp-bf16", "eager", "autocast bf16, channels_last (CUDA or a CPU with bf16)",
            precision="bf16", channels_last=True, autocast="bf16"),
    Variant("torchscript", "torchscript",
            "traced, frozen TorchScript from the cache, optimize_for_inference",
            artifact=("torchscript", "fp32")),
    Variant("compile", "compile", "torch.compile (inductor, freezing), fp32, channels_last",
            channels_last=True, compile_mode="default"),
    Variant("compile-bf16", "compile", "torch.compile (inductor, freezing) with bf16 autocast",
            precision="bf16", channels_last=True, autocast="bf16", compile_mode="default"),
    Variant("aoti", "aoti", "torch.export + AOTInductor package from the cache",
            artifact=("aoti", "fp32")),
    Variant("onnxruntime", "onnxruntime",
            "ONNX Runtime fp32 on the device's provider, all graph optimisations",
            artifact=("onnx", "fp32"), provider="device"),
    Variant("onnxruntime-trt", "onnxruntime", "ONNX Runtime TensorRT provider (fp16 allowed)",
            precision="fp16", artifact=("onnx", "fp32"), provider="tensorrt"),
    Variant("onnxruntime-fp16", "onnxruntime", "ONNX Runtime on the fp16 artifact",
            precision="fp16", artifact=("onnx", "fp16"), provider="device"),
    Variant("onnxruntime-int8", "onnxruntime",
            "ONNX Runtime on the int8 QDQ artifact (static, per-channel)",
            precision="int8", artifact=("onnx", "int8"), provider="device"),
]}


def get_variant(name: str) -> Variant:
    base, _, mode = name.partition(":")
    if base not in VARIANTS:
        close = difflib.get_close_matches(base, list(VARIANTS), n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close
                else f"choose from {', '.join(VARIANTS)}")
        raise VariantError(f"unknown variant {name!r}: {hint}")
    v = VARIANTS[base]
    if mode:
        if v.backend != "compile" or mode not in COMPILE_MODES:
            raise VariantError(f"variant {name!r}: only compile variants take a mode "
                               f"({', '.join(COMPILE_MODES)})")
        v = v.with_compile_mode(mode)
    return v


def expand(names: list[str], compile_modes: list[str], device: str
           ) -> tuple[list[Variant], list[dict]]:
    """The variants to run and the ones skipped (with why), in order, without repeats.

    ``all`` means every variant, skipping those the device cannot run; a variant named
    explicitly that the device cannot run is an error.
    """
    for m in compile_modes:
        if m not in COMPILE_MODES:
            raise VariantError(
                f"unknown compile mode {m!r}: choose from {', '.join(COMPILE_MODES)}"
            )
    chosen: list[Variant] = []
    skipped: list[dict] = []
    explicit = [n for n in names if n != "all"]
    for n in names:
        pool = list(VARIANTS) if n == "all" else [n]
        for name in pool:
            v = get_variant(name)
            modes = [v.compile_mode] if ":" in name else compile_modes
            for one in ([v.with_compile_mode(m) for m in modes] if v.backend == "compile"
                        else [v]):
                if any(c.label == one.label for c in chosen):
                    continue
                reason = one.unsupported_reason(device)
                if reason is None:
                    chosen.append(one)
                elif n == "all" and name not in explicit:
                    if not any(s["variant"] == one.label for s in skipped):
                        skipped.append({"variant": one.label, "reason": reason})
                else:
                    raise VariantError(reason)
    return chosen, skipped
