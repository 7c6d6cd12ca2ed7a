"""`densebench profile` as a library: where the time goes, for every runtime.

The variant is prepared like any other (``prepare.py``) and profiled by its backend's own
profiler (``Backend.profile``: torch.profiler for PyTorch runtimes, with Chrome/Perfetto
and TensorBoard traces; ONNX Runtime's profiler, by op type and by node), into one operator
table. Every variant also gets a per-iteration time breakdown, busy-versus-wall
utilisation, FLOPs from ``torch.utils.flop_counter`` with achieved GFLOP/s (and, on the
CPU, the share of an estimated peak), peak memory, and hints where the profile shows the
evidence.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from densebench.errors import DensebenchError, bad_setting, check_threads, interrupted, one_line


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
        for setting, v in (("batch_size", self.batch_size), ("iters", self.iters),
                           ("top", self.top)):
            if v < 1:
                raise bad_setting(setting, f"must be at least 1, got {v}")
        if self.warmup < 0:
            raise bad_setting("warmup", f"must not be negative, got {self.warmup}")
        check_threads(self.threads)


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


# ------------------------------------------------------------------ hints


LAYOUT_OPS = ("reorder", "to_mkldnn", "to_dense", "contiguous", "copy_", "clone",
              "to_padded_tensor", "Transpose")


def hints(table: list[dict], device: str, breakdown: dict, nodes_on_cpu: list[dict],
          prepared) -> list[str]:
    out = []
    layout = [r for r in table if any(k.lower() in r["name"].lower() for k in LAYOUT_OPS)]
    layout_share = sum(r["share"] for r in layout)
    if layout_share > 0.05:
        names = ", ".join(r["name"] for r in layout[:3])
        hint = prepared.backend.layout_hint(prepared.variant, layout_share, names)
        if hint:
            out.append(hint)
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

    from densebench.devices import resolve_device
    from densebench.environment import cpu_info, fingerprint, process_cpu_seconds
    from densebench.models import check_image_size, load_model
    from densebench.parity import fixed_input
    from densebench.prepare import ModelRef, prepare_variant
    from densebench.results.store import RunStore
    from densebench.scenarios.closed_loop import peak_rss_mb
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
    safe = variant.label.replace(":", "_")
    out_dir = rec.path / "profiles" / safe
    out_dir.mkdir(parents=True)

    def phase(name: str) -> None:
        emit({"event": "phase", "variant": variant.label, "phase": name})

    try:
        prepared = prepare_variant(
            variant, ModelRef(cfg.model, cfg.weights, cfg.num_classes, image_size), device,
            threads, loaded=loaded, profile_dir=out_dir, phase=phase)
        session = prepared.session
        x_host = fixed_input(cfg.batch_size, image_size)
        xd = session.to_device(x_host)
        phase("warm-up")
        for _ in range(max(1, cfg.warmup)):
            session(xd)
        session.synchronize()
        phase("profile")
        cpu0, wall0 = process_cpu_seconds(), time.perf_counter()
        tb_dir = rec.path / "tb" / f"profile_{safe}"
        trace = prepared.backend.profile(session, xd, cfg.iters, out_dir, tb_dir)
        wall = time.perf_counter() - wall0
        cpu1 = process_cpu_seconds()
        table, files, breakdown = trace.table, dict(trace.files), dict(trace.breakdown)
        if "tensorboard" in files:
            files["tensorboard"] = str(tb_dir.relative_to(rec.path))
        if "device_time_s" in breakdown:
            breakdown["device_busy_fraction"] = breakdown.pop("device_time_s") / wall \
                if wall else None
        _write_csv(table, out_dir / "operators.csv")
        files["operators"] = "operators.csv"
        busy = cpu1 - cpu0
        breakdown["wall_ms_per_iter_profiled"] = wall * 1e3 / cfg.iters
        breakdown["cpu_busy_fraction"] = busy / (wall * threads) if wall else None
        phase("time breakdown")
        breakdown.update(_time_parts(session, x_host, max(3, cfg.iters)))
        flops = count_flops(loaded.module, cfg.batch_size, image_size)
        achieved = flops / (breakdown["compute_ms"] / 1e3) / 1e9
        peak = None
        if not device.startswith("cuda"):
            prec = variant.precision if variant.precision in ("bf16", "int8") else "fp32"
            cores = min(threads, cpu_info()["physical_cores"] or threads)
            peak = cpu_peak_gflops(prec, cores)
        memory = {"peak_rss_mb": round(peak_rss_mb(), 1)}
        if device.startswith("cuda"):
            memory["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device)
                                                     / 2**20, 1)
        result = {
            "variant": variant.label, "batch_size": cfg.batch_size, "device": device,
            "iters": cfg.iters, "path": str(out_dir.relative_to(rec.path)), "files": files,
            "profiler": prepared.backend.PROFILER,
            "top": table[:cfg.top], "operators": len(table),
            "breakdown": breakdown,
            "flops_per_iter": flops, "gflops_per_image": flops / cfg.batch_size / 1e9,
            "achieved_gflops": achieved,
            "peak": peak,
            "peak_share": achieved / peak["gflops"] if peak and peak.get("gflops") else None,
            "memory": memory,
            "hints": hints(table, device, breakdown, trace.nodes_on_cpu, prepared),
            "options": session.options,
            "cold_start": prepared.cold_start,
        }
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1, default=str))
        rec.data["profiles"].append(result)
        rec.finish("complete")
        return rec, result
    except KeyboardInterrupt as e:
        rec.finish("incomplete")
        raise interrupted(e, f"profile run {rec.id} is marked incomplete") from None
    except Exception as e:
        rec.data["error"] = one_line(e)
        rec.finish("failed")
        if isinstance(e, DensebenchError):
            raise
        raise ProfileError(f"cannot profile {variant.label}: {one_line(e)}") from e


def _write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
