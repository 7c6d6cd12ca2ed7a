"""MLPerf LoadGen scenarios: ``single-stream``, ``multi-stream``, ``server``, ``offline``.

The traffic, the validity rules and the early-stopping statistics are LoadGen's own
(``mlperf_loadgen``, package ``mlcommons-loadgen``); densebench supplies the system under
test and the sample library, kept apart as in MLPerf's reference harness:

- ``SampleLibrary``: ``samples`` preprocessed inputs held in memory before timing
  (synthetic by default, or ImageFolder images), with their fp32 reference logits;
- ``DynamicBatcher`` (the SUT): LoadGen's queries go into one queue; each of
  ``instances`` threads, each with its own session, takes the oldest sample and gathers
  more until ``max_batch`` samples or ``batch_timeout_ms`` after the first, whichever comes
  first, runs them end to end (host in, host out) and answers LoadGen with real logits.

Every result is LoadGen's, read back from its ``mlperf_log_detail.txt`` (kept, with the
summary, in the run directory): the verdict (VALID / INVALID with every reason) and its
figures. Durations are short by default and labelled so; LoadGen's mlperf.conf is never
loaded (``FromConfig`` is not called), ``official`` asks for MLPerf's own minimums.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densebench.errors import ConfigError, bad_setting, one_line
from densebench.processes import usable_cores
from densebench.results.schema import Cell
from densebench.scenarios import (
    Emit,
    Scenario,
    check_batch_sizes,
    duration_field,
    register_scenario,
)

OFFICIAL_MIN_DURATION_MS = 600_000
LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")


def require_loadgen(scenario: str | None = None):
    """``mlperf_loadgen``, or one clear error saying how to get it."""
    try:
        import mlperf_loadgen
    except ImportError:
        what = f"scenario {scenario} needs" if scenario else "search needs"
        raise ConfigError(f"{what} MLPerf LoadGen, which is not installed: "
                          "pip install mlcommons-loadgen",
                          setting="scenario" if scenario else None) from None
    return mlperf_loadgen


# ------------------------------------------------------------------ sample library


class SampleLibrary:
    """Preprocessed inputs in memory, indexed like LoadGen's sample indices."""

    def __init__(self, images, labels=None, reference=None):
        self.images = images  # torch tensor (n, 3, h, w), float32, on the host
        self.labels = labels  # torch tensor (n,) or None
        self.reference = reference  # fp32 eager logits (n, classes) or None
        self.count = int(images.shape[0])

    def infer(self, session, indices: list[int], issued: list[int] | None = None):
        """Host logits for the samples ``indices`` (``issued``: when LoadGen issued each,
        for libraries that time stages from there)."""
        import torch

        return session.e2e(self.images.index_select(0, torch.tensor(indices)))

    def reset_times(self) -> None:
        """Forget what the warm-up timed (a library that times stages keeps them)."""

    def stage_summary(self, batch_sizes: dict) -> dict | None:
        return None

    def use_workers(self, workers: int) -> None:
        """Decode workers for the next cell (only the JPEG path decodes)."""

    def close(self) -> None:
        pass

    @classmethod
    def build(cls, prepared, samples: int, data: str | None, mode: str = "e2e",
              settings: dict | None = None):
        """The library for ``mode``: preprocessed tensors, or (e2e-jpeg) JPEG bytes that
        the system under test decodes (``imaging.library.JpegLibrary``)."""
        import torch

        if mode == "e2e-jpeg":
            from densebench.imaging.library import JpegLibrary

            return JpegLibrary(prepared, settings or {}, samples)

        from densebench.parity import fixed_input

        labels = None
        if data in (None, "synthetic"):
            images = fixed_input(samples, prepared.image_size)
        else:
            from densebench import data as data_mod

            ds = data_mod.load(data_mod.Source.parse(data), prepared.image_size,
                               limit=samples)
            xs, ys = [], []
            for x, y in ds.batches(64):
                xs.append(x)
                if y is not None:
                    ys.append(y)
            if not xs:
                raise ConfigError(f"data {data}: no image could be read", setting="data")
            images = torch.cat(xs)
            labels = torch.cat(ys) if ys else None
        ref = []
        for i in range(0, len(images), 64):
            ref.append(prepared.reference(images[i:i + 64]))
        return cls(images.contiguous(), labels, torch.cat(ref))


