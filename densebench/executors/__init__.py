"""Executors: where a job runs. One method, ``run(job, on_event)``.

A ``Job`` is plain data: a ``target`` (``"module:function"``, called as
``function(payload, emit)``), its ``payload``, and the cells it is planned to produce.
Events are plain dicts streamed back to ``on_event`` as they happen (``phase``,
``progress``, ``variant``, ``cell``). Whatever happens to the job (an exception, a crash,
a kill, a timeout), every planned cell it did not report comes back as a failed cell with
the reason, so a run never loses track of a cell.

Built in: ``inline`` (this process) and ``subprocess`` (a worker process per job: crash,
hang and OOM isolation). Others (Ray) plug in beside them as modules of this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        return cls(**d)


class Executor:
    NAME: ClassVar[str] = ""

    def __init__(self, log_dir: Path | None = None):
        self.log_dir = log_dir

    def run(self, job: Job, on_event: Emit) -> None:
        raise NotImplementedError


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
    return (*c.key()[:-1], c.repeat)


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
