"""torch.export + AOTInductor: the ExportedProgram and a compiled package for one device.

int8: the model quantized with torchao's PT2E x86 Inductor quantizer on the spec's
calibration data (``densebench.quantize``, as ``compile-int8`` does at run time), then
compiled once with freezing (Inductor's int8 passes fuse Q/DQ pairs into int8
convolutions only on frozen weights). Loading it later takes seconds where
``compile-int8`` quantizes and compiles again in every process.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from densebench.backends import distribution_version
from densebench.calibration import calibration_key, spec_calibration
from densebench.devices import resolve_device
from densebench.errors import DeviceError, ExportError
from densebench.exporters import Exporter, batch_axis, register_exporter
from densebench.quantize import QUANTIZER, quantize_pt2e, require_torchao

MAIN = "model.aoti.pt2"
PROGRAM = "program.pt2"


@register_exporter
class AotiExporter(Exporter):
    FORMAT = "aoti"
    PRECISIONS = ("fp32", "int8")
    DEVICE_BOUND = True  # a compiled package runs only where it was built

    def versions(self, spec) -> dict[str, str | None]:
        return {"torchao": distribution_version("torchao")} if spec.precision == "int8" else {}

    def key(self, spec) -> dict:
        return calibration_key(spec, {"method": "torchao PT2E, X86InductorQuantizer "
                                                "default config"})

    def export(self, loaded, spec, out: Path, example: torch.Tensor, *, cache, progress
               ) -> tuple[str, dict]:
        device = resolve_device(spec.device)
        dynamic = batch_axis(spec)
        if spec.precision == "int8":
            return _export_int8(loaded.module, spec, device, dynamic, out, example.shape[-1],
                                progress)
        module = loaded.module.to(device)
        example = example.to(device)
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

    def load(self, path: Path, device: str, fields: dict):
        built_for = fields.get("device", "cpu")
        if torch.device(device).type != torch.device(built_for).type:
            raise DeviceError(
                f"this AOTInductor package was compiled for {built_for}, not {device}: export "
                f"it again with --device {device}"
            )
        fn = torch._inductor.aoti_load_package(str(path))

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return fn(x)

        return run


def _export_int8(module, spec, device: str, dynamic: dict | None, out: Path,
                 image_size: int, progress) -> tuple[str, dict]:
    if torch.device(device).type != "cpu":
        raise ExportError(f"aoti int8 is built for the CPU (the x86 Inductor quantizer), "
                          f"not {device}: use --device cpu")
    if require_torchao() is None:
        raise ExportError("aoti int8 needs torchao: pip install torchao "
                          "(make install installs it)")
    calib = spec_calibration(spec)
    batches = calib.batches(image_size, spec.calib_batch_size)
    if progress:
        progress("quantizing int8 (PT2E, calibrating)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = quantize_pt2e(module.eval(), batches, dynamic)
        with torch.no_grad():
            program = torch.export.export(converted, (batches[0],), dynamic_shapes=dynamic)
            if progress:
                progress("compiling with AOTInductor, frozen int8 (this takes a while)")
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(out / MAIN), inductor_configs={"freezing": True})
    return MAIN, {"exporter": "torchao PT2E int8 + torch.export + AOTInductor (freezing)",
                  "quantizer": QUANTIZER, "calibration": calib.identity()}