# ------------------------------------------------------------------ the system under test


class DynamicBatcher:
    """LoadGen's SUT: one queue, ``instances`` worker threads, batches of up to
    ``max_batch`` samples gathered for at most ``batch_timeout_ms`` after the first."""

    def __init__(self, lg, sessions: list, library: SampleLibrary, max_batch: int,
                 batch_timeout_ms: float, keep_outputs: bool = False):
        self.lg = lg
        self.sessions = sessions
        self.library = library
        self.max_batch = max_batch
        self.timeout_s = batch_timeout_ms / 1e3
        self.queue: queue.Queue = queue.Queue()
        self.batch_sizes: Counter = Counter()
        self.outputs: dict[int, np.ndarray] = {}  # sample index -> logits (accuracy mode)
        self.keep_outputs = keep_outputs
        self.issued_at: dict[int, int] = {}
        self.latencies_ms: list[float] = []  # SUT-side: issue -> answer, per sample
        self.errors: list[str] = []
        self.host_load: dict | None = None
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True,
                                          name=f"densebench-instance-{i}")
                         for i, s in enumerate(sessions)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        for _ in self._threads:
            self.queue.put(None)
        for t in self._threads:
            t.join(timeout=60)

    # LoadGen's callbacks
    def issue(self, samples) -> None:
        now = time.perf_counter_ns()
        for s in samples:
            self.queue.put((s.id, s.index, now))

    def flush(self) -> None:
        pass

    def _take(self):
        """The oldest sample, then more until the batch is full or the timeout passes."""
        first = self.queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.timeout_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                item = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # another instance's stop signal: leave it
                break
            batch.append(item)
        return batch

    def _serve(self, session) -> None:
        lib = self.library
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                logits = lib.infer(session, [b[1] for b in batch], [b[2] for b in batch])
                out = np.ascontiguousarray(logits.numpy(), dtype=np.float32)
            except Exception as e:  # answered anyway, so LoadGen never waits forever
                self.errors.append(one_line(e))
                out = np.zeros((len(batch), 1), dtype=np.float32)
            responses = []
            for row, (qid, _, _) in zip(out, batch, strict=True):
                ptr, _ = row.__array_interface__["data"]
                responses.append(self.lg.QuerySampleResponse(qid, ptr, row.nbytes))
            self.lg.QuerySamplesComplete(responses)  # `out` stays alive until it returns
            done = time.perf_counter_ns()
            with self._lock:
                self.batch_sizes[len(batch)] += 1
                for row, (_, index, issued) in zip(out, batch, strict=True):
                    self.latencies_ms.append((done - issued) / 1e6)
                    if self.keep_outputs:
                        self.outputs[int(index)] = row.copy()


# ------------------------------------------------------------------ reading LoadGen's logs


def read_detail(path: Path) -> dict:
    """``:::MLLOG {json}`` lines of mlperf_log_detail.txt as {key: value} (last wins)."""
    out: dict = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith(":::MLLOG"):
            continue
        try:
            rec = json.loads(line[len(":::MLLOG"):].strip())
        except ValueError:
            continue
        out[rec.get("key")] = rec.get("value")
    return out


