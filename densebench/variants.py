"""Named variants: presets over registered backends (``densebench.backends``).

A variant names a backend, the precision of its compute, the artifact it loads from the
cache (if any) and backend options. Whether it can run on a device is its backend's
answer. Plugins add variants with ``register_variant``, as the built-ins below do.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from densebench.errors import VariantError


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # a registered backend's NAME
    description: str
    precision: str = "fp32"  # numerics of the compute: fp32 | fp16 | bf16 | int8
    artifact: tuple[str, str] | None = None  # (format, precision) from the cache
    options: Mapping = field(default_factory=dict)  # backend options (channels_last, ...)
    mode: str | None = None  # a backend mode (torch.compile's), suffixed to the label

    @property
    def label(self) -> str:
        """The name a cell is stored under (modes other than default are suffixed)."""
        if self.mode and self.mode != "default":
            return f"{self.name}:{self.mode}"
        return self.name

    def with_mode(self, mode: str) -> Variant:
        return replace(self, mode=mode)

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes its backend offers (empty: it takes none)."""
        from densebench.backends import get_backend

        return get_backend(self.backend).MODES

    def unsupported_reason(self, device: str) -> str | None:
        """Why this variant cannot run on ``device`` (``cpu``, ``cuda``, ``cuda:N``), or None."""
        from densebench.backends import get_backend

        return get_backend(self.backend).supported(self, device)


_VARIANTS: dict[str, Variant] = {}


def register_variant(v: Variant) -> Variant:
    if v.name in _VARIANTS and _VARIANTS[v.name] != v:
        raise TypeError(f"variant {v.name!r} is already registered")
    if ":" in v.name or "," in v.name or not v.name:
        raise TypeError(f"variant name {v.name!r}: no ':' or ','")
    _VARIANTS[v.name] = v
    return v


def variants() -> dict[str, Variant]:
    """Every registered variant, built-ins first, then plugins'."""
    from densebench.plugins import load_plugins

    load_plugins()
    return dict(_VARIANTS)


for _v in [
    Variant("eager", "eager", "PyTorch fp32, NCHW"),
    Variant("channels-last", "eager", "PyTorch fp32, channels_last memory format",
            options={"channels_last": True}),
    Variant("amp-fp16", "eager", "autocast fp16, channels_last (CUDA)", precision="fp16",
            options={"channels_last": True, "autocast": "fp16"}),
    Variant("amp-bf16", "eager", "autocast bf16, channels_last (CUDA or a CPU with bf16)",
            precision="bf16", options={"channels_last": True, "autocast": "bf16"}),
    Variant("torchscript", "torchscript",
            "traced, frozen TorchScript from the cache, optimize_for_inference",
            artifact=("torchscript", "fp32")),
    Variant("compile", "compile", "torch.compile (inductor, freezing), fp32, channels_last",
            options={"channels_last": True}, mode="default"),
    Variant("compile-bf16", "compile", "torch.compile (inductor, freezing) with bf16 autocast",
            precision="bf16", options={"channels_last": True, "autocast": "bf16"},
            mode="default"),
    Variant("aoti", "aoti", "torch.export + AOTInductor package from the cache",
            artifact=("aoti", "fp32")),
    Variant("onnxruntime", "onnxruntime",
            "ONNX Runtime fp32 on the device's provider, all graph optimisations",
            artifact=("onnx", "fp32"), options={"provider": "device"}),
    Variant("onnxruntime-trt", "onnxruntime", "ONNX Runtime TensorRT provider (fp16 allowed)",
            precision="fp16", artifact=("onnx", "fp32"), options={"provider": "tensorrt"}),
    Variant("onnxruntime-fp16", "onnxruntime", "ONNX Runtime on the fp16 artifact",
            precision="fp16", artifact=("onnx", "fp16"), options={"provider": "device"}),
    Variant("onnxruntime-int8", "onnxruntime",
            "ONNX Runtime on the int8 QDQ artifact (static, per-channel)",
            precision="int8", artifact=("onnx", "int8"), options={"provider": "device"}),
    Variant("compile-int8", "pt2e",
            "torchao PT2E static int8 (x86 Inductor quantizer) + torch.compile, freezing",
            precision="int8"),
    Variant("compile-int8-bf16", "pt2e",
            "torchao PT2E int8 with the rest in bf16 + torch.compile, freezing",
            precision="int8", options={"autocast": "bf16"}),
    Variant("aoti-int8", "aoti",
            "the compile-int8 model (torchao PT2E) as an AOTInductor package from the cache",
            precision="int8", artifact=("aoti", "int8")),
    Variant("openvino", "openvino", "OpenVINO CPU plugin, f32 set and read back",
            artifact=("openvino", "fp32")),
    Variant("openvino-bf16", "openvino", "OpenVINO CPU plugin, bf16 inference precision",
            precision="bf16", artifact=("openvino", "fp32")),
    Variant("openvino-int8", "openvino", "OpenVINO CPU plugin on the NNCF int8 IR",
            precision="int8", artifact=("openvino", "int8")),
]:
    register_variant(_v)


