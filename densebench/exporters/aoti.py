"""torch.export + AOTInductor: the ExportedProgram and a compiled package for one device."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from densebench.errors import DeviceError

MAIN = "model.aoti.pt2"
PROGRAM = "program.pt2"


def export(loaded, spec, out: Path, example: torch.Tensor, progress=None, **_) -> tuple[str, dict]:
    from densebench.devices import resolve_device

    device = resolve_device(spec.device)
    module = loaded.module.to(device)
    example = example.to(device)
    dynamic = None
    if spec.dynamic:
        dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
            torch.export.save(program, str(out / PROGRAM))
            if progress:
                progress("compiling with AOTInductor (this takes a while)")
            torch._inductor.aoti_compile_and_package(program, package_path=str(out / MAIN))
    finally:
        loaded.module.to("cpu")
    return MAIN, {"exporter": "torch.export + AOTInductor", "program": PROGRAM}


def load(path: Path, device: str, fields: dict):
    built_for = fields.get("device", "cpu")
    if torch.device(device).type != torch.device(built_for).type:
        raise DeviceError(
            f"this AOTInductor package was compiled for {built_for}, not {device}: export it "
            f"again with --device {device}"
        )
    fn = torch._inductor.aoti_load_package(str(path))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(x)

    return run