def verdict(detail: dict, latency_budget_ms: float | None, percentile: float) -> dict:
    """LoadGen's verdict and why, in words."""
    valid = detail.get("result_validity") == "VALID"
    reasons = []
    if detail.get("result_min_duration_met") is False:
        reasons.append("min duration not met")
    if detail.get("result_min_queries_met") is False:
        reasons.append("min queries not met")
    if detail.get("result_perf_constraints_met") is False:
        over = detail.get("result_overlatency_query_count")
        bound = f"{latency_budget_ms:g} ms budget" if latency_budget_ms is not None else \
            "latency bound"
        reasons.append(f"latency bound not met (p{percentile:g} over the {bound}"
                       + (f"; {over} queries over it)" if over is not None else ")"))
    if detail.get("early_stopping_met") is False:
        text = " ".join(str(detail.get("early_stopping_result") or "").split())
        reasons.append("early stopping not met" + (f": {text}" if text else ""))
    extra = str(detail.get("result_invalid_reason") or "").strip()
    if extra and not valid:
        reasons.append(extra)
    if not valid and not reasons:
        reasons.append("LoadGen said INVALID without a reason")
    return {"validity": "VALID" if valid else "INVALID", "reasons": reasons}


def _ms(detail: dict, key: str) -> float | None:
    v = detail.get(key)
    return None if v is None else float(v) / 1e6


# ------------------------------------------------------------------ the scenarios


@dataclass
class LoadGenSettings:
    """What the four LoadGen scenarios share (None: the default named beside it)."""

    max_batch: list[int] | None = None  # the dynamic batcher's largest batch: one cell each
    batch_timeout_ms: float | None = duration_field(None, "ms")  # 2 ms
    instances: int | None = None  # sessions serving the queue: 1
    oversubscribe: bool = False  # allow instances x threads above the cores
    samples: int | None = None  # the sample library's size: 256
    data: str | None = None  # synthetic | imagefolder:PATH
    duration: float | None = duration_field(None, "s")  # LoadGen's min duration: 10 s
    min_queries: int | None = None
    official: bool = False  # MLPerf's own minimum durations
    accuracy: bool = False  # accuracy mode: parity of every response

    def __post_init__(self):
        check_batch_sizes("max_batch", self.max_batch)
        if self.duration is not None and not (self.duration > 0 and
                                              math.isfinite(self.duration)):
            raise bad_setting("duration", f"must be positive, got {self.duration}")
        for setting in ("instances", "samples", "min_queries"):
            v = getattr(self, setting)
            if v is not None and v < 1:
                raise bad_setting(setting, f"must be at least 1, got {v}")
        if self.batch_timeout_ms is not None and not self.batch_timeout_ms >= 0:
            raise bad_setting("batch_timeout_ms", f"must not be negative, got "
                              f"{self.batch_timeout_ms}")


@dataclass
class ServerSettings(LoadGenSettings):
    target_qps: float | None = None  # required: queries per second offered
    latency_budget_ms: float | None = duration_field(None, "ms")  # 100 ms
    percentile: float | None = None  # held under the budget: 99

    def __post_init__(self):
        if self.target_qps is None:
            raise bad_setting("target_qps", "is required by the server scenario (queries "
                              "per second to offer), e.g. 20")
        for setting in ("target_qps", "latency_budget_ms"):
            v = getattr(self, setting)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise bad_setting(setting, f"must be positive, got {v}")
        if self.percentile is not None and not 0 < self.percentile < 100:
            raise bad_setting("percentile", f"must be between 0 and 100 (exclusive), got "
                              f"{self.percentile}")
        super().__post_init__()


@dataclass
class MultiStreamSettings(LoadGenSettings):
    samples_per_query: int | None = None  # 8

    def __post_init__(self):
        if self.samples_per_query is not None and self.samples_per_query < 1:
            raise bad_setting("samples_per_query", f"must be at least 1, got "
                              f"{self.samples_per_query}")
        super().__post_init__()


@dataclass
class OfflineSettings(LoadGenSettings):
    expected_qps: float | None = None  # what LoadGen sizes its one query for: measured

    def __post_init__(self):
        if self.expected_qps is not None and not (self.expected_qps > 0 and
                                                  math.isfinite(self.expected_qps)):
            raise bad_setting("expected_qps", f"must be positive, got {self.expected_qps}")
        super().__post_init__()


