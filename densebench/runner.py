"""`densebench run` as a library: plan the cells, run each variant (in its own subprocess by
default), store what comes back as it comes.

A variant's cells are produced by ``run_variant(job, emit)``, a function of a serialisable
job that reports through ``emit(event)``; the same function runs in-process
(``isolate=False``) or in a worker (``python -m densebench.runner``), whose events travel
over a dedicated pipe so that nothing a library prints can corrupt them.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from densebench.errors import ConfigError, DensebenchError
from densebench.measure.engine import MODES, StopRule, Warmup

Emit = Callable[[dict], None]


@dataclass
class RunConfig:
    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    variants: list[str] = field(default_factory=lambda: ["eager"])
    compile_modes: list[str] = field(default_factory=lambda: ["default"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    device: str = "auto"
    threads: int | None = None
    warmup: str = "3"
    min_iters: int = 10
    min_time: float = 3.0
    iters: int | None = None
    max_time: float | None = None
    timeout: float = 1800.0
    isolate: bool = True
    name: str | None = None

    def __post_init__(self):
        if not self.variants:
            raise ConfigError("no variant given: pass --variant NAME (or --variant all)")
        if not self.batch_sizes:
            raise ConfigError("no batch size given: pass --batch-size 1,16")
        for b in self.batch_sizes:
            if not isinstance(b, int) or b < 1:
                raise ConfigError(f"--batch-size must be positive integers, got {b}")
        for m in self.modes:
            if m not in MODES:
                raise ConfigError(f"unknown mode {m!r}: choose from {', '.join(MODES)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.timeout <= 0:
            raise ConfigError(f"--timeout must be positive, got {self.timeout}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"--image-size must be at least 1, got {self.image_size}")
        Warmup.parse(self.warmup)
        self.stop_rule()

    def stop_rule(self) -> StopRule:
        return StopRule(self.min_iters, self.min_time, self.iters, self.max_time)


# ============================================================================ the worker


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gpu_utilization(device: str) -> float | None:
    try:
        import torch

        return float(torch.cuda.utilization(torch.device(device)))
    except Exception:  # needs pynvml; utilisation is optional, never a reason to fail
        return None


def run_variant(job: dict, emit: Emit) -> None:
    """Measure one variant at every batch size and mode of ``job``; emit a cell for each."""
    import torch

    from densebench.artifacts import ArtifactCache, ExportSpec
    from densebench.backends import build_session
    from densebench.environment import process_cpu_seconds
    from densebench.exporters import export_artifact, fixed_input, parity_stats
    from densebench.measure.engine import time_calls, warm_up
    from densebench.measure.stats import summarize
    from densebench.models import load_model
    from densebench.variants import get_variant

    cfg = RunConfig(**job["config"])
    variant = get_variant(job["variant"])
    device = job["device"]
    label = variant.label
    threads = job["threads"]
    torch.set_num_threads(threads)
    warmup = Warmup.parse(cfg.warmup)
    stop = cfg.stop_rule()

    def phase(name: str, **kw):
        emit({"event": "phase", "variant": label, "phase": name, **kw})

    def fail_rest(cells_left, error: str):
        for bs, mode in cells_left:
            emit({"event": "cell", "cell": _cell(label, variant, bs, mode, device, threads,
                                                   status="failed", error=error)})

    plan = [(bs, mode) for bs in cfg.batch_sizes for mode in cfg.modes]
    cold: dict = {}
    try:
        phase("load model")
        loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
        image_size = cfg.image_size or loaded.default_image_size
        artifact = None
        if variant.artifact:
            phase("export")
            fmt, prec = variant.artifact
            spec = ExportSpec(cfg.model, fmt, prec, cfg.weights, cfg.num_classes,
                              image_size=image_size, device=device)
            t0 = time.perf_counter()
            artifact, cached = export_artifact(spec, ArtifactCache(), loaded=loaded)
            cold["export_s"] = 0.0 if cached else round(time.perf_counter() - t0, 3)
            cold["artifact_cached"] = cached
        phase("load")
        t0 = time.perf_counter()
        trt_cache = None
        if variant.provider == "tensorrt" and artifact is not None:
            trt_cache = artifact.path.parent / ".trt" / artifact.path.name
        session = build_session(variant, loaded, device, artifact=artifact, threads=threads,
                                trt_cache=trt_cache)
        cold["load_s"] = round(time.perf_counter() - t0, 4)
        size_mb = (artifact.size_bytes / 1e6 if artifact is not None else
                   sum(p.numel() * p.element_size() for p in loaded.module.parameters()) / 1e6)
    except Exception as e:
        fail_rest(plan, _one_line(e))
        return
    emit({"event": "variant", "variant": label, "info": {
        "description": variant.description, "precision": variant.precision,
        "backend": variant.backend, "options": session.options, "cold_start": cold,
        "artifact": artifact.key if artifact is not None else None, "model_size_mb": size_mb,
    }})

    first_cell = True
    for bs in cfg.batch_sizes:
        x_host = None
        parity = None
        ref = None
        for mode in cfg.modes:
            try:
                if x_host is None:  # inside the try: a batch too big to allocate fails its cell
                    x_host = fixed_input(bs, image_size)
                if ref is None:
                    with torch.inference_mode():
                        ref = loaded.module(x_host)
                if mode == "model":
                    fn, x, timer = session, session.to_device(x_host), session.timer
                else:
                    fn, x, timer = session.e2e, x_host, "host"
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats(device)
                phase("compile" if first_cell and variant.backend == "compile" else "warm-up",
                      batch_size=bs, mode=mode)
                n_warm, first_s = warm_up(fn, x, warmup, session.synchronize)
                if first_cell:
                    cold["first_inference_s"] = round(first_s, 4)
                    first_cell = False
                phase("measure", batch_size=bs, mode=mode)
                cpu0, wall0 = process_cpu_seconds(), time.perf_counter()

                def report(n, elapsed, bs=bs, mode=mode):
                    emit({"event": "progress", "variant": label, "batch_size": bs, "mode": mode,
                          "iters": n, "elapsed": elapsed})

                samples = time_calls(fn, x, timer=timer, device=device, stop=stop, report=report)
                wall = time.perf_counter() - wall0
                busy = process_cpu_seconds() - cpu0
                if parity is None:
                    parity = parity_stats(session.e2e(x_host), ref)
                memory = {"peak_rss_mb": round(_peak_rss_mb(), 1)}
                if device.startswith("cuda"):
                    memory["cuda_peak_allocated_mb"] = round(
                        torch.cuda.max_memory_allocated(device) / 2**20, 1)
                    memory["cuda_peak_reserved_mb"] = round(
                        torch.cuda.max_memory_reserved(device) / 2**20, 1)
                cell = _cell(label, variant, bs, mode, device, threads, status="ok")
                cell.update(
                    stats=summarize(samples, bs), samples_ms=samples, parity=parity,
                    timer="cuda-events" if timer == "cuda" else "perf_counter_ns",
                    warmup_iters=n_warm, first_iteration_s=round(first_s, 4),
                    cold_start=dict(cold), memory=memory, model_size_mb=round(size_mb, 2),
                    cpu_utilization_pct=round(100.0 * busy / wall / (os.cpu_count() or 1), 1),
                    gpu_utilization_pct=(_gpu_utilization(device)
                                         if device.startswith("cuda") else None),
                    options=session.options, warnings=list(session.warnings),
                )
                emit({"event": "cell", "cell": cell})
            except Exception as e:  # this cell failed (out of memory, say): record, go on
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                emit({"event": "cell", "cell": _cell(label, variant, bs, mode, device, threads,
                                                       status="failed", error=_one_line(e))})


def _cell(label, variant, bs, mode, device, threads, *, status, error=None) -> dict:
    return {
        "variant": label, "batch_size": bs, "mode": mode, "device": device, "status": status,
        "error": error, "precision": variant.precision, "backend": variant.backend,
        "description": variant.description, "threads": threads,
    }


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower() or \
            "can't allocate memory" in str(e).lower():
        return f"out of memory: {text[0][:200] if text else type(e).__name__}"
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


# ============================================================================ the parent


class RunInterrupted(DensebenchError):
    exit_code = 130


def run_benchmark(cfg: RunConfig, *, progress: Emit | None = None, store=None):
    """Run every cell of ``cfg``; return the stored RunRecord (status complete/incomplete)."""
    import torch

    from densebench.devices import resolve_device
    from densebench.environment import fingerprint
    from densebench.models import check_image_size, load_model, model_stats
    from densebench.results.store import RunStore
    from densebench.variants import expand

    emit = progress or (lambda ev: None)
    device = resolve_device(cfg.device)
    variants, skipped = expand(cfg.variants, cfg.compile_modes, device)
    threads = cfg.threads or torch.get_num_threads()
    loaded = load_model(cfg.model, cfg.weights, cfg.num_classes)
    image_size = cfg.image_size or loaded.default_image_size
    check_image_size(cfg.model, image_size, cfg.num_classes)
    torch.set_num_threads(threads)
    env = fingerprint()
    env["settings"]["threads_requested"] = cfg.threads
    try:
        stats = model_stats(cfg.model, image_size)
        macs = {"params": stats.params, "gmacs_per_image": round(stats.gmacs, 4)}
    except Exception:
        macs = {}
    store = store or RunStore()
    rec = store.create("benchmark", cfg.name, asdict(cfg), env, extra={
        "command": sys.argv,
        "device": device,
        "threads": threads,
        "model": {
            "name": cfg.model, "weights": loaded.weights.label, "weights_id": loaded.weights_id,
            "random_weights": loaded.random_weights, "weights_description":
            loaded.describe_weights(), "num_classes": loaded.num_classes,
            "image_size": image_size, **macs,
        },
    })
    rec.data["skipped"] = skipped
    rec.data["plan"] = [v.label for v in variants]
    rec.save()
    emit({"event": "start", "run": rec.id, "path": str(rec.path), "variants": rec.data["plan"],
          "cells": len(variants) * len(cfg.batch_sizes) * len(cfg.modes), "skipped": skipped})
    config = asdict(cfg)
    started = _process_start()
    rec.data["timeline"] = {"first_timed_iteration_s": None}
    try:
        for v in variants:
            job = {"config": config, "variant": v.label, "device": device, "threads": threads}

            def on_event(ev, rec=rec):
                if ev["event"] == "cell":
                    rec.add_cell(ev["cell"])
                    rec.save()
                elif ev["event"] == "variant":
                    rec.data["variants"][ev["variant"]] = ev["info"]
                elif (ev["event"] == "phase" and ev["phase"] == "measure"
                      and rec.data["timeline"]["first_timed_iteration_s"] is None):
                    rec.data["timeline"]["first_timed_iteration_s"] = round(
                        time.time() - started, 3)
                emit(ev)

            if cfg.isolate:
                _run_isolated(job, on_event, cfg, rec)
            else:
                run_variant(job, on_event)
    except KeyboardInterrupt:
        rec.finish("incomplete")
        raise RunInterrupted(
            f"interrupted: run {rec.id} kept its {sum(c['status'] == 'ok' for c in rec.cells)} "
            f"finished cells and is marked incomplete ({rec.path})"
        ) from None
    rec.finish("complete")
    emit({"event": "end", "run": rec.id})
    return rec


def _process_start() -> float:
    """When this process started (wall clock), so the timeline includes Python's imports."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()


