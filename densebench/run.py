"""`densebench run` as a library: ``run_benchmark(RunConfig(...))`` is the whole command
without the printing, through the one pipeline (``pipeline.execute``)."""

from __future__ import annotations

from densebench.config import RunConfig
from densebench.pipeline import Emit, execute
from densebench.results.store import RunRecord, RunStore


def run_benchmark(cfg: RunConfig, *, progress: Emit | None = None,
                  store: RunStore | None = None) -> RunRecord:
    """Run every cell of ``cfg``; return the stored RunRecord (status complete/incomplete)."""
    return execute(cfg, progress=progress, store=store)


__all__ = ["RunConfig", "run_benchmark"]