class LoadGenScenario(Scenario):
    """What the four LoadGen scenarios share: settings, SUT, QSL, running, reading back."""

    FAMILY = "LoadGen"
    Settings = LoadGenSettings
    BATCH_AXIS = "max_batch"
    MODES = ("e2e", "e2e-jpeg")
    DEFAULT_MODES = ("e2e",)
    MODES_WHY = ": they answer LoadGen with host logits from host inputs (or JPEG bytes)"
    DEFAULT_REPEATS = 1  # LoadGen keeps its own statistics over the queries
    LG_NAME = ""  # TestScenario member
    SAMPLES_PER_QUERY_DEFAULT = 1

    def check(self, config) -> None:
        super().check(config)
        require_loadgen(self.NAME)
        self.threads(config)

    def threads(self, config) -> int:
        """Threads per serving instance: given, or the cores shared out among them."""
        s = config.scenario_settings
        return check_cores(s.instances or 1, config.threads, s.oversubscribe)

    def record(self, config, threads: int | None) -> dict:
        c = config.scenario_settings
        return {
            "samples": c.samples or 256,
            "max_batch": None,  # per cell: its batch size
            "batch_timeout_ms": 2.0 if c.batch_timeout_ms is None else c.batch_timeout_ms,
            "instances": c.instances or 1,
            "threads_per_instance": threads,
            "duration_ms": OFFICIAL_MIN_DURATION_MS if c.official
            else int(1000 * (c.duration if c.duration is not None else 10.0)),
            "min_query_count": c.min_queries,
            "official": bool(c.official),
            "accuracy": bool(c.accuracy),
            "data": c.data or "synthetic",
            "target_qps": getattr(c, "target_qps", None),
            # the server's bound, resolved: what LoadGen is given is what its verdict names
            "latency_budget_ms": (getattr(c, "latency_budget_ms", None) or 100.0)
            if self.NAME == "server" else None,
            "percentile": getattr(c, "percentile", None) or 99.0,
            "samples_per_query": getattr(c, "samples_per_query", None),
            "expected_qps": getattr(c, "expected_qps", None),
        }

    def set_test_settings(self, lg, ts, s: dict, timing: dict) -> None:
        """Scenario-specific TestSettings fields (``timing``: ms of one sample, ``one_ms``,
        and of a full batch, ``batch_ms``)."""

    def run(self, prepared, cells: list[Cell], settings: dict, emit: Emit,
            workdir: Path) -> None:
        lg = require_loadgen(self.NAME)
        label = prepared.variant.label
        libraries: dict = {}  # by mode: tensors, or JPEG bytes
        sessions = None
        for planned in cells:
            try:
                library = libraries.get(planned.mode)
                if library is None:
                    emit({"event": "phase", "variant": label, "phase": "sample library"})
                    library = libraries[planned.mode] = SampleLibrary.build(
                        prepared, settings["samples"], settings["data"], planned.mode,
                        settings)
                if sessions is None:
                    sessions = prepared.sessions(settings["instances"])
                library.use_workers(int(planned.axes.get("decode_workers", 0)))
                cell = self.run_cell(lg, prepared, sessions, library, planned, settings,
                                     emit, workdir)
            except Exception as e:
                cell = planned.failed(one_line(e))
            emit({"event": "cell", "cell": cell.to_dict()})
        for library in libraries.values():
            library.close()

    def run_cell(self, lg, prepared, sessions, library, planned: Cell, settings: dict,
                 emit: Emit, workdir: Path) -> Cell:
        s = dict(settings, max_batch=planned.batch_size,
                 threads_per_instance=prepared.threads)
        if len(sessions) > 1:  # how the runtime serves them (OpenVINO: hint and streams)
            s["instance_options"] = dict(sessions[0].options)
        label = prepared.variant.label
        # warm-up with the shapes the batcher will use; time one sample and a full batch
        emit({"event": "phase", "variant": label, "phase": "warm-up",
              "batch_size": planned.batch_size, "mode": planned.mode})
        timing = warm_up(sessions, library, planned.batch_size)
        library.reset_times()
        emit({"event": "phase", "variant": label, "phase": f"loadgen {self.NAME}",
              "batch_size": planned.batch_size, "mode": planned.mode})
        out = workdir / "loadgen" / _cell_dir(planned)
        out.mkdir(parents=True, exist_ok=True)
        result = self.run_loadgen(lg, sessions, library, s, timing, out,
                                  keep_outputs=s["accuracy"])
        detail, batcher, wall = result
        v = verdict(detail, s.get("latency_budget_ms"), s["percentile"])
        figures = self.figures(detail, s)
        lg_info = {
            **v, **figures, "scenario": self.LG_NAME,
            "query_count": detail.get("result_query_count"),
            "short_run": not s["official"],
            "duration_ms": s["duration_ms"], "wall_s": round(wall, 3),
            "effective": {k[len("effective_"):]: val for k, val in detail.items()
                          if k.startswith("effective_")},
            "batch_sizes": {str(k): n for k, n in sorted(batcher.batch_sizes.items())},
            "logs": {name: str((out / name).relative_to(workdir))
                     for name in LOG_FILES if (out / name).exists()},
            "sut_errors": batcher.errors[:5], "warm_up_ms": timing,
        }
        parity = accuracy = None
        if s["accuracy"]:
            parity, accuracy = _accuracy(batcher.outputs, library)
        stats = self.stats(detail, s, figures)
        return Cell.from_dict({
            **planned.to_dict(), "status": "ok", "error": None, "stats": stats,
            "samples_ms": batcher.latencies_ms if not s["accuracy"] else [],
            "scenario_settings": s, "loadgen": lg_info, "parity": parity,
            "accuracy": accuracy, "timer": "loadgen", "host_load": batcher.host_load,
            "cold_start": dict(prepared.cold_start), "options": prepared.session.options,
            "model_size_mb": round(prepared.model_size_mb, 2),
            "pipeline": library.stage_summary(batcher.batch_sizes),
        })

    def run_loadgen(self, lg, sessions, library, s: dict, timing: dict, out: Path,
                    keep_outputs: bool = False):
        """One LoadGen run with settings ``s``; ``timing`` (``warm_up``'s) sizes what LoadGen
        expects. Returns (LoadGen's detail log as a dict, the batcher, wall seconds)."""
        ts = lg.TestSettings()
        ts.scenario = getattr(lg.TestScenario, self.LG_NAME)
        ts.mode = lg.TestMode.AccuracyOnly if s["accuracy"] else lg.TestMode.PerformanceOnly
        ts.min_duration_ms = int(s["duration_ms"])
        if s["min_query_count"] is not None:
            ts.min_query_count = int(s["min_query_count"])
        if s.get("max_duration_ms"):  # a search's time limit: LoadGen stops the run there
            ts.max_duration_ms = int(s["max_duration_ms"])
        self.set_test_settings(lg, ts, s, timing)
        batcher = DynamicBatcher(lg, sessions, library, s["max_batch"], s["batch_timeout_ms"],
                                 keep_outputs=keep_outputs)
        sut = lg.ConstructSUT(batcher.issue, batcher.flush)
        qsl = lg.ConstructQSL(library.count, library.count, lambda idx: None,
                              lambda idx: None)  # every sample is already in memory
        out.mkdir(parents=True, exist_ok=True)  # LoadGen does not create it
        log = lg.LogSettings()
        log.log_output.outdir = str(out)
        log.log_output.copy_summary_to_stdout = False
        from densebench.environment import HostLoad

        batcher.start()
        load = HostLoad().start()
        t0 = time.perf_counter()
        try:
            lg.StartTestWithLogSettings(sut, qsl, ts, log)
        finally:
            wall = time.perf_counter() - t0
            batcher.host_load = load.stop()
            batcher.stop()
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        for junk in ("mlperf_log_trace.json", "mlperf_log_accuracy.json"):
            p = out / junk
            if p.exists() and p.stat().st_size > 5_000_000:
                p.unlink()  # LoadGen's accuracy log holds every response: too big to keep
        return read_detail(out / "mlperf_log_detail.txt"), batcher, wall

    def figures(self, detail: dict, s: dict) -> dict:
        return {}

    def stats(self, detail: dict, s: dict, figures: dict) -> dict:
        """Statistics from LoadGen's own figures (latencies in ms per query)."""
        from densebench.measure.stats import percentile_supported

        n = int(detail.get("result_query_count") or 0)
        key = "result_{}_percentile_latency_ns"
        per_query = "result_{}_percentile_per_query_latency_ns"
        out = {"n": n, "source": "loadgen",
               "mean_ms": _ms(detail, "result_mean_latency_ns"),
               "min_ms": _ms(detail, "result_min_latency_ns"),
               "max_ms": _ms(detail, "result_max_latency_ns"),
               "throughput": figures.get("samples_per_second"), "unsupported": []}
        for p in (50, 90, 95, 99):
            k = (per_query if self.LG_NAME == "MultiStream" else key).format(f"{p}.00")
            if percentile_supported(p, n):
                out[f"p{p}_ms"] = _ms(detail, k)
            else:
                out[f"p{p}_ms"] = None
                out["unsupported"].append(f"p{p} ({n} queries)")
        out["cov"] = None
        out["noisy"] = False
        return out


