"""`densebench compare`: what changed between stored runs, and is it real."""

from __future__ import annotations

import csv
import io
import sys
from typing import Annotated

import typer

from densebench.cli.common import err, load_run, out, print_json
from densebench.errors import ConfigError

FORMATS = ("table", "markdown", "json", "csv")


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}"


def compare(
    runs: Annotated[list[str], typer.Argument(help="Run ids, names or paths; the first is the baseline. A name is its latest run, NAME~1 the one before; one run alone is compared with the run of its name before it.")],
    metric: Annotated[str, typer.Option(help="p50 | p90 | p99 | throughput: the metric verdicts are on.")] = "p50",
    threshold: Annotated[float, typer.Option(help="Relative change below which no change is called (0.05 = 5%).")] = 0.05,
    format: Annotated[str, typer.Option("--format", help="table | markdown | json | csv")] = "table",
    fail_on_regression: Annotated[bool, typer.Option("--fail-on-regression", help="Exit 1 when any cell is significantly slower beyond the threshold.")] = False,
    by: Annotated[str | None, typer.Option("--by", help="host: the same cells on different hosts side by side (one sweep run is enough); the first host is the baseline.")] = None,
) -> None:
    """Compare runs cell by cell: ratios with bootstrap 95% intervals and verdicts.

    Example: densebench compare baseline candidate --fail-on-regression

    The last two runs of one name: densebench compare bench~1 bench (or: compare bench)

    Across machines: densebench compare my-sweep --by host
    """
    from densebench.compare import compare_runs, rows
    from densebench.results.store import RunStore

    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}: choose from {', '.join(FORMATS)}")
    store = RunStore()
    records = [load_run(store, r) for r in runs]
    if len(records) == 1 and by is None:  # the run of its name before it, as baseline
        records.insert(0, load_run(store, _before(records[0])))
    if by is not None:
        if by != "host":
            raise ConfigError(f"--by {by!r}: compare can group by host only")
        from densebench.report.tables import by_host

        records = by_host(records)
    comp = compare_runs(records, metric=metric, threshold=threshold)
    table_rows = rows(comp)
    if format == "json":
        print_json(comp.to_dict() | {"rows": table_rows})
    elif format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(table_rows[0]))
        w.writeheader()
        w.writerows(table_rows)
        sys.stdout.write(buf.getvalue())
    else:
        for warning in comp.environment_warnings:
            err.print(f"[yellow]warning: environment {warning}[/yellow]")
        if format == "markdown":
            _markdown(comp)
        else:
            _table(comp)
    if fail_on_regression and comp.regressions:
        err.print(f"{len(comp.regressions)} regression(s) beyond {threshold:.0%} on {metric}")
        raise typer.Exit(1)


def _before(rec) -> str:
    """The reference of the run named as ``rec`` just before it."""
    found = rec.resolved
    if found is None or found.name is None:
        name = rec.name
        if name is None:
            raise ConfigError(f"compare needs two runs: run {rec.id} has no name, so no "
                              "run comes before it (name runs with --name, or give two)")
        return f"{rec.id}~1"
    return f"{found.name}~{found.back + 1}"


def _direction(metric: str) -> str:
    return "higher is better" if metric == "throughput" else "ratio above 1 is slower"


def _table(comp) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"baseline {comp.baseline}: {comp.metric} ratio candidate/baseline "
                    f"({_direction(comp.metric)}), threshold {comp.threshold:.0%}",
              title_justify="left")
    for col in ("run", "variant", "batch", "mode", "p50 ms", "p90 ms", "p99 ms", "img/s",
                "ratio", "95% CI", "verdict"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("run", "variant", "mode",
                                                                  "verdict") else "right")
    style = {"faster": "green", "slower": "red"}
    def pair(c, m):
        v = c.values.get(m)
        return f"{_fmt(v[0])}→{_fmt(v[1])}" if v else "n/s"

    for c in comp.cells:
        name = c.variant if c.scenario in ("closed-loop", "eval") else \
            f"{c.variant} [{c.scenario}]"
        t.add_row(c.run, name, str(c.batch_size), c.mode, pair(c, "p50"), pair(c, "p90"),
                  pair(c, "p99"), pair(c, "throughput"), _fmt(c.ratio, 4),
                  f"{c.ci[0]:.3f}-{c.ci[1]:.3f}" if c.ci else "-",
                  Text(c.verdict + (f" ({c.note})" if c.note else ""),
                       style=style.get(c.verdict, "")))
    out.print(t)
    for run, g in comp.geomean.items():
        out.print(f"geometric mean of {comp.metric} ratios, {run}: {_fmt(g, 4)}")
    for u in comp.unmatched:
        out.print(f"[dim]unmatched: {u['variant']} batch {u['batch_size']} {u['mode']} "
                  f"{u['device']} ({u['run']}: {u['reason']})[/dim]")


def _markdown(comp) -> None:
    lines = [f"Baseline `{comp.baseline}`, metric {comp.metric} ({_direction(comp.metric)}), "
             f"threshold {comp.threshold:.0%}.", "",
             "| run | variant | batch | mode | baseline | candidate | ratio | 95% CI | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in comp.cells:
        ci = f"{c.ci[0]:.3f}-{c.ci[1]:.3f}" if c.ci else "-"
        lines.append(f"| {c.run} | {c.variant} | {c.batch_size} | {c.mode} | "
                     f"{_fmt(c.baseline)} | {_fmt(c.candidate)} | {_fmt(c.ratio, 4)} | {ci} | "
                     f"{c.verdict} |")
    lines.append("")
    for run, g in comp.geomean.items():
        lines.append(f"Geometric mean of ratios, `{run}`: {_fmt(g, 4)}")
    for u in comp.unmatched:
        lines.append(f"- unmatched: {u['variant']} batch {u['batch_size']} {u['mode']} "
                     f"({u['run']}: {u['reason']})")
    sys.stdout.write("\n".join(lines) + "\n")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
