"""A straightforward hand-written LoadGen Server harness, as a user would write one without
densebench: ONNX Runtime fp32 on the CPU (its default threads), one session behind a
dynamic batcher (one queue, one worker thread, batches of up to MAX_BATCH gathered for at
most 2 ms), and a search for the highest Poisson rate whose Server run is VALID with the
p99 under the budget: a first probe at 70% of the closed-loop capacity, then steps of
20% down until VALID and of 15% up until INVALID. Its own best max batch of those given.

`make perf` (section 5) runs it beside `densebench search` on the same ONNX file.

    python scripts/handwritten_server.py --onnx model.onnx --budget-ms 100 --max-batch 1,4

Prints one JSON object: the best max batch, its highest VALID QPS, and every probe.
"""

from __future__ import annotations

import argparse
import json
import queue
import tempfile
import threading
import time
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import onnxruntime as ort

SAMPLES = 64
GATHER_S = 0.002


class Batcher:
    def __init__(self, session, images: np.ndarray, max_batch: int):
        self.session, self.images, self.max_batch = session, images, max_batch
        self.input = session.get_inputs()[0].name
        self.q: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self.serve, daemon=True)
        self.worker.start()

    def issue(self, samples):
        for s in samples:
            self.q.put(s)

    def flush(self):
        pass

    def serve(self):
        while True:
            first = self.q.get()
            if first is None:
                return
            batch, deadline = [first], time.perf_counter() + GATHER_S
            while len(batch) < self.max_batch:
                try:
                    item = self.q.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self.q.put(None)
                    break
                batch.append(item)
            x = self.images[[s.index for s in batch]]
            out = self.session.run(None, {self.input: x})[0]
            responses = []
            for row, s in zip(out, batch, strict=True):
                ptr, _ = row.__array_interface__["data"]
                responses.append(lg.QuerySampleResponse(s.id, ptr, row.nbytes))
            lg.QuerySamplesComplete(responses)

    def stop(self):
        self.q.put(None)
        self.worker.join(timeout=60)


def server_run(session, images, max_batch: int, qps: float, budget_ms: float,
               duration_s: float) -> dict:
    ts = lg.TestSettings()
    ts.scenario = lg.TestScenario.Server
    ts.mode = lg.TestMode.PerformanceOnly
    ts.server_target_qps = qps
    ts.server_target_latency_ns = int(budget_ms * 1e6)
    ts.server_target_latency_percentile = 0.99
    ts.min_duration_ms = int(duration_s * 1000)
    ts.min_query_count = 662  # what a p99 needs to be judged at 99% confidence
    b = Batcher(session, images, max_batch)
    sut = lg.ConstructSUT(b.issue, b.flush)
    qsl = lg.ConstructQSL(SAMPLES, SAMPLES, lambda i: None, lambda i: None)
    out = Path(tempfile.mkdtemp(prefix="handwritten-"))
    log = lg.LogSettings()
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    try:
        lg.StartTestWithLogSettings(sut, qsl, ts, log)
    finally:
        b.stop()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    summary = (out / "mlperf_log_summary.txt").read_text()
    p99 = next((float(line.split(":")[1]) / 1e6 for line in summary.splitlines()
                if line.startswith("99.00 percentile latency (ns)")), None)
    return {"qps": qps, "valid": "Result is : VALID" in summary, "p99_ms": p99}


def best_rate(session, images, max_batch: int, budget_ms: float, duration_s: float,
              probes: int) -> dict:
    x = images[:max_batch]
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 2.0 or n < 3:
        session.run(None, {name: x})
        n += 1
    capacity = max_batch * n / (time.perf_counter() - t0)
    runs, q = [], 0.7 * capacity
    valid = invalid = None
    while len(runs) < probes:
        r = server_run(session, images, max_batch, q, budget_ms, duration_s)
        runs.append(r)
        if r["valid"]:
            valid = max(valid or 0, q)
            if invalid is not None:
                break
            q *= 1.15
        else:
            invalid = min(invalid or q, q)
            if valid is not None:
                break
            q *= 0.8
    return {"max_batch": max_batch, "closed_loop_capacity_qps": capacity,
            "best_qps": valid, "lowest_invalid_qps": invalid, "probes": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--budget-ms", type=float, default=100.0)
    ap.add_argument("--max-batch", default="1,4")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per probe")
    ap.add_argument("--probes", type=int, default=5, help="per max batch, at most")
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal(
        (SAMPLES, 3, args.image_size, args.image_size)).astype(np.float32)
    results = [best_rate(session, images, int(b), args.budget_ms, args.duration, args.probes)
               for b in args.max_batch.split(",")]
    best = max(results, key=lambda r: r["best_qps"] or 0)
    print(json.dumps({"budget_ms": args.budget_ms, "best": best, "results": results}))


if __name__ == "__main__":
    main()