def warm_up(sessions, library: SampleLibrary, max_batch: int) -> dict:
    """Run every session at the shapes the batcher will use (1 and ``max_batch``); return
    the median ms of one sample (``one_ms``) and of a full batch (``batch_ms``)."""
    import statistics

    full = [i % library.count for i in range(max_batch)]
    one, batch = [], []
    for sess in sessions:
        for b in sorted({1, max_batch}):
            library.infer(sess, full[:b])
        for _ in range(3):
            t0 = time.perf_counter()
            library.infer(sess, full[:1])
            t1 = time.perf_counter()
            library.infer(sess, full)
            t2 = time.perf_counter()
            one.append((t1 - t0) * 1e3)
            batch.append((t2 - t1) * 1e3)
    return {"one_ms": statistics.median(one), "batch_ms": statistics.median(batch)}


def _cell_dir(c: Cell) -> str:
    """The cell's own log folder: its variant, batch, scenario, and its path and decode
    workers when it starts from JPEG bytes."""
    jpeg = f"-jpeg-dw{c.axes.get('decode_workers', 0)}" if c.mode == "e2e-jpeg" else ""
    return f"{c.variant.replace(':', '_')}-b{c.batch_size}-{c.scenario}{jpeg}"


def _accuracy(outputs: dict, library: SampleLibrary):
    """Parity of the responses with the fp32 reference (and top-1 where labels exist)."""
    import torch

    from densebench.parity import ParityAccumulator

    if not outputs:
        return None, None
    idx = sorted(outputs)
    got = torch.from_numpy(np.stack([outputs[i] for i in idx]))
    par = ParityAccumulator()
    par.add(got, library.reference[idx])
    acc = None
    if library.labels is not None:
        labels = library.labels[idx]
        top5 = got.topk(min(5, got.shape[1]), 1).indices
        acc = {"top1": int((got.argmax(1) == labels).sum()) / len(idx),
               "top5": int((top5 == labels[:, None]).any(1).sum()) / len(idx),
               "images": len(idx), "source": "loadgen accuracy"}
    return par.result(), acc


