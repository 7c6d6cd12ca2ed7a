"""densebench from Python: the functions the CLI calls, for notebooks and scripts.

    import densebench

    run = densebench.benchmark(model="densenet121", variants=["eager", "onnxruntime"],
                               batch_sizes=[1, 16], min_time=2)
    df = run.frame()                           # one row per cell, results.csv's columns
    old = densebench.load_run("bench~1")       # by id, name (its latest run), NAME~N or path
    comp = densebench.compare_runs(old, run)   # ratios, intervals, verdicts (data)

(The names avoid ``densebench.run`` and ``densebench.compare``, which are modules.)

Nothing here prints; ``progress=`` takes a callback that receives the same events as the
CLI's progress display.
"""

from __future__ import annotations

from collections.abc import Callable

from densebench.run import RunConfig


def benchmark(config: RunConfig | None = None, *, progress: Callable[[dict], None] | None = None,
        **settings):
    """Benchmark as ``densebench run`` does; return the stored run (a ``RunRecord``).

    Pass a ``RunConfig`` or its fields as keywords (``variants=["eager"]``, ...).
    """
    from densebench.run import run_benchmark

    cfg = config if config is not None else RunConfig(**settings)
    return run_benchmark(cfg, progress=progress)


def load_run(ref: str):
    """A stored run by id, unique id prefix, name (its latest run), ``NAME~N`` (the N-th
    run of that name before the latest) or path, any schema version; the record's
    ``resolved_note`` says which run a name meant."""
    from densebench.results.store import RunStore

    return RunStore().load(ref)


def list_runs() -> list:
    """Every readable stored run, oldest first."""
    from densebench.results.store import RunStore

    return RunStore().list()


def compare_runs(baseline, *candidates, metric: str = "p50", threshold: float = 0.05):
    """Compare runs (records, ids or names) cell by cell against ``baseline``."""
    from densebench.compare import compare_runs as compare

    recs = [load_run(r) if isinstance(r, str) else r for r in (baseline, *candidates)]
    return compare(recs, metric=metric, threshold=threshold)


__all__ = ["RunConfig", "benchmark", "compare_runs", "list_runs", "load_run"]
