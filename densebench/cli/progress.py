"""Progress from the core's events, on stderr: the one renderer for run, profile and eval.

On a terminal: a live Rich bar (phase, iterations, time left), removed when done.
Elsewhere (CI logs, ``make bench | tee``): plain lines, one per phase and per cell, with
the cell's figures when it finishes, so a log shows what is happening as it happens.
"""

from __future__ import annotations

import sys


def _where(ev: dict) -> str:
    return f" batch {ev['batch_size']} {ev['mode']}" if "batch_size" in ev else ""


def cell_line(c: dict) -> str:
    """One cell as text: its key and, when it worked, its figures."""
    where = f"{c['variant']} batch {c['batch_size']} {c['mode']}"
    if c.get("scenario") not in (None, "closed-loop", "eval"):
        where += f" {c['scenario']}"
    if c.get("axes"):
        from densebench.report.tables import axes_text

        where += f" [{axes_text(c['axes'])}]"
    if (c.get("worker") or {}).get("ray_node_id"):  # a cluster: say which machine
        where += f" @{c['host'].get('node') or c['host'].get('hostname')}"
    if c["status"] != "ok":
        return f"{where}: {'skipped' if c['status'] == 'skipped' else 'failed'}: {c.get('error')}"
    if (c.get("search") or {}).get("phase") == "screen":
        s = c["search"]
        return f"{where}: screened {len(s['splits'])} split(s), one sample {s['one_sample_ms']:.3g} ms"
    if c.get("search"):
        s = c["search"]
        best = f"{s['best_qps']:.4g} QPS" if s.get("best_qps") else "no QPS met the budget"
        return f"{where}: {best} ({len(s['probes'])} probes; {s['stopped']})"
    if c.get("loadgen"):
        lg, st = c["loadgen"], c.get("stats") or {}
        text = f"{where}: {lg['validity']}"
        if st.get("throughput") is not None:
            text += f", {st['throughput']:.4g} samples/s"
        if lg.get("reasons"):
            text += f" ({'; '.join(lg['reasons'])[:200]})"
        return text
    st, par = c.get("stats") or {}, c.get("parity") or {}
    parts = []
    if st.get("p50_ms") is not None:
        parts.append(f"p50 {st['p50_ms']:.3g} ms")
    if st.get("throughput") is not None:
        parts.append(f"{st['throughput']:.1f} img/s")
    if par.get("max_abs_error") is not None:
        parts.append(f"max|err| {par['max_abs_error']:.2g}")
    if (c.get("accuracy") or {}).get("top1") is not None:
        parts.append(f"top-1 {c['accuracy']['top1']:.2%}")
    return f"{where}: ok" + (f", {', '.join(parts)}" if parts else "")


def export_ahead_line(ev: dict) -> str:
    n = len(ev["variants"])
    return (f"exporting {n} artifacts first, {ev['lanes']} at a time "
            f"({', '.join(ev['variants'])}); nothing is measured meanwhile")


def exported_line(ev: dict) -> str:
    names = ", ".join(ev["variants"])
    if ev.get("error"):
        return f"{names}: export failed: {ev['error']}"
    return f"{names}: " + ("artifact cached" if ev.get("cached")
                           else f"exported in {ev['export_s']:.1f} s")


