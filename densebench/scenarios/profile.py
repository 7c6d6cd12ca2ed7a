"""The profile scenario: where the time goes, for every runtime.

The variant is prepared like any other, in its worker process, with its backend's
profiler armed where it needs that at load time (ONNX Runtime), and profiled by the
backend's own profiler (``Backend.profile``: torch.profiler for PyTorch runtimes, with
Chrome/Perfetto and TensorBoard traces; ONNX Runtime's profiler, by op type and by node)
into one operator table. The cell also gets a per-iteration time breakdown, busy-versus-
wall utilisation, FLOPs from ``torch.utils.flop_counter`` with achieved GFLOP/s (and, on
the CPU, the share of an estimated peak), peak memory, and hints where the profile shows
the evidence. Files go to ``profiles/<variant>/`` in the run directory; the summary rides
on the cell (``profile``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from densebench.environment import _psutil, cpu_info, process_cpu_seconds
from densebench.errors import bad_setting, one_line
from densebench.parity import fixed_input
from densebench.results.schema import Cell
from densebench.scenarios import Emit, Scenario, register_scenario
from densebench.scenarios.closed_loop import peak_rss_mb


@dataclass
class ProfileSettings:
    iters: int = 10  # profiled iterations
    warmup: int = 3  # iterations before profiling
    top: int = 25  # rows of the operator table kept in the summary

    def __post_init__(self):
        for setting in ("iters", "top"):
            if getattr(self, setting) < 1:
                raise bad_setting(setting, f"must be at least 1, got {getattr(self, setting)}")
        if self.warmup < 0:
            raise bad_setting("warmup", f"must not be negative, got {self.warmup}")


def profile_dir(workdir: Path, variant: str) -> Path:
    return Path(workdir) / "profiles" / variant.replace(":", "_")


@register_scenario
class Profile(Scenario):
    NAME = "profile"
    DESCRIPTION = "where the time goes: operator table, traces, breakdown, FLOPs, hints"
    Settings = ProfileSettings
    MODES = ("model",)
    MODES_WHY = ": it profiles compute and breaks the end-to-end time down itself"
    DEFAULT_REPEATS = 1

    def prepare_options(self, workdir: Path, variant: str) -> dict:
        out = profile_dir(workdir, variant)
        out.mkdir(parents=True, exist_ok=True)
        return {"profile_dir": out}

    def run(self, prepared, cells: list[Cell], settings: dict, emit: Emit, workdir) -> None:
        for planned in cells:
            try:
                result = self.profile(prepared, planned, settings, emit, Path(workdir))
                cell = Cell.from_dict({**planned.to_dict(), "status": "ok", "error": None,
                                       "profile": result, "options": result["options"],
                                       "cold_start": dict(prepared.cold_start)})
            except Exception as e:
                cell = planned.failed(one_line(e))
            emit({"event": "cell", "cell": cell.to_dict()})

    def profile(self, prepared, planned: Cell, s: dict, emit: Emit, workdir: Path) -> dict:
        session, device, label = prepared.session, prepared.device, prepared.variant.label
        bs, threads = planned.batch_size, prepared.threads

        def phase(name: str) -> None:
            emit({"event": "phase", "variant": label, "phase": name})

        out_dir = profile_dir(workdir, label)
        out_dir.mkdir(parents=True, exist_ok=True)
        x_host = fixed_input(bs, prepared.image_size)
        xd = session.to_device(x_host)
        phase("warm-up")
        for _ in range(max(1, s["warmup"])):
            session(xd)
        session.synchronize()
        phase("profile")
        cpu0, wall0 = process_cpu_seconds(), time.perf_counter()
        tb_dir = workdir / "tb" / f"profile_{out_dir.name}"
        trace = prepared.backend.profile(session, xd, s["iters"], out_dir, tb_dir)
        wall = time.perf_counter() - wall0
        cpu1 = process_cpu_seconds()
        table, files, breakdown = trace.table, dict(trace.files), dict(trace.breakdown)
        if "tensorboard" in files:
            files["tensorboard"] = str(tb_dir.relative_to(workdir))
        if "device_time_s" in breakdown:
            breakdown["device_busy_fraction"] = breakdown.pop("device_time_s") / wall \
                if wall else None
        _write_csv(table, out_dir / "operators.csv")
        files["operators"] = "operators.csv"
        breakdown["wall_ms_per_iter_profiled"] = wall * 1e3 / s["iters"]
        breakdown["cpu_busy_fraction"] = (cpu1 - cpu0) / (wall * threads) if wall else None
        phase("time breakdown")
        breakdown.update(_time_parts(session, x_host, max(3, s["iters"])))
        flops = count_flops(prepared.loaded.module, bs, prepared.image_size)
        achieved = flops / (breakdown["compute_ms"] / 1e3) / 1e9
        peak = None
        if not device.startswith("cuda"):
            prec = prepared.variant.precision \
                if prepared.variant.precision in ("bf16", "int8") else "fp32"
            cores = min(threads, cpu_info()["physical_cores"] or threads)
            peak = cpu_peak_gflops(prec, cores)
        memory = {"peak_rss_mb": round(peak_rss_mb(), 1)}
        if device.startswith("cuda"):
            memory["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device)
                                                     / 2**20, 1)
        result = {
            "variant": label, "batch_size": bs, "device": device,
            "iters": s["iters"], "path": str(out_dir.relative_to(workdir)), "files": files,
            "profiler": prepared.backend.PROFILER,
            "top": table[:s["top"]], "operators": len(table),
            "breakdown": breakdown,
            "flops_per_iter": flops, "gflops_per_image": flops / bs / 1e9,
            "achieved_gflops": achieved,
            "peak": peak,
            "peak_share": achieved / peak["gflops"] if peak and peak.get("gflops") else None,
            "memory": memory,
            "hints": hints(table, device, breakdown, trace.nodes_on_cpu, prepared),
            "options": session.options,
            "cold_start": prepared.cold_start,
            "threads": threads,
        }
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1, default=str))
        return result


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


def _write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd  # pandas takes a second to import: only when profiling

    pd.DataFrame(rows).to_csv(path, index=False)
