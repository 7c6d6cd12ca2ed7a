"""`densebench profile` as a library: where the time goes, for every runtime.

PyTorch variants: torch.profiler (CPU, and CUDA on a GPU; shapes and memory) into an
operator table, a Chrome/Perfetto trace and a TensorBoard trace. ONNX Runtime variants: its
own profiler (``enable_profiling``), parsed into the same table (by op type and by node).
Every variant: a per-iteration time breakdown, busy-versus-wall utilisation, FLOPs from
``torch.utils.flop_counter`` with achieved GFLOP/s (and, on the CPU, the share of an
estimated peak), peak memory, and hints where the profile shows the evidence.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from densebench.errors import ConfigError, DensebenchError


class ProfileError(DensebenchError):
    """A profile that cannot be produced for a variant, with why."""

Emit = Callable[[dict], None]


@dataclass
class ProfileConfig:
    variant: str
    batch_size: int = 1
    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    device: str = "auto"
    threads: int | None = None
    iters: int = 10
    warmup: int = 3
    top: int = 25
    name: str | None = None

    def __post_init__(self):
        for opt, v in (("--batch-size", self.batch_size), ("--iters", self.iters),
                       ("--top", self.top)):
            if v < 1:
                raise ConfigError(f"{opt} must be at least 1, got {v}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must not be negative, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")


# ------------------------------------------------------------------ FLOPs and peak


def count_flops(module: torch.nn.Module, batch: int, image_size: int) -> int:
    """FLOPs of one forward pass (torch.utils.flop_counter; a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(batch, 3, image_size, image_size))
    return int(counter.get_total_flops())


def _cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":")[1])
    except (OSError, ValueError):
        pass
    from densebench.environment import _psutil

    ps = _psutil()
    f = ps.cpu_freq() if ps else None
    return (f.max or f.current) if f else None


def cpu_peak_gflops(precision: str, cores: int) -> dict:
    """An estimate of the CPU's peak from its instruction set, cores and clock.

    FLOPs per cycle per core for fp32: AVX-512 with two 512-bit FMA units (Intel server
    parts, AMD Zen 5) 64, AVX-512 executed on 256-bit units (AMD Zen 4) 32, AVX2+FMA 32,
    else 8.
    bf16 doubles it with AVX-512 BF16 and is 1024 with AMX; int8 (ops) is 4x fp32 with
    VNNI and 2048 with AMX.
    """
    from densebench.environment import cpu_info

    info = cpu_info()
    flags = set(info["flags"])
    vendor = ""
    try:
        vendor = next((ln.split(":")[1].strip() for ln in
                       Path("/proc/cpuinfo").read_text().splitlines()
                       if ln.startswith("vendor_id")), "")
    except OSError:
        pass
    if "avx512f" in flags:
        # AMD: Zen 4 runs AVX-512 on 256-bit units; Zen 5 (the first with VP2INTERSECT on
        # AMD) has full 512-bit units
        half = vendor == "AuthenticAMD" and "avx512_vp2intersect" not in flags
        fp32 = 32 if half else 64
        isa = "AVX-512" + (" (256-bit units)" if half else " (2 FMA units)")
    elif "avx2" in flags and "fma" in flags:
        fp32, isa = 32, "AVX2+FMA"
    else:
        fp32, isa = 8, "SSE"
    per_cycle = fp32
    if precision == "bf16":
        if "amx_bf16" in flags:
            per_cycle, isa = 1024, "AMX-BF16"
        elif "avx512_bf16" in flags:
            per_cycle, isa = fp32 * 2, isa + " + AVX512-BF16"
    elif precision == "int8":
        if "amx_int8" in flags:
            per_cycle, isa = 2048, "AMX-INT8"
        elif flags & {"avx512_vnni", "avx_vnni"}:
            per_cycle, isa = fp32 * 4, isa + " + VNNI"
    mhz = _cpu_mhz()
    if not mhz:
        return {"gflops": None, "why": "the CPU clock is not known here"}
    return {"gflops": cores * per_cycle * mhz / 1e3, "flops_per_cycle_per_core": per_cycle,
            "cores": cores, "mhz": mhz, "isa": isa, "precision": precision,
            "note": "estimate: sustained clocks under vector load are often lower"}