class Progress:
    """Feed it events (it is the core's ``progress`` callback); use it as a context."""

    def __init__(self, title: str, *, stop=None, enabled: bool = True, live: bool | None = None):
        from densebench.cli.common import err

        self.title = title
        self.stop = stop  # anything with min_iters, min_time, iters, max_time: time left
        self.enabled = enabled
        self.live = err.is_terminal if live is None else live
        self.console = err
        self.bar = None
        self.task = None
        self.total = None
        self.unit = None  # what the bar counts: cells (run) or batches (eval)
        self.done = 0
        self.last_phase = None

    def __enter__(self):
        if self.enabled and self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
                console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.title, total=None, detail="")
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _line(self, text: str) -> None:
        print(f"densebench: {text}", file=sys.stderr, flush=True)

    def __call__(self, ev: dict) -> None:
        if ev.get("event") == "warning":  # shown on a terminal and in logs alike
            self.console.print(f"[yellow]warning: {ev['message']}[/yellow]")
            return
        if not self.enabled:
            return
        if self.bar is not None:
            self._live(ev)
        else:
            self._plain(ev)

    def _plain(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "start":
            self.unit = "cells" if "cells" in ev else "batches"
            self.total = ev.get(self.unit)
            what = (f"{ev['cells']} cells of {len(ev.get('variants', []))} variant(s)"
                    if "cells" in ev else f"{len(ev.get('variants', []))} variant(s)")
            self._line(f"{self.title}: run {ev['run']}: {what}"
                       + (" (resumed: the missing and failed cells)" if ev.get("resumed")
                          else ""))
            for s in ev.get("skipped", []):
                self._line(f"skipped {s['variant']}: {s['reason']}")
        elif kind == "phase":
            text = f"{ev.get('variant', self.title)}: {ev['phase']}{_where(ev)}"
            if text != self.last_phase:
                self._line(text)
                self.last_phase = text
        elif kind == "more":  # the plan grew (a search's verifications)
            self.total = (self.total or 0) + ev["cells"]
        elif kind == "export_ahead":
            self._line(export_ahead_line(ev))
        elif kind == "exported":
            self._line(exported_line(ev))
        elif kind == "variant":
            cold = ev["info"].get("cold_start") or {}
            parts = [f"load {cold['load_s']:.2f} s"] if "load_s" in cold else []
            if "export_s" in cold:
                parts.append("artifact cached" if cold.get("artifact_cached")
                             else f"exported in {cold['export_s']:.1f} s")
            self._line(f"{ev['variant']}: ready ({', '.join(parts)})")
        elif kind == "cell":
            self.done += 1
            count = f"[{self.done}/{self.total}] " if self.unit == "cells" else ""
            self._line(count + cell_line(ev["cell"]))
        elif kind == "probe":
            p = ev["probe"]
            lat = p.get("percentile_latency_ms")
            self._line(f"{p['combination']}: probe {p['qps']:.4g} QPS: {p['validity']}"
                       + (f", p-latency {lat:.3g} ms" if lat is not None else "")
                       + (f" ({'; '.join(p['reasons'])[:160]})" if p.get("reasons") else ""))
        elif kind == "end":
            self._line(f"{self.title}: run {ev['run']} finished")

    def _live(self, ev: dict) -> None:
        kind = ev.get("event")
        p, t = self.bar, self.task
        if kind == "start":
            self.unit = "cells" if "cells" in ev else "batches"
            p.update(t, total=ev.get(self.unit), description=f"{self.title} {ev['run']}")
        elif kind == "phase":
            p.update(t, description=f"{ev.get('variant', self.title)}: {ev['phase']}{_where(ev)}",
                     detail="")
        elif kind == "more":
            p.update(t, total=(p.tasks[t].total or 0) + ev["cells"])
        elif kind in ("export_ahead", "exported"):  # kept above the bar: they take minutes
            p.console.print(export_ahead_line(ev) if kind == "export_ahead"
                            else exported_line(ev))
        elif kind == "progress" and self.stop is not None:
            n, el, rule = ev["iters"], ev["elapsed"], self.stop
            if rule.iters:
                left = (rule.iters - n) * el / max(n, 1)
            else:
                left = max(rule.min_time - el, (rule.min_iters - n) * el / max(n, 1), 0.0)
                if rule.max_time:
                    left = min(left, max(rule.max_time - el, 0.0))
            p.update(t, detail=f"{n} iters, ~{left:.0f}s left")
        elif kind == "cell" and self.unit == "cells":
            p.advance(t)
        elif kind == "batch" and self.unit == "batches" and ev.get("variant") != "reference":
            p.advance(t)