@register_scenario
class SingleStream(LoadGenScenario):
    NAME = "single-stream"
    LG_NAME = "SingleStream"
    DESCRIPTION = "LoadGen single-stream: one sample per query, the next when it completes"

    def set_test_settings(self, lg, ts, s, timing):
        ts.single_stream_expected_latency_ns = int(timing["one_ms"] * 1e6)

    def figures(self, detail, s):
        mean_ns = detail.get("result_mean_latency_ns")
        return {"p90_latency_ms": _ms(detail, "result_90.00_percentile_latency_ns"),
                "early_stopping_p90_ms": _ms(detail, "early_stopping_latency_ss"),
                "qps": detail.get("result_qps_with_loadgen_overhead"),
                "samples_per_second": 1e9 / mean_ns if mean_ns else None}


@register_scenario
class MultiStream(LoadGenScenario):
    NAME = "multi-stream"
    LG_NAME = "MultiStream"
    Settings = MultiStreamSettings
    DESCRIPTION = "LoadGen multi-stream: 8 samples per query, the next when it completes"

    def set_test_settings(self, lg, ts, s, timing):
        spq = int(s["samples_per_query"] or 8)
        ts.multi_stream_samples_per_query = spq
        batches = math.ceil(spq / s["max_batch"] / s["instances"])
        ts.multi_stream_expected_latency_ns = int(batches * timing["batch_ms"] * 1e6)

    def figures(self, detail, s):
        mean_ns = detail.get("result_mean_query_latency_ns")
        spq = detail.get("effective_samples_per_query") or s["samples_per_query"] or 8
        return {"p99_query_latency_ms": _ms(detail,
                                            "result_99.00_percentile_per_query_latency_ns"),
                "samples_per_query": spq,
                "samples_per_second": spq * 1e9 / mean_ns if mean_ns else None}


