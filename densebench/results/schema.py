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
from typing import NamedTuple

SCHEMA = "densebench.run"
SCHEMA_VERSION = 2
CLOSED_LOOP = "closed-loop"


class CellKey(NamedTuple):
    """What identifies a cell within a run, and matches it across runs: named fields, and
    the two views callers need (across hosts: ``without_host``; across sweeps that vary
    other axes: ``without_axes``). Never sliced by position."""

    model: str
    variant: str
    batch_size: int
    mode: str
    device: str
    scenario: str
    host: str | None  # host_key(): machine id (or hostname)[/node]
    axes: tuple = ()  # a sweep's other varying axes, as sorted (name, value) pairs

    def without_host(self) -> CellKey:
        return self._replace(host=None)

    def without_axes(self) -> CellKey:
        return self._replace(axes=())

    def named(self) -> dict:
        """The key as a dict (its axes spread out by name), host left out."""
        d = self._asdict()
        del d["host"]
        return {**{k: v for k, v in d.items() if k != "axes"}, **dict(self.axes)}


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
    host: dict = field(default_factory=dict)  # hostname, machine_id, cpu_model[, node]
    repeat: int = 0  # which worker process of the cell (runs with --repeats N)
    axes: dict = field(default_factory=dict)  # sweeps: the other axes the sweep varies
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
    worker: dict = field(default_factory=dict)  # the worker's pid, thread settings, Ray node
    search: dict | None = None  # `search` cells: the probes and the best VALID QPS
    pipeline: dict | None = None  # e2e-jpeg cells: each stage's times, the bottleneck
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

    @property
    def skipped(self) -> bool:
        """Not run because its host cannot run it (a sweep's bf16 cell on a CPU without bf16)."""
        return self.status == "skipped"

    def key(self) -> CellKey:
        """What identifies the cell within a run, and matches it across runs (with host).

        A sweep's cell adds the axes the sweep varies beyond these (image size, threads)."""
        return CellKey(self.model, self.variant, self.batch_size, self.mode, self.device,
                       self.scenario, host_key(self.host), tuple(sorted(self.axes.items())))

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


def host_key(host: dict) -> str | None:
    """A host as a key: its machine id (or hostname), and its node name where several
    cluster nodes share one machine (a simulated cluster)."""
    machine = host.get("machine_id") or host.get("hostname")
    return f"{machine}/{host['node']}" if host.get("node") else machine


def latest(cells: list[Cell]) -> list[Cell]:
    """Each cell (key and repeat) once: where a resumed run measured a cell again, the
    later record supersedes the earlier one, in the earlier one's place."""
    index: dict[tuple, int] = {}
    out: list[Cell] = []
    for c in cells:
        k = (*c.key(), c.repeat)
        if k in index:
            out[index[k]] = c
        else:
            index[k] = len(out)
            out.append(c)
    return out


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
