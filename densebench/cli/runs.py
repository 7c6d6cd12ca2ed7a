"""`densebench runs`, `densebench show` and `densebench variants`: what is stored and known."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import load_run, out, print_json


def runs(
    name: Annotated[str | None, typer.Argument(help="Only the runs of this name, newest first, each with the NAME~N it answers to.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List stored runs (newest last), or the runs of one name (newest first)."""
    from densebench.errors import StoreError
    from densebench.report.tables import runs_table
    from densebench.results.store import DamagedRun, RunStore

    store = RunStore()
    if name is None:
        records, as_refs = store.scan(), None
    else:
        found = store.named(name)
        if not found:
            raise StoreError(f"no run is named {name!r} in {store.root}: `densebench runs` "
                             "lists every run")
        as_refs, records = [r for r, _ in found], [rec for _, rec in found]
    if json_out:
        print_json([({"id": r.path.name, "status": "damaged", "reason": r.reason,
                      "path": str(r.path)} if isinstance(r, DamagedRun) else
                     {k: r.data.get(k) for k in ("id", "name", "kind", "created", "device")}
                     | {"status": r.status, "path": str(r.path)})
                    | ({"ref": as_refs[i]} if as_refs else {})
                    for i, r in enumerate(records)])
        return
    if not records:
        out.print(f"no runs in {store.root}")
        return
    out.print(runs_table(records, as_refs))


def show(
    run: Annotated[str, typer.Argument(help="Run id (or unique prefix), name (its latest run; NAME~1: the one before), or path.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Render a stored run from its files alone."""
    from densebench.report.tables import (
        search_table,
        summary_rows,
        summary_table,
        sweep_tables,
    )
    from densebench.results.store import RunStore

    rec = load_run(RunStore(), run)
    if json_out:
        print_json({"run": rec.id, "path": str(rec.path), "status": rec.status,
                    "schema_version": rec.data.get("schema_version"),
                    "migrated_from": rec.data.get("migrated_from"),
                    "cells": summary_rows(rec), "profiles": rec.data.get("profiles", []),
                    "warnings": rec.load_warnings})
        return
    env = rec.data.get("environment", {})
    libs = env.get("libraries", {})
    out.print(f"[bold]{rec.id}[/bold] {rec.data.get('kind')} {rec.status}, "
              f"created {rec.data.get('created')}, {rec.path}")
    out.print(f"  {env.get('cpu', {}).get('model')} | "
              + (", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU") + " | "
              f"torch {libs.get('torch')}, onnxruntime {libs.get('onnxruntime')} | "
              f"git {env.get('git_commit')}")
    kind = rec.data.get("kind")
    out.print(sweep_tables(rec) if kind == "sweep" else search_table(rec) if kind == "search"
              else summary_table(rec))
    for p in rec.data.get("profiles", []):
        out.print(f"profile: {p.get('variant')} batch {p.get('batch_size')}: {p.get('path')}")


def variants(
    device: Annotated[str, typer.Option(help="Check support on this device.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the registered variants, their backends, and whether this machine can run each."""
    from rich.table import Table

    from densebench.devices import resolve_device
    from densebench.variants import variants as registered

    dev = resolve_device(device)
    rows = []
    for v in registered().values():
        why = v.unsupported_reason(dev)
        rows.append({"variant": v.name, "backend": v.backend, "precision": v.precision,
                     "description": v.description, "modes": list(v.modes),
                     "supported": why is None, "why_not": why})
    if json_out:
        print_json(rows)
        return
    t = Table(title=f"variants on {dev}")
    for col in ("variant", "backend", "precision", "what", "runs here"):
        t.add_column(col, no_wrap=col in ("variant", "backend"))
    for r in rows:
        t.add_row(r["variant"], r["backend"], r["precision"], r["description"],
                  "yes" if r["supported"] else f"no: {r['why_not']}")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("variants")(variants)