@register_scenario
class Server(LoadGenScenario):
    NAME = "server"
    LG_NAME = "Server"
    Settings = ServerSettings
    DESCRIPTION = "LoadGen server: Poisson arrivals at a target QPS under a latency bound"

    def set_test_settings(self, lg, ts, s, timing):
        ts.server_target_qps = float(s["target_qps"])
        ts.server_target_latency_ns = int((s["latency_budget_ms"] or 100.0) * 1e6)
        ts.server_target_latency_percentile = float(s["percentile"]) / 100.0

    def figures(self, detail, s):
        p = s["percentile"]
        return {"target_qps": s["target_qps"],
                "scheduled_samples_per_sec": detail.get("result_scheduled_samples_per_sec"),
                "completed_samples_per_sec": detail.get("result_completed_samples_per_sec"),
                "samples_per_second": detail.get("result_completed_samples_per_sec"),
                "latency_budget_ms": s["latency_budget_ms"], "percentile": p,
                "latency_bound_met": detail.get("result_perf_constraints_met"),
                "percentile_latency_ms": _percentile_ms(detail, p)}


@register_scenario
class Offline(LoadGenScenario):
    NAME = "offline"
    LG_NAME = "Offline"
    Settings = OfflineSettings
    DESCRIPTION = "LoadGen offline: every sample at once; samples per second"

    def set_test_settings(self, lg, ts, s, timing):
        # LoadGen issues max(min_query_count, 1.1 x duration x expected QPS) samples in
        # one query: expect what the batcher can do, so the run lasts its duration
        qps = s["expected_qps"] or (s["max_batch"] * s["instances"] / (timing["batch_ms"] / 1e3))
        ts.offline_expected_qps = float(qps)

    def figures(self, detail, s):
        return {"samples_per_second": detail.get("result_samples_per_second")}


def _percentile_ms(detail: dict, p: float) -> float | None:
    return _ms(detail, f"result_{p:.2f}_percentile_latency_ns")


def default_min_queries(percentile: float) -> int:
    """Queries a run needs before LoadGen's early stopping can call ``percentile`` VALID."""
    from densebench.measure.stats import min_samples

    return min_samples(percentile) if percentile > 50 else 64


def check_cores(instances: int, threads: int | None, oversubscribe: bool) -> int:
    """Threads per instance (given, or the cores shared out among the instances); refuses
    instances x threads above the cores unless ``oversubscribe``."""
    cores = usable_cores()
    per = threads or max(1, cores // instances)
    if instances * per > cores and not oversubscribe:
        raise ConfigError(f"instances x threads ({instances} x {per}) is more than the {cores} "
                          "cores here: lower them, or allow it with oversubscribe",
                          setting="instances")
    return per
