"""OpenVINO IR (``model.xml`` + ``model.bin``): fp32 converted from the PyTorch model
(``ov.convert_model``, weights kept fp32: ``ov.save_model`` would compress them to fp16),
and int8 by NNCF post-training quantization of that IR on the run's calibration data.

Why not OpenVINO on densebench's QDQ int8 ONNX file: ``benchmark_app`` was seen to crash
(segmentation fault while compiling for the CPU) on it on a Zen 4 EPYC with AVX-512 (a
known OpenVINO crash on virtualised EPYC, openvino#35943); on a Zen 3 EPYC (AVX2) the same
file compiles and runs. NNCF's IR is OpenVINO's own int8 path: it quantizes the graph
OpenVINO will run (its FakeQuantize placement), not ONNX Runtime's QDQ pattern.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from densebench.backends import distribution_version
from densebench.backends.openvino import compile_model, require_openvino
from densebench.calibration import calibration_key, spec_calibration
from densebench.exporters import Exporter, export_artifact, register_exporter

MAIN = "model.xml"


@register_exporter
class OpenVinoExporter(Exporter):
    FORMAT = "openvino"
    PRECISIONS = ("fp32", "int8")  # int8: by NNCF

    def versions(self, spec) -> dict[str, str | None]:
        v = {"openvino": distribution_version("openvino")}
        if spec.precision == "int8":
            v["nncf"] = distribution_version("nncf")
        return v

    def key(self, spec) -> dict:
        return calibration_key(spec, {"method": "nncf.quantize (post-training, mixed preset)"})

    def export(self, loaded, spec, out: Path, example: torch.Tensor, *, cache, progress
               ) -> tuple[str, dict]:
        ov = require_openvino()
        image_size = example.shape[-1]
        if spec.precision == "int8":
            return _export_int8(ov, loaded, spec, out, cache, progress, image_size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ov.convert_model(loaded.module.eval(), example_input=example)
        model.reshape({model.inputs[0]: ov.PartialShape([-1, 3, image_size, image_size])})
        ov.save_model(model, str(out / MAIN), compress_to_fp16=False)
        return MAIN, {"exporter": "openvino.convert_model from PyTorch, fp32 weights, "
                                  "dynamic batch"}

    def load(self, path: Path, device: str, fields: dict):
        compiled, _ = compile_model(path, "f32")
        request = compiled.create_infer_request()

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(request.infer({0: x.numpy()})[0].copy())

        return run


def _export_int8(ov, loaded, spec, out: Path, cache, progress, image_size: int):
    import nncf

    base, _ = export_artifact(replace(spec, precision="fp32"), cache, loaded=loaded,
                              progress=progress)
    if progress:
        progress("calibrating int8 (NNCF post-training quantization)")
    batches = [b.numpy() for b in spec_calibration(spec).batches(
        image_size, spec.calib_batch_size)]
    model = ov.Core().read_model(str(base.main_file))
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:  # NNCF draws a progress bar on stdout: that is `--json`'s channel
        with contextlib.redirect_stdout(io.StringIO()):
            q = nncf.quantize(model, nncf.Dataset(batches),
                              subset_size=sum(len(b) for b in batches))
    finally:
        nncf_log.setLevel(level)
    ov.save_model(q, str(out / MAIN), compress_to_fp16=False)
    return MAIN, {"exporter": "nncf.quantize (post-training, default preset) of the fp32 IR",
                  "source_artifact": base.key}
