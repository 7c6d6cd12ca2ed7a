"""ONNX: fp32 and fp16 through torch's exporter (dynamo), int8 by ONNX Runtime's static
quantization (QDQ, per-channel) calibrated on batches from a data source."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from densebench.artifacts import DEFAULT_OPSET
from densebench.errors import DeviceError

MAIN = "model.onnx"
INPUT = "input"
OUTPUT = "logits"


def export(loaded, spec, out: Path, example: torch.Tensor, cache=None, progress=None
           ) -> tuple[str, dict]:
    from densebench.exporters import batch_axis

    if spec.precision == "int8":
        return _export_int8(loaded, spec, out, cache, progress)
    module, ex = loaded.module, example
    if spec.precision == "fp16":
        module, ex = copy.deepcopy(loaded.module).half(), example.half()
    dynamic = batch_axis(spec)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (ex,), str(out / MAIN), dynamo=True, opset_version=spec.opset or DEFAULT_OPSET,
            dynamic_shapes=dynamic, input_names=[INPUT], output_names=[OUTPUT],
            external_data=False, verbose=False,
        )
    return MAIN, {"exporter": f"torch.onnx.export(dynamo=True), {spec.precision} weights and IO"}


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


def calibration(spec):
    """The calibration data an int8 export of ``spec`` is calibrated on."""
    from densebench.calibration import Calibration

    return Calibration.parse(spec.calib, images=spec.calib_batches * spec.calib_batch_size)


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

    from densebench.exporters import export_artifact

    base, _ = export_artifact(replace(spec, precision="fp32"), cache, loaded=loaded,
                              progress=progress)
    image_size = base.fields["input_shape"][2]
    pre = out / "_preprocessed.onnx"
    if progress:
        progress("calibrating int8 (static, QDQ, per-channel)")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        quant_pre_process(str(base.main_file), str(pre), skip_symbolic_shape=True)
        reader = _CalibrationReader(calibration(spec).batches(image_size,
                                                              spec.calib_batch_size))
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


def providers_for(device: str, trt_cache: Path | None = None, fp16: bool = False) -> list:
    kind = torch.device(device).type
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    index = torch.device(device).index or 0
    if kind == "tensorrt":
        opts = {"device_id": index, "trt_fp16_enable": fp16}
        if trt_cache is not None:
            trt_cache.mkdir(parents=True, exist_ok=True)
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache),
                        trt_timing_cache_enable=True, trt_timing_cache_path=str(trt_cache))
        return [("TensorrtExecutionProvider", opts),
                ("CUDAExecutionProvider", {"device_id": index})]
    return [("CUDAExecutionProvider", {"device_id": index})]


def make_session(path: Path, device: str = "cpu", threads: int | None = None,
                 profile_prefix: str | None = None, trt_cache: Path | None = None,
                 fp16: bool = False):
    """An InferenceSession on ``device`` with all graph optimisations.

    Raises DeviceError when the requested provider is not the one the session uses: ONNX
    Runtime falls back to the CPU provider silently, densebench never does.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 3
    providers = providers_for(device, trt_cache, fp16)
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if wanted not in ort.get_available_providers():
        raise DeviceError(
            f"this ONNX Runtime build has no {wanted}: install onnxruntime-gpu with CUDA "
            "libraries, or use the CPU"
        )
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:
        raise DeviceError(
            f"ONNX Runtime could not create a session with {wanted}: "
            f"{str(e).strip().splitlines()[0][:200]}"
        ) from e
    if session.get_providers()[0] != wanted:
        raise DeviceError(
            f"ONNX Runtime fell back from {wanted} to {session.get_providers()[0]} (missing CUDA "
            "or TensorRT libraries?); refusing to report a CPU number as a GPU one"
        )
    return session


def input_dtype(session) -> np.dtype:
    return np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32


def load(path: Path, device: str, fields: dict):
    session = make_session(path, device)
    dtype = input_dtype(session)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run([OUTPUT], {INPUT: x.detach().cpu().numpy().astype(dtype, copy=False)})
        return torch.from_numpy(out[0]).float()

    run.session = session  # type: ignore[attr-defined]
    return run
