"""Run directories: ``runs/<run-id>/`` (``$DENSEBENCH_RUNS`` overrides the root).

- ``run.json``: schema version, config, environment, host, model, variants and status;
- ``cells.jsonl``: one ``Cell`` per line (``results.schema``), appended as each finishes;
- ``results.csv``: one row per cell and worker process (the original script's columns
  first), appended too;
- ``tb/``: TensorBoard scalars, written when the run finishes; ``logs/``: workers' output.

Adding a cell appends to two files and rewrites nothing, so a run of many cells stores in
time linear in its cells, and a crash leaves every finished cell readable. ``run.json`` is
small and rewritten atomically (temporary file, then rename) when its header changes.

Run files are versioned (``results.schema``): older versions load through written
migrations, an unknown newer version is refused, never half-read. A new run never
overwrites an old one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import re
import secrets
import time
from pathlib import Path

from densebench.errors import ConfigError, StoreError
from densebench.processes import pid_alive, process_start
from densebench.results import refs
from densebench.results.schema import SCHEMA, SCHEMA_VERSION, Cell, latest, migrate

RUN_FILE = refs.RUN_FILE
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
CELLS_FILE = "cells.jsonl"
CSV_FILE = "results.csv"

ORIGINAL_COLUMNS = [
    "model_variant", "batch_size", "device", "ram_usage_mb", "vram_usage_mb",
    "cpu_utilization_pct", "gpu_utilization_pct", "latency_ms", "throughput_samples_sec",
    "accuracy_top1", "accuracy_top5", "model_size_mb", "optimization_technique",
    "model_load_time_s",
]
CSV_COLUMNS = ORIGINAL_COLUMNS + [
    "model", "mode", "scenario", "host", "repeat", "status", "error", "precision", "n",
    "mean_ms",
    "stdev_ms", "cov", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms",
    "p50_ci_low_ms", "p50_ci_high_ms", "throughput_ci_low", "throughput_ci_high", "noisy",
    "parity_max_abs_error", "parity_cosine_min", "parity_top1_agreement",
    "first_iteration_s", "threads", "validity", "invalid_reasons", "target_qps",
    "completed_qps", "instances", "search_best_qps", "busy_host", "others_cores",
]


def default_root() -> Path:
    return Path(os.environ.get("DENSEBENCH_RUNS") or "runs")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """One run directory: its header (``data``, the content of run.json) and its cells."""

    def __init__(self, path: Path, data: dict, cells: list[Cell] | None = None):
        self.path = Path(path)
        self.data = data
        self.cells: list[Cell] = cells if cells is not None else []
        self.load_warnings: list[str] = []
        self.bytes_written = 0  # everything this object wrote: linear in the cells
        self.resolved: refs.Resolved | None = None  # how RunStore.load found it
        self.resolved_note: str | None = None  # which run a name meant, for stderr

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def name(self) -> str | None:
        return self.data.get("name")

    @property
    def status(self) -> str:
        """The stored status, except that a run still marked ``running`` whose process is
        gone (killed, or its machine restarted) is ``abandoned``."""
        status = self.data.get("status", "")
        if status == "running" and not _owner_alive(self.data.get("owner")):
            return "abandoned"
        return status

    def add_cell(self, cell: Cell) -> None:
        """Keep ``cell`` and append it to cells.jsonl and results.csv (nothing rewritten)."""
        self.cells.append(cell)
        line = json.dumps(cell.to_dict(), default=_json_default) + "\n"
        try:
            with open(self.path / CELLS_FILE, "a") as f:
                f.write(line)
            with open(self.path / CSV_FILE, "a", newline="") as f:
                start = f.tell()
                csv.DictWriter(f, fieldnames=CSV_COLUMNS).writerow(csv_row(cell, self.data))
                self.bytes_written += f.tell() - start
        except OSError as e:
            raise StoreError(f"cannot write run {self.path}: {e.strerror or e}") from e
        self.bytes_written += len(line)

    def append_record(self, filename: str, record: dict) -> None:
        """Append ``record`` as one JSON line to ``filename`` in the run (search probes)."""
        line = json.dumps(record, default=_json_default) + "\n"
        try:
            with open(self.path / filename, "a") as f:
                f.write(line)
        except OSError as e:
            raise StoreError(f"cannot write run {self.path}: {e.strerror or e}") from e
        self.bytes_written += len(line)

    def records(self, filename: str) -> list[dict]:
        """The JSON lines of ``filename`` (a damaged line is skipped)."""
        try:
            lines = (self.path / filename).read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def save(self) -> None:
        """Write run.json (the header) atomically: temporary file, then rename."""
        tmp = self.path / f".{RUN_FILE}.{os.getpid()}.tmp"
        text = json.dumps({**self.data, "cells_file": CELLS_FILE}, indent=1,
                          default=_json_default)
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path / RUN_FILE)
        except OSError as e:
            raise StoreError(f"cannot write run {self.path}: {e.strerror or e}") from e
        self.bytes_written += len(text)

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished"] = _now()
        self.save()
        write_tensorboard(self)

    def frame(self):
        """The cells as a pandas DataFrame, one row per cell (results.csv's columns)."""
        import pandas as pd

        return pd.DataFrame([csv_row(c, self.data) for c in self.cells], columns=CSV_COLUMNS)


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
        if name is not None and not _NAME.fullmatch(name):
            raise ConfigError(f"name {name!r}: use up to 100 letters, digits, '.', '-' or "
                              "'_', not starting with '.' or '-'", setting="name")
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"runs directory {self.root} is a file, not a directory: point "
                             "DENSEBENCH_RUNS at a directory")
        from densebench.environment import host_identity

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
            "kind": kind, "created": _now(), "created_ns": time.time_ns(), "finished": None,
            "status": "running",
            "config": config, "environment": environment, "host": host_identity(),
            "skipped": [], "variants": {}, "profiles": [], "owner": _owner(),
            **(extra or {}),
        }
        rec = RunRecord(path, data)
        try:
            (path / CELLS_FILE).touch()
            with open(path / CSV_FILE, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=CSV_COLUMNS).writeheader()
        except OSError as e:
            raise StoreError(f"cannot write run {path}: {e.strerror or e}") from e
        rec.save()
        return rec

    def paths(self) -> list[Path]:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"runs directory {self.root} is a file, not a directory: point "
                             "DENSEBENCH_RUNS at a directory")
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if (p / RUN_FILE).is_file())

    def list(self) -> list[RunRecord]:
        """Every readable run (see ``scan`` for the damaged ones too)."""
        return [r for r in self.scan() if not isinstance(r, DamagedRun)]

    def scan(self) -> list:
        """Every run directory: a RunRecord, or a DamagedRun that says what is wrong."""
        out: list = []
        for p in self.paths():
            try:
                out.append(load_run(p))
            except StoreError as e:
                out.append(DamagedRun(p, str(e)))
        return out

    def locate(self, ref: str) -> refs.Resolved:
        """A run by path, id, unique id prefix, name (its newest run) or ``NAME~N``
        (``results.refs``); an ambiguous id prefix is refused with the candidates, never
        resolved by a guess, and a damaged run says what is wrong with it."""
        p = Path(ref)
        if (p / RUN_FILE).is_file():
            return refs.Resolved(p)
        if p.name == RUN_FILE and p.is_file():
            return refs.Resolved(p.parent)
        if (self.root / ref / RUN_FILE).is_file():
            return refs.Resolved(self.root / ref)
        found = refs.resolve(self.root, [refs.peek(d) for d in self.paths()], ref)
        return found

    def resolve(self, ref: str) -> Path:
        return self.locate(ref).path

    def load(self, ref: str) -> RunRecord:
        """The run ``ref`` names, loaded; ``resolved_note`` says which run a name meant
        (None where the reference was exact), and an abandoned run says so there."""
        found = self.locate(ref)
        try:
            rec = load_run(found.path)
        except StoreError as e:
            if found.name is None:
                raise
            raise StoreError(f"{ref} is run {found.path.name}, which cannot be read: {e}") \
                from e
        notes = [found.note] if found.note else []
        if rec.status == "abandoned":
            notes.append(f"run {rec.id} is abandoned: the process that wrote it ended before "
                         "it finished")
        rec.resolved = found
        rec.resolved_note = "; ".join(notes) or None
        return rec

    def named(self, name: str) -> list[tuple[str, RunRecord | DamagedRun]]:
        """The runs called ``name``, newest first, each with the reference it answers to
        (``name``, ``name~1``, ...); a damaged one keeps its place."""
        out = []
        for i, d in enumerate(refs.named([refs.peek(p) for p in self.paths()], name)):
            try:
                rec = load_run(d.path)
            except StoreError as e:
                rec = DamagedRun(d.path, str(e))
            out.append((name if i == 0 else f"{name}~{i}", rec))
        return out


