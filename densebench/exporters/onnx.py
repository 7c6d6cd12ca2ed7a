"""ONNX: fp32 and fp16 through torch's exporter (dynamo), int8 by ONNX Runtime's static
quantization (QDQ, per-channel) calibrated on batches from a data source."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from densebench.backends.onnxruntime import INPUT, OUTPUT, input_dtype, make_session
from densebench.calibration import calibration_key, spec_calibration
from densebench.errors import ConfigError
from densebench.exporters import Exporter, batch_axis, export_artifact, register_exporter

MAIN = "model.onnx"
DEFAULT_OPSET = 18


@register_exporter
class OnnxExporter(Exporter):
    FORMAT = "onnx"
    PRECISIONS = ("fp32", "fp16", "int8")

    def check(self, spec) -> None:
        if spec.opset is None:
            return
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not 18 <= spec.opset <= newest:
            raise ConfigError(f"--opset {spec.opset} is not supported: torch's ONNX exporter "
                              f"needs 18 to {newest}")

    def versions(self, spec) -> dict[str, str | None]:
        import onnx

        v = {"onnx": onnx.__version__}
        if spec.precision == "int8":
            import onnxruntime

            v["onnxruntime"] = onnxruntime.__version__
        return v

    def key(self, spec) -> dict:
        return {"opset": spec.opset or DEFAULT_OPSET, **calibration_key(spec, {
            "method": "minmax", "format": "QDQ", "per_channel": True,
            "activations": "uint8", "weights": "int8", "pre_process": True})}

    def export(self, loaded, spec, out: Path, example: torch.Tensor, *, cache, progress
               ) -> tuple[str, dict]:
        if spec.precision == "int8":
            return _export_int8(loaded, spec, out, cache, progress)
        module, ex = loaded.module, example
        if spec.precision == "fp16":
            module, ex = copy.deepcopy(loaded.module).half(), example.half()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (ex,), str(out / MAIN), dynamo=True,
                opset_version=spec.opset or DEFAULT_OPSET, dynamic_shapes=batch_axis(spec),
                input_names=[INPUT], output_names=[OUTPUT], external_data=False,
                verbose=False,
            )
        return MAIN, {"exporter": f"torch.onnx.export(dynamo=True), {spec.precision} "
                                  "weights and IO"}

    def load(self, path: Path, device: str, fields: dict):
        session = make_session(path, device)
        dtype = input_dtype(session)

        def run(x: torch.Tensor) -> torch.Tensor:
            out = session.run([OUTPUT], {INPUT: x.detach().cpu().numpy().astype(
                dtype, copy=False)})
            return torch.from_numpy(out[0]).float()

        run.session = session  # type: ignore[attr-defined]
        return run


@contextlib.contextmanager
def _quiet_logging():
    """ONNX Runtime's quantizer logs a warning per BatchNorm weight through the root logger."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _CalibrationReader:
    """ONNX Runtime calibration reader over the run's calibration batches."""

    def __init__(self, batches: list):
        self._data = [b.numpy() for b in batches]
        self._it = iter(self._data)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {INPUT: x}

    def rewind(self):
        self._it = iter(self._data)


def count_ops(path: Path, op: str) -> int:
    import onnx

    return sum(n.op_type == op for n in onnx.load(str(path), load_external_data=False)
               .graph.node)


def _export_int8(loaded, spec, out: Path, cache, progress) -> tuple[str, dict]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    base, _ = export_artifact(replace(spec, precision="fp32"), cache, loaded=loaded,
                              progress=progress)
    image_size = base.fields["input_shape"][2]
    pre = out / "_preprocessed.onnx"
    if progress:
        progress("calibrating int8 (static, QDQ, per-channel)")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        quant_pre_process(str(base.main_file), str(pre), skip_symbolic_shape=True)
        reader = _CalibrationReader(spec_calibration(spec).batches(
            image_size, spec.calib_batch_size))
        quantize_static(
            str(pre), str(out / MAIN), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    # A BatchNorm right after a convolution is folded into it (torch's exporter already
    # does; quant_pre_process would); DenseNet's pre-activation norms follow a
    # concatenation and stay, fp32 between DQ and Q (no int8 BatchNorm kernel)
    bn = {"in_the_model": sum(isinstance(m, torch.nn.BatchNorm2d)
                              for m in loaded.module.modules()),
          "in_the_fp32_onnx": count_ops(base.main_file, "BatchNormalization"),
          "after_pre_process": count_ops(pre, "BatchNormalization")}
    pre.unlink()
    for leftover in out.glob("*.onnx.data"):
        leftover.unlink()
    return MAIN, {
        "exporter": "onnxruntime.quantization.quantize_static (QDQ, per-channel, MinMax)",
        "source_artifact": base.key, "batchnorm_nodes": bn,
        "fp32_between_dq_q": ["BatchNormalization (after a Concat: no int8 kernel)",
                              "Relu after such a BatchNorm", "GlobalAveragePool"],
    }
