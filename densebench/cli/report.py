"""`densebench report`: plots and an HTML page for stored runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from densebench.cli.common import load_run, out


def report(
    runs: Annotated[list[str], typer.Argument(help="Run ids, names (bench: its latest run; bench~1: the one before), or paths.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the PNGs and index.html.")] = Path("report"),
) -> None:
    """PNG plots (throughput with intervals, latency distributions, batch scaling, parity or
    accuracy against throughput; the serving curve of LoadGen Server runs and search probes)
    and an index.html with the summary table."""
    from densebench.errors import StoreError
    from densebench.report.plots import write_report
    from densebench.results.store import RunStore

    store = RunStore()
    data = [load_run(store, r) for r in runs]
    if not any(c.ok and (c.stats or c.search) for d in data for c in d.cells):
        raise StoreError("the runs hold no finished cell: nothing to plot")
    try:
        files = write_report(data, out_dir)
    except OSError as e:
        raise StoreError(f"cannot write the report to {out_dir}: {e.strerror or e}") from e
    for f in files:
        out.print(f"wrote {f}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