def _run_isolated(job: dict, on_event: Emit, cfg: RunConfig, rec) -> None:
    """One variant in a worker process; a crash, hang or OOM fails its remaining cells."""
    read_fd, write_fd = os.pipe()
    logs = rec.path / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{job['variant'].replace(':', '_')}.log"
    env = {**os.environ, "DENSEBENCH_EVENT_FD": str(write_fd)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "densebench.runner"], stdin=subprocess.PIPE, stdout=log,
            stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env, start_new_session=True,
        )
    os.close(write_fd)
    events: queue.Queue = queue.Queue()

    def reader():
        with os.fdopen(read_fd, "r") as f:
            for line in f:
                try:
                    events.put(json.loads(line))
                except ValueError:
                    continue
        events.put(None)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    proc.stdin.write(json.dumps(job).encode())
    proc.stdin.close()
    seen: set = set()
    deadline = time.monotonic() + cfg.timeout
    error = None
    try:
        while True:
            if time.monotonic() > deadline:  # checked whether or not events keep coming
                error = f"timed out after {cfg.timeout:g} s (--timeout); worker killed"
                break
            try:
                ev = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if ev is None:
                break
            if ev["event"] == "cell":
                seen.add((ev["cell"]["batch_size"], ev["cell"]["mode"]))
            on_event(ev)
    finally:
        if proc.poll() is None:
            _kill(proc)
    rc = proc.wait()
    if error is None and rc != 0:
        if rc < 0:
            sig = signal.Signals(-rc).name
            hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
            error = f"worker killed by {sig}{hint}"
        else:
            error = f"worker exited with code {rc}"
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        if tail:
            error += f": {tail[-1].strip()[:200]}"
        error += f" (log: {log_path})"
    if error:
        from densebench.variants import get_variant

        v = get_variant(job["variant"])
        for bs in cfg.batch_sizes:
            for mode in cfg.modes:
                if (bs, mode) not in seen:
                    on_event({"event": "cell", "cell": _cell(
                        v.label, v, bs, mode, job["device"], job["threads"], status="failed",
                        error=error)})


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _worker_main() -> None:
    fd = int(os.environ["DENSEBENCH_EVENT_FD"])
    out = os.fdopen(fd, "w", buffering=1)

    def emit(ev: dict) -> None:
        out.write(json.dumps(ev, default=_default) + "\n")

    job = json.loads(sys.stdin.read())
    try:
        run_variant(job, emit)
    except Exception:
        traceback.print_exc()
        raise
    finally:
        out.flush()


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches it
    _worker_main()
