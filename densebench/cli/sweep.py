"""`densebench sweep`: a grid of cells from a TOML file, here or across a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from densebench.cli.common import load_run, out, print_json
from densebench.errors import ConfigError


def sweep(
    file: Annotated[Path | None, typer.Argument(help="The sweep file (TOML); see examples/sweep.toml. Optional with --resume (the run keeps its sweep).")] = None,
    executor: Annotated[str, typer.Option(help="local (one cell group after another, each in its own worker) | ray (a cluster).")] = "local",
    address: Annotated[str | None, typer.Option(help="ray: the cluster's address, auto or HOST:PORT (default auto).")] = None,
    cells_per_node: Annotated[int, typer.Option("--cells-per-node", help="ray: jobs a node runs at once, each reserving its share of the node (default 1: the whole node).")] = 1,
    resume: Annotated[str | None, typer.Option(help="A stored sweep run: run only its missing and failed cells, into it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the expanded cells, where each would run, and the estimated time; run nothing.")] = False,
    name: Annotated[str | None, typer.Option(help="A name for the stored run (default: the file's name key).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result (or the plan) as JSON.")] = False,
) -> None:
    """Run a sweep: every cell of the grid a TOML file describes, stored as one run.

    Example: densebench sweep examples/sweep.toml --dry-run

    On a cluster: ray start --head; densebench sweep examples/sweep.toml --executor ray
    """
    from densebench.cli.progress import Progress
    from densebench.report.tables import summary_rows, sweep_tables
    from densebench.results.store import RunStore
    from densebench.sweep import load_sweep, parse_sweep, run_sweep

    if file is None and resume is None:
        raise ConfigError("sweep needs a sweep file (densebench sweep SWEEP.toml), or "
                          "--resume RUN")
    sw = None
    if resume is not None:
        rec = load_run(RunStore(), resume)
        stored = (rec.data.get("sweep") or {}).get("spec")
        if rec.data.get("kind") != "sweep" or stored is None:
            raise ConfigError(f"resume: run {rec.id} is a {rec.data.get('kind')} run, not a "
                              "sweep: --resume takes a run that `densebench sweep` stored",
                              setting="resume")
        sw = parse_sweep(stored, f"run {rec.id}'s sweep")
        if file is not None and load_sweep(file).spec != stored:
            raise ConfigError(f"resume: {file} is not the sweep run {rec.id} ran: drop the "
                              "file to resume with the stored sweep", setting="resume")
        resume = rec.id
    else:
        sw = load_sweep(file)
    if name is not None:
        sw.name = name
    if dry_run:
        _dry_run(sw, executor, address, cells_per_node, json_out)
        return
    with Progress("sweep") as progress:
        rec = run_sweep(sw, executor=executor, address=address,
                        cells_per_node=cells_per_node, resume=resume, progress=progress)
    if json_out:
        print_json({"run": rec.id, "path": str(rec.path), "status": rec.data["status"],
                    "cluster": rec.data.get("cluster"), "cells": summary_rows(rec)})
    else:
        out.print(sweep_tables(rec))
        out.print(f"stored in {rec.path}")
    failed = [c for c in rec.cells if not (c.ok or c.skipped)]
    if failed:
        from densebench.errors import DensebenchError

        raise DensebenchError(f"{len(failed)} of {len(rec.cells)} cells failed (first: "
                              f"{failed[0].variant} batch {failed[0].batch_size}: "
                              f"{failed[0].error}); `densebench sweep --resume {rec.id}` "
                              "runs them again")


def _dry_run(sw, executor: str, address, cells_per_node: int, json_out: bool) -> None:
    from rich.table import Table

    from densebench.sweep import plan

    p = plan(sw, executor=executor, address=address, cells_per_node=cells_per_node)
    if json_out:
        print_json(p)
        return
    out.print(f"{sw.path}: {len(p['cells'])} cells in {p['jobs']} worker processes",
              soft_wrap=True)
    t = Table()
    cols = ["variant", "model", "batch", "mode", "scenario", "device"] + \
        [a for a in ("image_size", "threads") if a in sw.varying()] + ["runs on"]
    for c in cols:
        t.add_column(c, no_wrap=c != "runs on")
    for c in p["cells"]:
        t.add_row(c["variant"], c["model"], str(c["batch_size"]), c["mode"], c["scenario"],
                  c["device"], *[str(c[a]) for a in ("image_size", "threads")
                                 if a in sw.varying()], ", ".join(c["runs_on"]))
    out.print(t)
    for w in p["warnings"]:
        out.print(f"[yellow]warning: {w}[/yellow]")
    est = p["estimated_s"]
    took = f"{est / 60:.0f} min" if est >= 90 else f"{est:.0f} s"
    out.print(f"estimated time: about {took} ({p['placement']} placement, "
              f"{p['slots']} job(s) at a time, {sw.repeats()} process(es) per cell); "
              "a rough figure from the stop rule and typical start-up costs", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