def _owner() -> dict:
    """The process writing a run: enough to tell later whether it still exists."""
    import platform

    return {"pid": os.getpid(), "started": process_start(os.getpid()),
            "hostname": platform.node()}


def _owner_alive(owner: dict | None) -> bool:
    """False only when we can tell: same host, and that pid is gone or is another process."""
    import platform

    if not owner or owner.get("hostname") != platform.node():
        return True  # another machine's run (or an old one): cannot tell
    pid = owner.get("pid")
    if not pid_alive(pid):
        return False
    started = process_start(pid)
    if started is not None and owner.get("started") is not None:
        return abs(started - owner["started"]) < 1.0  # the pid was not reused
    return True


class DamagedRun:
    """A run directory whose files cannot be read, and why."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason


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
    version = data.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise StoreError(
            f"{f} has schema version {version!r}; this densebench reads versions 1 to "
            f"{SCHEMA_VERSION}: use the densebench that wrote it"
        )
    warnings: list[str] = []
    if version < SCHEMA_VERSION:
        if not isinstance(data.get("cells"), list):
            raise StoreError(f"{f} has no list of cells; the run file is damaged")
        data = migrate(data)
        raw = data.pop("cells")
    else:
        raw = []
        cells_path = Path(path) / data.get("cells_file", CELLS_FILE)
        try:
            lines = cells_path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
            warnings.append(f"{cells_path.name} is missing: no cells")
        except OSError as e:
            raise StoreError(f"cannot read {cells_path}: {e.strerror or e}") from e
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except ValueError:
                warnings.append(f"{cells_path.name} line {i} is damaged (a crash while "
                                "writing?); skipped")
    try:
        cells = [Cell.from_dict(c) for c in raw]
    except TypeError as e:
        raise StoreError(f"{f}: a cell lacks a required field ({e}); the run is damaged") \
            from e
    rec = RunRecord(Path(path), data, latest(cells))
    rec.load_warnings = warnings
    return rec


def csv_row(c: Cell, run: dict) -> dict:
    st = c.stats or {}
    par = c.parity or {}
    acc = c.accuracy or {}
    lg = c.loadgen or {}
    p50_ci = st.get("p50_ci_ms") or [None, None]
    tp_ci = st.get("throughput_ci") or [None, None]
    return {
        "model_variant": c.variant,
        "batch_size": c.batch_size,
        "device": c.device,
        "ram_usage_mb": c.memory.get("peak_rss_mb"),
        "vram_usage_mb": c.memory.get("cuda_peak_allocated_mb"),
        "cpu_utilization_pct": c.cpu_utilization_pct,
        "gpu_utilization_pct": c.gpu_utilization_pct,
        "latency_ms": st.get("p50_ms"),
        "throughput_samples_sec": st.get("throughput"),
        "accuracy_top1": acc.get("top1"),
        "accuracy_top5": acc.get("top5"),
        "model_size_mb": c.model_size_mb,
        "optimization_technique": c.description,
        "model_load_time_s": c.cold_start.get("load_s"),
        "model": c.model,
        "mode": c.mode,
        "scenario": c.scenario,
        "host": c.hostname,
        "repeat": c.repeat,
        "status": c.status,
        "error": c.error,
        "precision": c.precision,
        **{k: st.get(k) for k in ("n", "mean_ms", "stdev_ms", "cov", "min_ms", "p50_ms",
                                  "p90_ms", "p95_ms", "p99_ms", "max_ms")},
        "p50_ci_low_ms": p50_ci[0],
        "p50_ci_high_ms": p50_ci[1],
        "throughput_ci_low": tp_ci[0],
        "throughput_ci_high": tp_ci[1],
        "noisy": st.get("noisy"),
        "parity_max_abs_error": par.get("max_abs_error"),
        "parity_cosine_min": par.get("cosine_similarity_min"),
        "parity_top1_agreement": par.get("top1_agreement"),
        "first_iteration_s": c.first_iteration_s,
        "threads": c.threads,
        "validity": lg.get("validity"),
        "invalid_reasons": "; ".join(lg.get("reasons") or []) or None,
        "target_qps": lg.get("target_qps"),
        "completed_qps": lg.get("completed_samples_per_sec"),
        "instances": c.scenario_settings.get("instances"),
        "search_best_qps": (c.search or {}).get("best_qps"),
        "busy_host": c.busy,
        "others_cores": (c.host_load or {}).get("others_cores"),
    }


def write_tensorboard(rec: RunRecord) -> None:
    """Scalars per variant and mode, against batch size; latency histograms per cell."""
    ok = [c for c in rec.cells if c.ok and c.stats]
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
            st, tag = c.stats, f"{c.variant}/{c.mode}"
            if c.scenario not in ("closed-loop", "eval"):
                tag += f"/{c.scenario}"
            for name, key in (("throughput_img_s", "throughput"), ("latency_p50_ms", "p50_ms")):
                if st.get(key) is not None:  # LoadGen's accuracy mode times nothing
                    w.add_scalar(f"{name}/{tag}", st[key], c.batch_size)
            if c.parity:
                w.add_scalar(f"parity_max_abs_error/{tag}", c.parity["max_abs_error"],
                             c.batch_size)
            if c.samples_ms:
                w.add_histogram(f"latency_ms/{tag}/batch{c.batch_size}",
                                np.asarray(c.samples_ms), c.batch_size)
