"""The run file's schema: typed cells, versions, and the migrations between versions.

Schema history (``schema_version`` in ``run.json``):

- **1** (densebench 0.1): ``run.json`` holds everything, cells included, as plain dicts;
  a cell's model, scenario and host are implied by the run.
- **2**: a cell is a ``Cell`` whose key names everything that identifies it (model,
  variant, batch size, mode, device, scenario, host) and carries its scenario settings.
  Cells live in ``cells.jsonl``, one per line, appended as they finish, so storing a run
  of many cells costs time linear in its cells; ``run.json`` holds the rest. LoadGen
  scenario cells carry LoadGen's verdict and figures (``loadgen``), search cells their
  probes (``search``).

Older versions are read through ``MIGRATIONS`` (named, ordered, applied in memory; the
files on disk are never rewritten). A version newer than ``SCHEMA_VERSION`` is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

SCHEMA = "densebench.run"
SCHEMA_VERSION = 2
CLOSED_LOOP = "closed-loop"


@dataclass
class Cell:
    """One measured (or failed) cell of a run."""

    # the key
    model: str
    variant: str
    batch_size: int
    mode: str
    device: str
    scenario: str = CLOSED_LOOP
    host: dict = field(default_factory=dict)  # hostname, machine_id, cpu_model
    repeat: int = 0  # which worker process of the cell (runs with --repeats N)
    # what it is
    status: str = "ok"  # ok | failed
    error: str | None = None
    precision: str | None = None
    backend: str | None = None
    description: str | None = None
    threads: int | None = None
    scenario_settings: dict = field(default_factory=dict)
    # what was measured
    stats: dict | None = None
    samples_ms: list[float] = field(default_factory=list)
    parity: dict | None = None
    accuracy: dict | None = None
    memory: dict = field(default_factory=dict)
    cold_start: dict = field(default_factory=dict)
    timer: str | None = None
    warmup_iters: int | None = None
    first_iteration_s: float | None = None
    model_size_mb: float | None = None
    cpu_utilization_pct: float | None = None
    gpu_utilization_pct: float | None = None
    options: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    host_load: dict | None = None  # what else ran meanwhile (environment.HostLoad)
    process_samples: list | None = None  # merged views: each worker process's samples
    loadgen: dict | None = None  # LoadGen scenarios: verdict, reasons, figures, log files
    search: dict | None = None  # `search` cells: the probes and the best VALID QPS
    extra: dict = field(default_factory=dict)  # fields this version does not know, kept

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def busy(self) -> bool:
        """Measured while other processes (or other guests) took a share of the CPU."""
        return bool((self.host_load or {}).get("busy"))

    @property
    def hostname(self) -> str | None:
        return self.host.get("hostname")

    def key(self) -> tuple:
        """What identifies the cell within a run, and matches it across runs (with host)."""
        return (self.model, self.variant, self.batch_size, self.mode, self.device,
                self.scenario, self.host.get("machine_id") or self.host.get("hostname"))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})

    def failed(self, error: str) -> Cell:
        """This cell as failed with ``error`` (measurements dropped)."""
        return dataclasses.replace(self, status="failed", error=error, stats=None,
                                   samples_ms=[], parity=None)


# ------------------------------------------------------------------ migrations


@dataclass(frozen=True)
class Migration:
    source: int
    name: str
    apply: Callable[[dict], dict]  # whole run.json content (cells inline) -> next version


def _v1_to_v2(data: dict) -> dict:
    """Cells gain their model, scenario (closed-loop; eval for eval runs) and host (from
    the run's environment; v1 recorded no machine id)."""
    env = data.get("environment") or {}
    host = {"hostname": env.get("hostname"), "machine_id": None,
            "cpu_model": (env.get("cpu") or {}).get("model")}
    model = (data.get("model") or {}).get("name")
    scenario = "eval" if data.get("kind") == "eval" else CLOSED_LOOP
    cells = []
    for c in data.get("cells") or []:
        c = dict(c)
        c.setdefault("model", model)
        c.setdefault("scenario", scenario)
        c.setdefault("host", host)
        c.setdefault("scenario_settings", {})
        cells.append(c)
    return {**data, "cells": cells, "host": host, "schema_version": 2,
            "migrated_from": data.get("schema_version")}


MIGRATIONS = [Migration(1, "v1_to_v2: cells gain model, scenario and host", _v1_to_v2)]


def migrate(data: dict) -> dict:
    """Bring run.json content from its version up to ``SCHEMA_VERSION``, in order."""
    for m in MIGRATIONS:
        if data.get("schema_version") == m.source:
            data = m.apply(data)
    return data
