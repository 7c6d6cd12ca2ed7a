"""Executors: where a job runs. One method, ``run(job, on_event)``.

A ``Job`` is plain data: a ``target`` (``"module:function"``, called as
``function(payload, emit)``), its ``payload`` (a ``Task`` subclass's fields, built with
``Task.job`` and read back with ``Task.from_payload``), and the cells it is planned to
produce.
Events are plain dicts streamed back to ``on_event`` as they happen (``phase``,
``progress``, ``variant``, ``cell``). Whatever happens to the job (an exception, a crash,
a kill, a timeout), every planned cell it did not report comes back as a failed cell with
the reason, so a run never loses track of a cell.

``run_concurrently(jobs, on_event, lanes)`` runs jobs side by side on this machine (the
subprocess executor: a worker process per lane); a run uses it only for work that is not
measured (exporting artifacts ahead of the measurements).

Built in: ``inline`` (this process), ``subprocess`` (a worker process per job: crash,
hang and OOM isolation) and ``ray`` (each job as a Ray task on a cluster node, which starts
the same worker process there). ``run_all(jobs, on_event)`` runs many jobs: one after
another here, concurrently across nodes on Ray.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from densebench import devices
from densebench.errors import ConfigError
from densebench.results.schema import Cell

Emit = Callable[[dict], None]


@dataclass
class Job:
    name: str  # what the job measures, for logs and messages (a variant label)
    target: str  # "module:function", called as function(payload, emit)
    payload: dict
    cells: list[dict] = field(default_factory=list)  # planned cells (Cell.to_dict())
    timeout: float | None = None  # seconds; None: no limit
    env: dict = field(default_factory=dict)  # set in the worker's environment
    needs: dict = field(default_factory=dict)  # placement: {"gpu": bool, "labels": [[..]]}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        return cls(**d)


@dataclass
class Task:
    """A job's payload as a typed record (a subclass per job target, ``TARGET`` naming
    it): it travels as plain data, ``asdict``, across the process and Ray boundary, and the
    target reads it back with ``from_payload``. A task with ``cells`` gives them to its job."""

    TARGET: ClassVar[str] = ""

    def job(self, name: str, *, timeout: float | None = None, env: dict | None = None,
            needs: dict | None = None) -> Job:
        return Job(name=name, target=self.TARGET, payload=asdict(self),
                   cells=list(getattr(self, "cells", [])), timeout=timeout, env=env or {},
                   needs=needs or {})

    @classmethod
    def from_payload(cls, payload: dict):
        return cls(**payload)


class Executor:
    NAME: ClassVar[str] = ""
    PLACES_CELLS: ClassVar[bool] = False  # stamps each job's cells with the node it picks
    LOCAL: ClassVar[bool] = True  # jobs run on this machine (and share its artifact cache)

    def __init__(self, log_dir: Path | None = None, **options):
        self.log_dir = log_dir
        self.options = options

    def run(self, job: Job, on_event: Emit) -> None:
        raise NotImplementedError

    def check(self, jobs: list[Job]) -> list[str]:
        """Refuse (ConfigError) jobs this executor can never place, before anything runs;
        return warnings about what it will ignore."""
        if any(j.needs.get("gpu") for j in jobs) and not devices.cuda_available():
            names = sorted({j.name for j in jobs if j.needs.get("gpu")})
            raise ConfigError(f"{len(names)} job(s) need a GPU and this machine has none "
                              f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): "
                              "drop the cuda device or run them on a cluster (--executor ray)",
                              setting="devices")
        if any(j.needs.get("labels") for j in jobs):
            return ["[targets] node labels are ignored here: this machine is the only node"]
        return []

    def describe(self) -> dict:
        """Where the jobs run (a cluster's nodes and their resources), for the run file."""
        import os

        from densebench.environment import host_identity

        return {"executor": self.NAME, "nodes": [{**host_identity(),
                                                   "cpus": os.cpu_count()}]}

    def run_all(self, jobs: list[Job], on_event: Emit, *, done: set | None = None,
                placement: str = "each", start: Callable[[int], None] | None = None) -> None:
        """Every job, in order, less the cells ``done`` holds (``pending``); ``start`` is
        told how many cells will run. An executor with several machines runs jobs at once."""
        todo = [p for p in (pending(j, done or set(), hostless=False) for j in jobs) if p]
        if start:
            start(sum(len(j.cells) for j in todo))
        for job in todo:
            self.run(job, on_event)

    def run_concurrently(self, jobs: list[Job], on_event: Emit, lanes: int) -> None:
        """Every job, up to ``lanes`` at once, ``on_event`` called from one thread at a
        time. Here one after another; the subprocess executor runs them side by side."""
        for job in jobs:
            self.run(job, on_event)

    def close(self) -> None:
        """Release what the executor holds (a cluster connection)."""


def pending(job: Job, done: set, hostless: bool) -> Job | None:
    """``job`` without the cells ``done`` already holds (``done_key``), or None when none is
    left. ``hostless``: a cell done on any host counts (placement "any")."""
    if not done:
        return job
    cells = [c for c in job.cells if done_key(Cell.from_dict(c), hostless) not in done]
    if not cells:
        return None
    return dataclasses.replace(job, cells=cells, payload={**job.payload, "cells": cells})


def done_key(c: Cell, hostless: bool) -> tuple:
    """A cell's key and repeat, with its host left out when ``hostless``."""
    return (c.key().without_host() if hostless else c.key(), c.repeat)


class CellTracker:
    """Passes events on and remembers which planned cells were reported."""

    def __init__(self, job: Job, on_event: Emit):
        self.job = job
        self.on_event = on_event
        self.seen: set = set()

    def __call__(self, ev: dict) -> None:
        if ev.get("event") == "cell":
            self.seen.add(_planned_key(ev["cell"]))
        self.on_event(ev)

    def fail_missing(self, error: str) -> None:
        for c in self.job.cells:
            if _planned_key(c) not in self.seen:
                self({"event": "cell", "cell": Cell.from_dict(c).failed(error).to_dict()})


def _planned_key(cell: dict) -> tuple:
    """A cell's key without its host (the worker stamps the host it really ran on), with
    its repeat (which worker process)."""
    c = Cell.from_dict(cell)
    return (c.key().without_host(), c.repeat)


_REGISTRY: dict[str, type[Executor]] = {}


def register_executor(cls: type[Executor]) -> type[Executor]:
    if not cls.NAME:
        raise TypeError(f"{cls.__name__} has no NAME")
    _REGISTRY[cls.NAME] = cls
    return cls


def executors() -> dict[str, type[Executor]]:
    from densebench.plugins import load_plugins

    load_plugins()
    return dict(_REGISTRY)


def get_executor(name: str, **kw) -> Executor:
    known = executors()
    if name not in known:
        raise ConfigError(f"executor {name!r} is unknown: choose from {', '.join(known)}",
                          setting="executor")
    return known[name](**kw)
