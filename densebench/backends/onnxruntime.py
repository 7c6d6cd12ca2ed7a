"""ONNX Runtime: CPU, CUDA (IO binding) and TensorRT providers; never a silent fallback.

Variant options: ``provider`` (``device``: the device's own provider; ``tensorrt``).
Profiled with ONNX Runtime's own profiler (``enable_profiling``), enabled when the session
is prepared for a profile.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from densebench.backends import (
    Backend,
    ProfileTrace,
    Session,
    distribution_version,
    register_backend,
)
from densebench.errors import DeviceError

INPUT = "input"  # the names the ONNX exporter gives the graph's input and output
OUTPUT = "logits"


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



@dataclass
class OrtSession(Session):
    session: object = None
    dtype: type = np.float32

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


@register_backend
class OnnxRuntimeBackend(Backend):
    NAME = "onnxruntime"
    DESCRIPTION = "ONNX Runtime on an ONNX artifact from the cache, all graph optimisations"
    PROFILER = "onnxruntime"

    def supported(self, variant, device: str) -> str | None:
        cuda = device.startswith("cuda")
        provider = variant.options.get("provider", "device")
        if provider == "tensorrt":
            if not cuda:
                return f"{variant.name} needs a CUDA GPU with TensorRT"
            import onnxruntime as ort

            if "TensorrtExecutionProvider" not in ort.get_available_providers():
                return f"{variant.name}: this ONNX Runtime build has no TensorRT provider"
        elif cuda:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return (f"{variant.name}: this ONNX Runtime build has no CUDA provider "
                        "(install onnxruntime-gpu)")
        return None

    def versions(self) -> dict[str, str | None]:
        return {"onnxruntime": distribution_version("onnxruntime-gpu", "onnxruntime")}

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        artifact.verify()
        artifact.touch()
        target, trt_cache = device, None
        if variant.options.get("provider") == "tensorrt":
            target = f"tensorrt:{torch.device(device).index or 0}"
            trt_cache = artifact.path.parent / ".trt" / artifact.path.name
        sess = make_session(artifact.main_file, target, threads=threads,
                            profile_prefix=str(profile_dir / "ort") if profile_dir else None,
                            trt_cache=trt_cache, fp16=variant.precision == "fp16")
        cuda = device.startswith("cuda")
        options = {"providers": sess.get_providers(), "threads": threads,
                   "graph_optimization": "ORT_ENABLE_ALL", "io_binding": cuda,
                   "artifact": artifact.key}
        klass = OrtCudaSession if cuda else OrtSession
        return klass(label=variant.label, device=device, timer="host", options=options,
                     session=sess, dtype=input_dtype(sess))

    def profile(self, session: Session, x, iters: int, out_dir: Path, tb_dir: Path
                ) -> ProfileTrace:
        for _ in range(iters):
            session(x)
        session.synchronize()
        if not session.session.get_session_options().enable_profiling:
            raise RuntimeError("the session was not prepared for profiling")
        shutil.move(Path(session.session.end_profiling()), out_dir / "ort_trace.json")
        events = json.loads((out_dir / "ort_trace.json").read_text())
        table, nodes, placement = table_from_ort(events)
        if not table:
            raise RuntimeError("ONNX Runtime's profile holds no node events")
        import pandas as pd

        pd.DataFrame(nodes).to_csv(out_dir / "nodes.csv", index=False)
        cuda = session.device.startswith("cuda")
        return ProfileTrace(
            table=table, files={"trace": "ort_trace.json", "nodes": "nodes.csv"},
            breakdown={"profiled_node_ms_per_iter": sum(r["self_cpu_us"] for r in table)
                       / 1e3 / iters},
            nodes_on_cpu=[n for n in placement
                          if cuda and n["provider"] == "CPUExecutionProvider"])

    def layout_hint(self, variant, share: float, names: str) -> str | None:
        return (f"layout conversions take {share:.0%} of the time ({names}): ONNX Runtime "
                "moves tensors between NCHW and the NHWC layout of its kernels around each "
                "such node")


def table_from_ort(trace: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """ONNX Runtime's profile: (by op type, by node, nodes with their provider)."""
    by_op: dict[str, dict] = defaultdict(lambda: {"calls": 0, "us": 0.0, "providers": set()})
    by_node: dict[str, dict] = {}
    for ev in trace:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        op = args.get("op_name", "?")
        node = ev["name"][: -len("_kernel_time")]
        dur = float(ev.get("dur", 0))
        provider = args.get("provider", "?")
        by_op[op]["calls"] += 1
        by_op[op]["us"] += dur
        by_op[op]["providers"].add(provider)
        n = by_node.setdefault(node, {"name": node, "op_type": op, "provider": provider,
                                      "calls": 0, "us": 0.0})
        n["calls"] += 1
        n["us"] += dur
    total = sum(v["us"] for v in by_op.values()) or 1.0
    ops = [{"name": k, "calls": v["calls"], "self_cpu_us": v["us"], "total_cpu_us": v["us"],
            "self_device_us": 0.0, "share": v["us"] / total,
            "providers": ",".join(sorted(v["providers"]))} for k, v in by_op.items()]
    ops.sort(key=lambda r: -r["self_cpu_us"])
    nodes = sorted(by_node.values(), key=lambda r: -r["us"])
    for n in nodes:
        n["share"] = n["us"] / total
    return ops, nodes, [{"node": n["name"], "op_type": n["op_type"], "provider": n["provider"]}
                        for n in nodes]