# ------------------------------------------------------------------ tables


def table_from_torch(prof, device: str) -> list[dict]:
    rows = []
    cuda = device.startswith("cuda")
    for e in prof.key_averages():
        self_dev = getattr(e, "self_device_time_total", None)
        if self_dev is None:
            self_dev = getattr(e, "self_cuda_time_total", 0)
        rows.append({"name": e.key, "calls": e.count,
                     "self_cpu_us": float(e.self_cpu_time_total),
                     "total_cpu_us": float(e.cpu_time_total),
                     "self_device_us": float(self_dev or 0),
                     "self_cpu_memory_bytes": int(getattr(e, "self_cpu_memory_usage", 0) or 0)})
    key = "self_device_us" if cuda and sum(r["self_device_us"] for r in rows) > 0 else \
        "self_cpu_us"
    total = sum(r[key] for r in rows) or 1.0
    for r in rows:
        r["share"] = r[key] / total
    rows.sort(key=lambda r: -r[key])
    return rows


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


# ------------------------------------------------------------------ hints


LAYOUT_OPS = ("reorder", "to_mkldnn", "to_dense", "contiguous", "copy_", "clone",
              "to_padded_tensor", "Transpose")


def hints(table: list[dict], device: str, breakdown: dict, nodes_on_cpu: list[dict],
          variant) -> list[str]:
    out = []
    layout = [r for r in table if any(k.lower() in r["name"].lower() for k in LAYOUT_OPS)]
    layout_share = sum(r["share"] for r in layout)
    names = ", ".join(r["name"] for r in layout[:3])
    if layout_share > 0.05 and variant.backend == "onnxruntime":
        out.append(f"layout conversions take {layout_share:.0%} of the time ({names}): ONNX "
                   "Runtime moves tensors between NCHW and the NHWC layout of its kernels "
                   "around each such node")
    elif layout_share > 0.05 and not variant.channels_last:
        out.append(f"layout conversions take {layout_share:.0%} of the time ({names}): try "
                   "channels-last (variant channels-last, amp-bf16 or compile)")
    if device.startswith("cuda"):
        busy = breakdown.get("device_busy_fraction")
        kernels = breakdown.get("kernels_per_iter") or 0
        median_us = breakdown.get("median_kernel_us") or 0
        if busy is not None and busy < 0.6 and kernels > 100 and median_us < 20:
            out.append(f"launch-bound: {kernels:.0f} kernels per iteration, median "
                       f"{median_us:.1f} us, GPU busy {busy:.0%} of the wall time: try CUDA "
                       "graphs (compile with --compile-mode reduce-overhead) or a larger batch")
        if nodes_on_cpu:
            types = sorted({n["op_type"] for n in nodes_on_cpu})
            out.append(f"{len(nodes_on_cpu)} ONNX Runtime node(s) run on the CPU provider "
                       f"({', '.join(types[:6])}): each costs device-host copies")
    return out


# ------------------------------------------------------------------ the profile


