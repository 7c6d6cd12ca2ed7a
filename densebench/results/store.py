"""Run directories: ``runs/<run-id>/`` (``$DENSEBENCH_RUNS`` overrides the root).

- ``run.json``: schema version, config, environment, model, and per variant x batch size x
  mode the statistics, raw samples, parity, cold start, memory and errors;
- ``results.csv``: one row per variant x batch size x mode (the original script's columns
  first);
- ``tb/``: TensorBoard scalars; ``logs/``: each isolated variant's output.

Run files are versioned: an unknown version is refused, never half-read. A new run never
overwrites an old one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from pathlib import Path

from densebench.errors import ConfigError, StoreError

SCHEMA = "densebench.run"
SCHEMA_VERSION = 1
RUN_FILE = "run.json"

ORIGINAL_COLUMNS = [
    "model_variant", "batch_size", "device", "ram_usage_mb", "vram_usage_mb",
    "cpu_utilization_pct", "gpu_utilization_pct", "latency_ms", "throughput_samples_sec",
    "accuracy_top1", "accuracy_top5", "model_size_mb", "optimization_technique",
    "model_load_time_s",
]


def default_root() -> Path:
    return Path(os.environ.get("DENSEBENCH_RUNS") or "runs")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """One run directory and its ``run.json`` content (``data``)."""

    def __init__(self, path: Path, data: dict):
        self.path = Path(path)
        self.data = data

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def cells(self) -> list[dict]:
        return self.data["cells"]

    def add_cell(self, cell: dict) -> None:
        self.data["cells"].append(cell)

    def save(self) -> None:
        """Write run.json atomically (temporary file, then rename), and results.csv."""
        tmp = self.path / f".{RUN_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(self.data, indent=1, default=_json_default))
            os.replace(tmp, self.path / RUN_FILE)
            write_csv(self)
        except OSError as e:
            raise StoreError(f"cannot write run {self.path}: {e.strerror or e}") from e

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished"] = _now()
        self.save()
        write_tensorboard(self)


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple | set):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class RunStore:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()

    def create(self, kind: str, name: str | None, config: dict, environment: dict,
               extra: dict | None = None) -> RunRecord:
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise ConfigError(f"--name {name!r}: use letters, digits, '-' or '_'")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{secrets.token_hex(2)}"
        path = self.root / run_id
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path.mkdir()  # never reuses a directory
        except FileExistsError as e:
            raise StoreError(f"run directory {path} already exists; not overwriting it") from e
        except OSError as e:
            raise StoreError(
                f"runs directory {self.root} is not writable ({e.strerror or e}); set "
                "DENSEBENCH_RUNS to a writable directory"
            ) from e
        data = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "id": run_id, "name": name,
            "kind": kind, "created": _now(), "finished": None, "status": "running",
            "config": config, "environment": environment, "cells": [], "skipped": [],
            "variants": {}, "profiles": [], **(extra or {}),
        }
        rec = RunRecord(path, data)
        rec.save()
        return rec

    def paths(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if (p / RUN_FILE).is_file())

    def list(self) -> list[RunRecord]:
        out = []
        for p in self.paths():
            try:
                out.append(load_run(p))
            except StoreError:
                continue
        return out

    def resolve(self, ref: str) -> Path:
        """A run by path, id, unique id prefix or name (the newest run of that name)."""
        p = Path(ref)
        if (p / RUN_FILE).is_file():
            return p
        if p.name == RUN_FILE and p.is_file():
            return p.parent
        if (self.root / ref / RUN_FILE).is_file():
            return self.root / ref
        by_prefix = [q for q in self.paths() if q.name.startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        by_name = [r.path for r in self.list() if r.data.get("name") == ref]
        if by_name:
            return by_name[-1]
        if len(by_prefix) > 1:
            raise StoreError(
                f"run {ref!r} is ambiguous ({len(by_prefix)} runs): give more of its id"
            )
        unreadable = []
        for q in self.paths():
            try:
                load_run(q)
            except StoreError as e:
                unreadable.append(str(e))
        extra = f"; {len(unreadable)} run file(s) could not be read, e.g. {unreadable[0]}" \
            if unreadable else ""
        raise StoreError(
            f"no run {ref!r} in {self.root} (nor such a path): see `densebench runs`{extra}"
        )

    def load(self, ref: str) -> RunRecord:
        return load_run(self.resolve(ref))


def load_run(path: Path) -> RunRecord:
    f = Path(path) / RUN_FILE
    try:
        data = json.loads(f.read_text())
    except OSError as e:
        raise StoreError(f"cannot read {f}: {e.strerror or e}") from e
    except ValueError as e:
        raise StoreError(f"{f} is not valid JSON ({e}); the run file is damaged") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise StoreError(f"{f} is not a densebench run file")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{f} has schema version {data.get('schema_version')!r}; this densebench reads "
            f"version {SCHEMA_VERSION}: use the densebench that wrote it"
        )
    return RunRecord(Path(path), data)


def csv_rows(data: dict) -> list[dict]:
    rows = []
    for c in data["cells"]:
        st = c.get("stats") or {}
        par = c.get("parity") or {}
        mem = c.get("memory") or {}
        acc = c.get("accuracy") or {}
        rows.append({
            "model_variant": c["variant"],
            "batch_size": c["batch_size"],
            "device": c["device"],
            "ram_usage_mb": mem.get("peak_rss_mb"),
            "vram_usage_mb": mem.get("cuda_peak_allocated_mb"),
            "cpu_utilization_pct": c.get("cpu_utilization_pct"),
            "gpu_utilization_pct": c.get("gpu_utilization_pct"),
            "latency_ms": st.get("p50_ms"),
            "throughput_samples_sec": st.get("throughput"),
            "accuracy_top1": acc.get("top1"),
            "accuracy_top5": acc.get("top5"),
            "model_size_mb": c.get("model_size_mb"),
            "optimization_technique": c.get("description"),
            "model_load_time_s": (c.get("cold_start") or {}).get("load_s"),
            "mode": c["mode"],
            "status": c["status"],
            "error": c.get("error"),
            "precision": c.get("precision"),
            "n": st.get("n"),
            "mean_ms": st.get("mean_ms"),
            "stdev_ms": st.get("stdev_ms"),
            "cov": st.get("cov"),
            "min_ms": st.get("min_ms"),
            "p50_ms": st.get("p50_ms"),
            "p90_ms": st.get("p90_ms"),
            "p95_ms": st.get("p95_ms"),
            "p99_ms": st.get("p99_ms"),
            "max_ms": st.get("max_ms"),
            "p50_ci_low_ms": (st.get("p50_ci_ms") or [None, None])[0],
            "p50_ci_high_ms": (st.get("p50_ci_ms") or [None, None])[1],
            "throughput_ci_low": (st.get("throughput_ci") or [None, None])[0],
            "throughput_ci_high": (st.get("throughput_ci") or [None, None])[1],
            "noisy": st.get("noisy"),
            "parity_max_abs_error": par.get("max_abs_error"),
            "parity_cosine_min": par.get("cosine_similarity_min"),
            "parity_top1_agreement": par.get("top1_agreement"),
            "first_iteration_s": c.get("first_iteration_s"),
            "threads": c.get("threads"),
        })
    return rows


def write_csv(rec: RunRecord) -> None:
    import pandas as pd

    rows = csv_rows(rec.data)
    cols = list(rows[0]) if rows else ORIGINAL_COLUMNS
    pd.DataFrame(rows, columns=cols).to_csv(rec.path / "results.csv", index=False)


def write_tensorboard(rec: RunRecord) -> None:
    """Scalars per variant and mode, against batch size; latency histograms per cell."""
    ok = [c for c in rec.cells if c["status"] == "ok" and c.get("stats")]
    if not ok:
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # a bare image without tensorboard: say so, keep the run
            rec.data.setdefault("warnings", []).append(
                "tensorboard is not installed: no tb/ scalars were written")
            rec.save()
            return

    import numpy as np

    with SummaryWriter(log_dir=str(rec.path / "tb")) as w:
        for c in ok:
            st, tag = c["stats"], f"{c['variant']}/{c['mode']}"
            w.add_scalar(f"throughput_img_s/{tag}", st["throughput"], c["batch_size"])
            w.add_scalar(f"latency_p50_ms/{tag}", st["p50_ms"], c["batch_size"])
            if c.get("parity"):
                w.add_scalar(f"parity_max_abs_error/{tag}", c["parity"]["max_abs_error"],
                             c["batch_size"])
            if c.get("samples_ms"):
                w.add_histogram(f"latency_ms/{tag}/batch{c['batch_size']}",
                                np.asarray(c["samples_ms"]), c["batch_size"])
