"""The closed-loop scenario: fixed batches back to back, each timed (today's `run`).

Per batch size: the fixed parity input and its fp32 reference once; per mode (``model``:
input already on the device; ``e2e``: host in, host out): warm-up with the timed shape,
then the stop rule's iterations, timed with the session's clock, then parity, memory and
CPU utilisation. ``e2e-jpeg`` cells start from JPEG files and end at top-5, every stage
timed (``imaging.measure``). A cell that fails (a batch that does not fit, say) is emitted as failed
and the next cell goes on.
"""

from __future__ import annotations

import os
import resource
import time

from densebench.errors import one_line
from densebench.results.schema import Cell
from densebench.scenarios import Emit, Scenario, register_scenario


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gpu_utilization(device: str) -> float | None:
    try:
        import torch

        return float(torch.cuda.utilization(torch.device(device)))
    except Exception:  # needs pynvml; utilisation is optional, never a reason to fail
        return None


@register_scenario
class ClosedLoop(Scenario):
    NAME = "closed-loop"
    DESCRIPTION = "fixed batches back to back, each timed (warm-up, stop rule, raw samples)"

    def record(self, config, threads: int | None) -> dict:
        """The measurement every cell of a run shares (warm-up and stop rule)."""
        return {"warmup": str(config.warmup), "min_iters": config.min_iters,
                "min_time": config.min_time, "iters": config.iters,
                "max_time": config.max_time}

    def run(self, prepared, cells: list[Cell], settings: dict, emit: Emit, workdir=None
            ) -> None:
        import torch

        from densebench.environment import HostLoad, process_cpu_seconds
        from densebench.measure.engine import StopRule, Warmup, time_calls, warm_up
        from densebench.measure.stats import summarize
        from densebench.parity import fixed_input, parity_stats

        session, device, label = prepared.session, prepared.device, prepared.variant.label
        warmup = Warmup.parse(settings["warmup"])
        stop = StopRule(settings["min_iters"], settings["min_time"], settings["iters"],
                        settings["max_time"])
        cold = dict(prepared.cold_start)
        cuda = device.startswith("cuda")
        first_cell = True
        inputs: dict[int, tuple] = {}  # batch size -> (host input, reference, parity)
        for planned in cells:
            bs, mode = planned.batch_size, planned.mode
            try:
                if mode == "e2e-jpeg":
                    cell = self.jpeg_cell(prepared, planned, settings, emit, first_cell, cold)
                    first_cell = False
                    emit({"event": "cell", "cell": cell.to_dict()})
                    continue
                if bs not in inputs:  # inside the try: a batch too big to allocate fails
                    inputs.clear()
                    x_host = fixed_input(bs, prepared.image_size)
                    inputs[bs] = (x_host, prepared.reference(x_host), None)
                x_host, ref, parity = inputs[bs]
                if mode == "model":
                    fn, x, timer = session, session.to_device(x_host), session.timer
                else:
                    fn, x, timer = session.e2e, x_host, "host"
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                emit({"event": "phase", "variant": label, "batch_size": bs, "mode": mode,
                      "phase": prepared.backend.FIRST_CALL if first_cell else "warm-up"})
                n_warm, first_s = warm_up(fn, x, warmup, session.synchronize)
                if first_cell:
                    cold["first_inference_s"] = round(first_s, 4)
                    first_cell = False
                emit({"event": "phase", "variant": label, "phase": "measure",
                      "batch_size": bs, "mode": mode})
                load = HostLoad().start()
                cpu0, wall0 = process_cpu_seconds(), time.perf_counter()

                def report(n, elapsed, bs=bs, mode=mode):
                    emit({"event": "progress", "variant": label, "batch_size": bs,
                          "mode": mode, "iters": n, "elapsed": elapsed})

                samples = time_calls(fn, x, timer=timer, device=device, stop=stop,
                                     report=report)
                wall = time.perf_counter() - wall0
                busy = process_cpu_seconds() - cpu0
                host_load = load.stop()
                if parity is None:
                    parity = parity_stats(session.e2e(x_host), ref)
                    inputs[bs] = (x_host, ref, parity)
                memory = {"peak_rss_mb": round(peak_rss_mb(), 1)}
                if cuda:
                    memory["cuda_peak_allocated_mb"] = round(
                        torch.cuda.max_memory_allocated(device) / 2**20, 1)
                    memory["cuda_peak_reserved_mb"] = round(
                        torch.cuda.max_memory_reserved(device) / 2**20, 1)
                cell = Cell.from_dict({
                    **planned.to_dict(), "status": "ok", "error": None,
                    "stats": summarize(samples, bs), "samples_ms": samples, "parity": parity,
                    "timer": "cuda-events" if timer == "cuda" else "perf_counter_ns",
                    "warmup_iters": n_warm, "first_iteration_s": round(first_s, 4),
                    "cold_start": dict(cold), "memory": memory,
                    "model_size_mb": round(prepared.model_size_mb, 2),
                    "cpu_utilization_pct": round(100.0 * busy / wall / (os.cpu_count() or 1),
                                                 1),
                    "gpu_utilization_pct": _gpu_utilization(device) if cuda else None,
                    "options": session.options, "warnings": list(session.warnings),
                    "host_load": host_load,
                })
            except Exception as e:  # this cell failed (out of memory, say): record, go on
                if cuda:
                    torch.cuda.empty_cache()
                cell = planned.failed(one_line(e))
            emit({"event": "cell", "cell": cell.to_dict()})

    def jpeg_cell(self, prepared, planned: Cell, settings: dict, emit: Emit,
                  first_cell: bool, cold: dict) -> Cell:
        """An e2e-jpeg cell: JPEG files to top-5 (``imaging.measure``)."""
        from densebench.environment import HostLoad
        from densebench.imaging.measure import measure_jpeg

        label, bs, mode = prepared.variant.label, planned.batch_size, planned.mode
        emit({"event": "phase", "variant": label, "batch_size": bs, "mode": mode,
              "phase": prepared.backend.FIRST_CALL if first_cell else "warm-up"})

        def report(n, elapsed):
            emit({"event": "progress", "variant": label, "batch_size": bs, "mode": mode,
                  "iters": n, "elapsed": elapsed})

        load = HostLoad().start()
        measured = measure_jpeg(prepared, planned, settings, report)
        if first_cell:
            cold["first_inference_s"] = measured["first_iteration_s"]
        return Cell.from_dict({
            **planned.to_dict(), "status": "ok", "error": None, **measured,
            "cold_start": dict(cold), "memory": {"peak_rss_mb": round(peak_rss_mb(), 1)},
            "model_size_mb": round(prepared.model_size_mb, 2),
            "options": prepared.session.options, "warnings": list(prepared.session.warnings),
            "host_load": load.stop()})