# ``--variant quick``: `make bench`'s default, the quick answer. Each runtime at fp32 and at
# its fastest reduced precision, all of them prepared from the artifact cache (exported or
# compiled once, loaded in seconds afterwards): PyTorch eager (the baseline, bf16 autocast
# where the CPU has bf16), Inductor's int8 (the AOTInductor package: `compile-int8` would
# compile again in every run), ONNX Runtime and OpenVINO. ``all`` adds the rest.
QUICK = ("eager", "amp-bf16", "aoti-int8", "onnxruntime", "onnxruntime-int8", "openvino",
         "openvino-bf16", "openvino-int8")
GROUPS = ("all", "quick")


def _members(group: str) -> list[str]:
    return list(variants()) if group == "all" else list(QUICK)


def left_out(names: list[str], chosen: list[Variant], device: str) -> list[str]:
    """Variants ``device`` could run that a ``quick`` selection did not include."""
    if "quick" not in names or "all" in names:
        return []
    labels = {c.name for c in chosen}
    return [n for n, v in variants().items()
            if n not in labels and v.unsupported_reason(device) is None]


def get_variant(name: str) -> Variant:
    known = variants()
    base, _, mode = name.partition(":")
    if base not in known:
        close = difflib.get_close_matches(base, list(known), n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close
                else f"choose from {', '.join(known)}")
        raise VariantError(f"unknown variant {name!r}: {hint}")
    v = known[base]
    if mode:
        if mode not in v.modes:
            offered = ", ".join(v.modes) if v.modes else "none"
            raise VariantError(f"variant {name!r}: {base} takes no mode {mode!r} "
                               f"(its modes: {offered})")
        v = v.with_mode(mode)
    return v


def expand(names: list[str], modes: list[str], device: str | None
           ) -> tuple[list[Variant], list[dict]]:
    """The variants to run and the ones skipped (with why), in order, without repeats.

    ``modes`` apply to variants whose backend has modes (torch.compile's); ``all`` means
    every variant and ``quick`` the ``QUICK`` set, skipping those the device cannot run; a
    variant named explicitly that the device cannot run is an error. ``device=None``: no
    check here (a sweep's node decides what it can run).
    """
    offered = {m for v in variants().values() for m in v.modes}
    for m in modes:
        if m not in offered:
            raise VariantError(f"unknown compile mode {m!r}: choose from "
                               f"{', '.join(sorted(offered))}")
    chosen: list[Variant] = []
    skipped: list[dict] = []
    explicit = [n for n in names if n not in GROUPS]
    for n in names:
        pool = _members(n) if n in GROUPS else [n]
        for name in pool:
            v = get_variant(name)
            if ":" in name:
                candidates = [v]
            elif v.modes:
                candidates = [v.with_mode(m) for m in modes if m in v.modes]
            else:
                candidates = [v]
            for one in candidates:
                if any(c.label == one.label for c in chosen):
                    continue
                reason = None if device is None else one.unsupported_reason(device)
                if reason is None:
                    chosen.append(one)
                elif n in GROUPS and name not in explicit:
                    if not any(s["variant"] == one.label for s in skipped):
                        skipped.append({"variant": one.label, "reason": reason})
                else:
                    raise VariantError(reason)
    return chosen, skipped