def _time_parts(session, x_host, iters: int) -> dict:
    """Per-iteration medians: H2D, compute, D2H, and end-to-end (ms); host overhead is what
    end-to-end spends beyond the three."""
    h2d, comp, d2h, e2e = [], [], [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        xd = session.to_device(x_host)
        session.synchronize()
        t1 = time.perf_counter()
        out = session(xd)
        session.synchronize()
        t2 = time.perf_counter()
        session.to_host(out)
        t3 = time.perf_counter()
        session.e2e(x_host)
        session.synchronize()
        t4 = time.perf_counter()
        h2d.append((t1 - t0) * 1e3)
        comp.append((t2 - t1) * 1e3)
        d2h.append((t3 - t2) * 1e3)
        e2e.append((t4 - t3) * 1e3)
    med = statistics.median
    parts = {"h2d_ms": med(h2d), "compute_ms": med(comp), "d2h_ms": med(d2h),
             "e2e_ms": med(e2e)}
    parts["host_overhead_ms"] = max(0.0, parts["e2e_ms"] - parts["h2d_ms"] -
                                    parts["compute_ms"] - parts["d2h_ms"])
    return parts


def run_profile(cfg: ProfileConfig, *, progress: Emit | None = None):
    import sys

    from densebench.artifacts import ArtifactCache, ExportSpec
    from densebench.backends import build_session
    from densebench.devices import resolve_device
    from densebench.environment import cpu_info, fingerprint, process_cpu_seconds
    from densebench.exporters import export_artifact, fixed_input
    from densebench.models import check_image_size, load_model
    from densebench.results.store import RunStore
    from densebench.runner import _peak_rss_mb
    from densebench.variants import expand

    emit = progress or (lambda ev: None)
    device = resolve_device(cfg.device)
    variants, _ = expand([cfg.variant], ["default"], device)
    variant = variants[0]
    loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
    image_size = cfg.image_size or loaded.default_image_size
    check_image_size(cfg.model, image_size, cfg.num_classes)
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    store = RunStore()
    rec = store.create("profile", cfg.name, asdict(cfg), fingerprint(), extra={
        "command": sys.argv, "device": device, "threads": threads,
        "model": {"name": cfg.model, "weights": loaded.weights.label,
                  "random_weights": loaded.random_weights,
                  "weights_description": loaded.describe_weights(),
                  "num_classes": loaded.num_classes, "image_size": image_size},
    })
    out_dir = rec.path / "profiles" / variant.label.replace(":", "_")
    out_dir.mkdir(parents=True)
    try:
        artifact = None
        if variant.artifact:
            emit({"event": "phase", "phase": "export"})
            spec = ExportSpec(cfg.model, variant.artifact[0], variant.artifact[1], cfg.weights,
                              cfg.num_classes, image_size=image_size, device=device)
            artifact, _ = export_artifact(spec, ArtifactCache(), loaded=loaded)
        emit({"event": "phase", "phase": "load"})
        prefix = str(out_dir / "ort") if variant.backend == "onnxruntime" else None
        if variant.backend == "onnxruntime":
            from densebench.backends.ort import OrtSession

            session = OrtSession.create(variant, artifact, device, threads=threads,
                                        profile_prefix=prefix)
        else:
            session = build_session(variant, loaded, device, artifact=artifact,
                                    threads=threads)
        x_host = fixed_input(cfg.batch_size, image_size)
        xd = session.to_device(x_host)
        emit({"event": "phase", "phase": "warm-up"})
        for _ in range(max(1, cfg.warmup)):
            session(xd)
        session.synchronize()
        emit({"event": "phase", "phase": "profile"})
        cpu0, wall0 = process_cpu_seconds(), time.perf_counter()
        files: dict[str, str] = {}
        breakdown: dict = {}
        nodes_on_cpu: list[dict] = []
        if variant.backend == "onnxruntime":
            for _ in range(cfg.iters):
                session(xd)
            session.synchronize()
            wall = time.perf_counter() - wall0
            cpu1 = process_cpu_seconds()
            trace_path = Path(session.session.end_profiling())
            shutil.move(trace_path, out_dir / "ort_trace.json")
            files["trace"] = "ort_trace.json"
            trace = json.loads((out_dir / "ort_trace.json").read_text())
            table, nodes, placement = table_from_ort(trace)
            if not table:
                raise RuntimeError("ONNX Runtime's profile holds no node events")
            _write_csv(nodes, out_dir / "nodes.csv")
            files["nodes"] = "nodes.csv"
            nodes_on_cpu = [n for n in placement if device.startswith("cuda")
                            and n["provider"] == "CPUExecutionProvider"]
            breakdown["profiled_node_ms_per_iter"] = sum(r["self_cpu_us"] for r in table) / \
                1e3 / cfg.iters
        else:
            from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

            acts = [ProfilerActivity.CPU]
            if device.startswith("cuda"):
                acts.append(ProfilerActivity.CUDA)
            with profile(activities=acts, record_shapes=True, profile_memory=True) as prof:
                for _ in range(cfg.iters):
                    session(xd)
                session.synchronize()
            wall = time.perf_counter() - wall0
            cpu1 = process_cpu_seconds()
            table = table_from_torch(prof, device)
            # the PyTorch profiler plugin reads <logdir>/<worker>.<time>.pt.trace.json; the
            # same trace opens in Perfetto / chrome://tracing
            tb_dir = rec.path / "tb" / f"profile_{variant.label.replace(':', '_')}"
            tensorboard_trace_handler(str(tb_dir), worker_name=variant.label.replace(":", "_")
                                      )(prof)
            tb_trace = next(tb_dir.glob("*.pt.trace.json"))
            shutil.copyfile(tb_trace, out_dir / "trace.json")
            files["trace"] = "trace.json"
            files["tensorboard"] = str(tb_dir.relative_to(rec.path))
            if device.startswith("cuda"):
                kern = [e for e in prof.events()
                        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
                durs = [getattr(e, "device_time", 0.0) or 0.0 for e in kern]
                breakdown["kernels_per_iter"] = len(kern) / cfg.iters
                breakdown["median_kernel_us"] = statistics.median(durs) if durs else None
                breakdown["device_busy_fraction"] = (sum(durs) / 1e6) / wall if wall else None
        _write_csv(table, out_dir / "operators.csv")
        files["operators"] = "operators.csv"
        busy = cpu1 - cpu0
        breakdown["wall_ms_per_iter_profiled"] = wall * 1e3 / cfg.iters
        breakdown["cpu_busy_fraction"] = busy / (wall * threads) if wall else None
        emit({"event": "phase", "phase": "time breakdown"})
        breakdown.update(_time_parts(session, x_host, max(3, cfg.iters)))
        flops = count_flops(loaded.module, cfg.batch_size, image_size)
        achieved = flops / (breakdown["compute_ms"] / 1e3) / 1e9
        peak = None
        if not device.startswith("cuda"):
            prec = variant.precision if variant.precision in ("bf16", "int8") else "fp32"
            cores = min(threads, cpu_info()["physical_cores"] or threads)
            peak = cpu_peak_gflops(prec, cores)
        memory = {"peak_rss_mb": round(_peak_rss_mb(), 1)}
        if device.startswith("cuda"):
            memory["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device)
                                                     / 2**20, 1)
        result = {
            "variant": variant.label, "batch_size": cfg.batch_size, "device": device,
            "iters": cfg.iters, "path": str(out_dir.relative_to(rec.path)), "files": files,
            "top": table[:cfg.top], "operators": len(table),
            "breakdown": breakdown,
            "flops_per_iter": flops, "gflops_per_image": flops / cfg.batch_size / 1e9,
            "achieved_gflops": achieved,
            "peak": peak,
            "peak_share": achieved / peak["gflops"] if peak and peak.get("gflops") else None,
            "memory": memory,
            "hints": hints(table, device, breakdown, nodes_on_cpu, variant),
            "options": session.options,
        }
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1, default=str))
        rec.data["profiles"].append(result)
        rec.finish("complete")
        return rec, result
    except KeyboardInterrupt:
        rec.finish("incomplete")
        raise
    except Exception as e:
        rec.data["error"] = f"{type(e).__name__}: {e}"
        rec.finish("failed")
        if isinstance(e, DensebenchError):
            raise
        raise ProfileError(
            f"cannot profile {variant.label}: {str(e).strip().splitlines()[0][:200]}"
        ) from e


def _write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
