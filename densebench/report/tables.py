"""Rich renderings of stored runs (``RunRecord``): the summary and the runs list."""

from __future__ import annotations

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from densebench import parity
from densebench.cost import price_for, price_table, usd_per_million
from densebench.measure.stats import min_samples
from densebench.report.stages import stage_notes, stages_table


def summary_rows(run) -> list[dict]:
    """One row per cell (by scenario, mode, batch size, then fastest first), with the
    speedup over eager in the same scenario, mode, batch size and host."""
    def group(c):
        return (c.scenario, c.batch_size, c.mode, host_key(c.host), *sorted(c.axes.items()))

    from densebench.results.repeats import merged
    from densebench.results.schema import host_key

    cells = merged(run.cells)
    eager = {group(c): c.stats["throughput"] for c in cells
             if c.variant == "eager" and c.ok and c.stats and c.stats.get("throughput")}
    rows = []
    for c in cells:
        st = c.stats or {}
        par = c.parity or {}
        base = eager.get(group(c))
        rows.append({
            "variant": c.variant, "batch_size": c.batch_size, "mode": c.mode,
            "device": c.device, "scenario": c.scenario, "host": c.hostname,
            "host_key": host_key(c.host), "node": c.host.get("node"), "axes": c.axes,
            "threads": c.threads,
            "status": c.status, "error": c.error,
            "precision": c.precision, "n": st.get("n"),
            "p50_ms": st.get("p50_ms"), "p50_ci_ms": st.get("p50_ci_ms"),
            "p90_ms": st.get("p90_ms"), "p99_ms": st.get("p99_ms"),
            "mean_ms": st.get("mean_ms"), "cov": st.get("cov"), "noisy": st.get("noisy"),
            "throughput": st.get("throughput"), "throughput_ci": st.get("throughput_ci"),
            "speedup_vs_eager": (st["throughput"] / base) if base and st.get("throughput")
            else None,
            "parity_max_abs_error": par.get("max_abs_error"),
            "parity_top1_agreement": par.get("top1_agreement"),
            "parity_within": parity.within(c.precision, par),
            "parity_cosine_min": par.get("cosine_similarity_min"),
            "accuracy": c.accuracy,
            "loadgen": c.loadgen, "search": c.search, "pipeline": c.pipeline,
            "instances": c.scenario_settings.get("instances"),
            "busy": c.busy, "others_cores": (c.host_load or {}).get("others_cores"),
            "processes": st.get("processes", 1),
            "between_process_spread": st.get("between_process_spread"),
            "processes_disagree": st.get("processes_disagree", False),
        })
    order = {"model": 0, "e2e": 1, "e2e-jpeg": 2}
    rows.sort(key=lambda r: (r["scenario"], order.get(r["mode"], 9), r["batch_size"],
                             sorted(r["axes"].items()), r["status"] != "ok",
                             -(r["throughput"] or 0)))
    return rows


def axes_text(axes: dict) -> str:
    """A sweep cell's other axes, short: 224px t2."""
    return " ".join(f"{v}px" if k == "image_size" else f"t{v}" if k == "threads"
                    else f"{v} decode worker{'' if v == 1 else 's'}"
                    if k == "decode_workers" else f"{k} {v}" for k, v in axes.items())


def _ms(v) -> str:
    if v is None:
        return "n/s"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _half_width(ci, value) -> str:
    if not ci or not value:
        return "-"
    return f"{(ci[1] - ci[0]) / 2 / value:.1%}"


def summary_table(run) -> Group:
    data = run.data
    m = data.get("model", {})
    title = (f"{m.get('name')} {m.get('image_size')}px on {data.get('device')} "
             f"({data.get('threads')} threads) - run {data['id']}"
             + (f" '{data['name']}'" if data.get("name") else "")
             + ("" if run.status == "complete" else f" [{run.status}]"))
    scenarios = {c.scenario for c in run.cells}
    hosts = {(c.hostname, c.host.get("node")) for c in run.cells}
    rows = summary_rows(run)
    served = [r for r in rows if r["loadgen"] is not None or r["search"] is not None
              or (r["status"] != "ok" and r["scenario"] not in ("closed-loop", "eval"))]
    closed = [r for r in rows if not any(r is x for x in served)]
    procs = max((r["processes"] for r in closed), default=1)
    if procs > 1:
        title += f" - {procs} worker processes per cell, interleaved"
    # fits 100 columns: a light box, intervals beside their values, tail percentiles only
    # where some cell supports them, the mode column only when there are several
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 1))
    show_mode = len({r["mode"] for r in closed}) > 1
    tails = [p for p in ("p90", "p99") if any(r[f"{p}_ms"] is not None for r in closed)]
    cols = [("variant", "left"), ("batch", "right")] + ([("mode", "left")] if show_mode else [])
    cols += [("p50 ms ±95%", "right")] + [(f"{p} ms", "right") for p in tails]
    cols += [("img/s ±95%", "right"), ("vs eager", "right"), ("max|err|", "right"),
             ("CoV", "right"), ("n", "right")]
    for name, just in cols:
        t.add_column(name, justify=just, no_wrap=True)
    notes: list[Text] = []
    for r in closed:
        name = r["variant"] + ("!" if r["busy"] else "") + \
            ("~" if r["processes_disagree"] else "")
        if len(scenarios) > 1:
            name += f" [{r['scenario']}]"
        if r["axes"]:
            name += f" [{axes_text(r['axes'])}]"
        if len(hosts) > 1:
            name += f" @{r['node'] or r['host']}"
        lead = [Text(name), str(r["batch_size"])] + ([r["mode"]] if show_mode else [])
        if r["status"] != "ok":
            skipped = r["status"] == "skipped"
            t.add_row(*lead, Text(r["status"] if skipped else "failed",
                                  style="dim" if skipped else "red"),
                      *[""] * (len(cols) - len(lead) - 1))
            notes.append(Text(f"{r['variant']} batch {r['batch_size']} {r['mode']}: "
                              f"{r['status']}: {r['error']}",
                              style="dim" if skipped else "red"))
            continue
        sp = r["speedup_vs_eager"]
        agree = r["parity_top1_agreement"]
        err = r["parity_max_abs_error"]
        t.add_row(
            *lead, f"{_ms(r['p50_ms'])} {_half_width(r['p50_ci_ms'], r['p50_ms'])}",
            *[_ms(r[f"{p}_ms"]) for p in tails],
            (f"{r['throughput']:.1f} {_half_width(r['throughput_ci'], r['throughput'])}"
             if r["throughput"] is not None else "-"),
            f"{sp:.2f}x" if sp else "-",
            Text(f"{err:.2g}" if err is not None else "-",
                 style="red" if (agree is not None and agree < 1)
                 or r["parity_within"] is False else ""),
            Text(f"{r['cov']:.1%}", style="yellow" if r["noisy"] else "")
            if r["cov"] is not None else "-", str(r["n"] or "-"),
        )
        if r["parity_within"] is False:
            notes.append(Text(
                f"{r['variant']} batch {r['batch_size']}: logits differ from fp32 by more than "
                f"the {r['precision']} threshold ({parity.threshold(r['precision']):g} of "
                "the largest logit)", style="red"))
        if agree is not None and agree < 1:
            notes.append(Text(f"{r['variant']} batch {r['batch_size']}: top-1 agrees with "
                              f"fp32 on {agree:.0%} of the parity inputs", style="red"))
        if r["processes_disagree"]:
            notes.append(Text(
                f"~ {r['variant']} batch {r['batch_size']} {r['mode']}: its worker processes "
                f"disagree (medians {r['between_process_spread']:.1%} apart, more than their "
                "own noise): the interval includes that spread", style="yellow"))
    tables = [t] if closed else []
    answer = fastest_line(closed)
    if answer is not None:
        tables.append(answer)
    jpeg = [r for r in rows if r["status"] == "ok" and r["pipeline"]]
    if jpeg:
        tables.append(stages_table(jpeg))
        tables.extend(stage_notes(jpeg))
    if served:
        tables.append(loadgen_table(served))
    foot = [Text("±95%: half-width of the bootstrap 95% interval, relative to the value"
                 + (" (resampling worker processes, then iterations)" if procs > 1 else "")
                 + f". p90/p99 'n/s': not supported by the sample (p90 needs "
                 f"{min_samples(90)} iterations, p99 {min_samples(99)}). CoV in yellow: "
                 "noisy (> 10%). max|err|: logits against eager fp32 on the CPU, same inputs "
                 "(red: top-1 disagrees, or beyond its precision's threshold: "
                 + ", ".join(f"{p} {t:g}" for p, t in parity.THRESHOLDS.items())
                 + " of the largest logit).", style="dim")
            ] if closed else []
    if m.get("random_weights"):
        foot.append(Text(f"Weights: {m.get('weights_description')} - latency is real, "
                         "accuracy would not be.", style="yellow"))
    for s in data.get("skipped", []):
        foot.append(Text(f"skipped {s['variant']}: {s['reason']}", style="dim"))
    if data.get("not_in_quick"):
        foot.append(Text("not in the quick set, also runnable here (-v all measures them): "
                         + ", ".join(data["not_in_quick"]), style="dim"))
    busy = [r for r in rows if r["busy"]]
    if busy:
        worst = max(r["others_cores"] or 0 for r in busy)
        foot.append(Text(f"! busy host: {len(busy)} cell(s) were measured while other "
                         f"processes used up to {worst:.2f} cores on average (or the "
                         "hypervisor stole time): their numbers include that contention",
                         style="bold yellow"))
    foot.extend(loadgen_notes(run))
    for w in data.get("warnings", []):
        foot.append(Text(f"warning: {w}", style="yellow"))
    for w in run.load_warnings:
        foot.append(Text(f"warning: {w}", style="yellow"))
    if data.get("migrated_from"):
        foot.append(Text(f"read from a schema-version-{data['migrated_from']} run file "
                         "(migrated in memory; the files are unchanged)", style="dim"))
    return Group(*tables, *notes, *foot)


def fastest_line(rows: list[dict]) -> Text | None:
    """The answer in one line: the fastest variant at each batch size (model mode where
    measured), its speedup over eager and its parity."""
    ok = [r for r in rows if r["status"] == "ok" and r["throughput"]]
    if not ok:
        return None
    mode = "model" if any(r["mode"] == "model" for r in ok) else ok[0]["mode"]
    parts = []
    for bs in sorted({r["batch_size"] for r in ok if r["mode"] == mode}):
        best = max((r for r in ok if r["mode"] == mode and r["batch_size"] == bs),
                   key=lambda r: r["throughput"])
        sp = f", {best['speedup_vs_eager']:.2f}x eager" if best["speedup_vs_eager"] else ""
        err = best["parity_max_abs_error"]
        par = f", max|err| {err:.2g}" if err is not None else ""
        agree = best["parity_top1_agreement"]
        if agree is not None:
            par += f", top-1 {agree:.0%}"
        parts.append(f"batch {bs}: {best['variant']} ({best['throughput']:.1f} img/s{sp}{par})")
    return Text(f"fastest ({mode} mode): " + "; ".join(parts), style="bold")


def _verdict_text(lg: dict | None) -> Text:
    if not lg:
        return Text("-")
    ok = lg.get("validity") == "VALID"
    return Text(lg.get("validity", "?"), style="green" if ok else "red bold")


def _served_name(r: dict) -> str:
    """A LoadGen cell's variant, with its path where it is not the tensor one."""
    if r["mode"] != "e2e-jpeg":
        return r["variant"]
    n = r["axes"].get("decode_workers", 0)
    return f"{r['variant']} [jpeg, {n} decode worker{'' if n == 1 else 's'}]"


def loadgen_table(rows: list[dict]) -> Table:
    """LoadGen scenario cells: every figure with its verdict, INVALID never without why."""
    t = Table(title="LoadGen scenarios (LoadGen's own figures and verdicts; latencies per "
              "sample, multi-stream per query)", title_justify="left")
    for col in ("scenario", "variant", "max batch", "inst", "verdict", "target QPS",
                "samples/s", "p50 ms", "p90 ms", "p99 ms", "queries", "run"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("scenario", "variant",
                                                                   "verdict") else "right")
    for r in rows:
        lg = r["loadgen"] or {}
        if r["status"] != "ok":
            t.add_row(r["scenario"], _served_name(r), str(r["batch_size"]),
                      str(r["instances"] or 1), Text("failed", style="red"),
                      *[""] * 7)
            continue
        t.add_row(
            r["scenario"], _served_name(r), str(r["batch_size"]), str(r["instances"] or 1),
            _verdict_text(lg), _num(lg.get("target_qps")), _num(r["throughput"]),
            _ms(r["p50_ms"]), _ms(r["p90_ms"]), _ms(r["p99_ms"]),
            str(lg.get("query_count") or "-"),
            "official" if lg and not lg.get("short_run") else
            f"short ({(lg.get('duration_ms') or 0) / 1e3:g} s)")
    return t


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def loadgen_notes(run) -> list[Text]:
    """One line per LoadGen cell that says why it is INVALID, or what a VALID one met."""
    out = []
    for c in run.cells:
        lg = c.loadgen
        if not lg:
            continue
        where = f"{c.scenario} {c.variant} max batch {c.batch_size}" + (
            f" (jpeg, {c.axes.get('decode_workers', 0)} decode workers)"
            if c.mode == "e2e-jpeg" else "")
        if lg.get("validity") != "VALID":
            out.append(Text(f"{where}: INVALID: {'; '.join(lg.get('reasons') or [])}",
                            style="red"))
        elif lg.get("percentile_latency_ms") is not None:
            out.append(Text(f"{where}: VALID: p{lg['percentile']:g} "
                            f"{lg['percentile_latency_ms']:.3g} ms within "
                            f"{lg['latency_budget_ms']:g} ms at {lg['target_qps']:g} QPS",
                            style="green"))
        if lg.get("batch_sizes"):
            sizes = ", ".join(f"{k}: {n}" for k, n in lg["batch_sizes"].items())
            out.append(Text(f"{where}: batches served by size {{{sizes}}}; logs "
                            f"{', '.join(lg.get('logs', {}).values())}", style="dim"))
    return out


def search_table(run) -> Group:
    """`densebench search`: what was screened (and why a variant was not admitted), the
    best predictions, what LoadGen verified beside what was predicted, and the answer per
    host with replicas and cost."""
    cfg = run.data.get("config", {})
    pct, budget = cfg.get("percentile", 99), cfg.get("latency_budget_ms", 0)
    cells = list(run.cells)
    screened = [c for c in cells if c.axes.get("search") == "screen"]
    verified = [c for c in cells if c.axes.get("search") != "screen"]
    parts: list = []
    if screened:
        t = Table(title=f"screened: ms per call with every instance busy - run {run.id}",
                  title_justify="left")
        for col in ("variant", "host", "split", "batch 1", "largest batch", "parity",
                    "admitted"):
            t.add_column(col, justify="left" if col in ("variant", "host", "admitted")
                         else "right")
        refused = {(r["variant"], _host_text(r["host"])): r["why"]
                   for r in run.data.get("not_admitted") or []}
        for c in screened:
            why = refused.get((c.variant, _host_text(c.host)))
            verdict = Text(why or "yes", style="red" if why else "green")
            if not c.ok:
                t.add_row(c.variant, _host_text(c.host), "", "", "", "", verdict)
                continue
            sizes = c.search["sizes"]
            for i, sp in enumerate(c.search["splits"]):
                ms = sp["service_ms"]
                t.add_row(c.variant if i == 0 else "", _host_text(c.host) if i == 0 else "",
                          f"{sp['instances']} x {sp['threads']}",
                          _ms(float(np.median(ms[str(sizes[0])]))),
                          f"{_ms(float(np.median(ms[str(sizes[-1])])))} (b{sizes[-1]})",
                          _parity_text(c) if i == 0 else "", verdict if i == 0 else "")
        parts.append(t)
    t = Table(title=f"highest Server QPS with p{pct:g} <= {budget:g} ms: predicted, then "
              "verified with LoadGen", title_justify="left")
    for col in ("configuration", "host", "predicted QPS", "harness", "calibrated",
                "LoadGen QPS", "error", "p-lat ms", "lowest INVALID", "probes", "stopped"):
        t.add_column(col, no_wrap=col != "stopped",
                     justify="left" if col in ("configuration", "host", "stopped")
                     else "right")
    for c in verified:
        s = c.search or {}
        what = (f"{c.variant} b{c.batch_size}"
                + (f"/{c.axes['batch_timeout_ms']:g}ms" if c.batch_size > 1 and
                   "batch_timeout_ms" in c.axes else "")
                + f" {c.axes.get('instances', c.scenario_settings.get('instances'))}"
                f"x{c.threads}")
        if not c.ok:
            style = "dim" if c.skipped else "red"
            t.add_row(what, _host_text(c.host), _num(s.get("predicted_qps")), "", "",
                      Text(c.status if c.skipped else "failed", style=style), "", "", "",
                      "", Text(c.error or "", style=style))
            continue
        best = s.get("best_qps")
        err = s.get("calibrated_error", s.get("prediction_error"))
        factor = s.get("harness_factor")
        t.add_row(what, _host_text(c.host), _num(s.get("predicted_qps")),
                  f"x{factor:.2f}" if factor else "",
                  _num(s.get("calibrated_qps", s.get("predicted_qps"))),
                  Text(_num(best), style="bold") if best else Text("none", style="red"),
                  f"{err:+.0%}" if err is not None else "",
                  _ms((c.loadgen or {}).get("percentile_latency_ms")) if best else "-",
                  _num(s.get("lowest_invalid_qps")), str(len(s.get("probes", []))),
                  s.get("stopped", ""))
    parts.append(t)
    foot = [Text("predicted: the highest rate whose simulated LoadGen runs pass (the batcher "
                 "replayed with the screened call times); harness: how much longer a call "
                 "takes under LoadGen (a Server run at twice the screened capacity: its "
                 "callbacks and answers cost tens of µs a query); calibrated: the "
                 "prediction from calls that much longer, where verification starts; "
                 "LoadGen QPS: the highest offered rate whose Server run was VALID; error: "
                 "calibrated / LoadGen - 1. Every prediction is in predictions.jsonl, every "
                 "probe in probes.jsonl.",
                 style="dim")]
    ans = run.data.get("answer") or {}
    for h in ans.get("hosts", []):
        line = (f"{h['host_name']}: {h['variant']}, max batch {h['max_batch']}"
                + (f" (wait {h['batch_timeout_ms']:g} ms)" if h["max_batch"] > 1 else "")
                + f", {h['instances']} instance(s) x {h['threads_per_instance']} thread(s): "
                f"{h['qps']:.4g} QPS per replica")
        if h.get("replicas"):
            line += f"; {h['replicas']} replica(s) for {ans['target_qps']:g} QPS"
        if h.get("usd_per_million") is not None:
            line += f"; ${h['usd_per_million']:.3g} per million images at the budget"
            if h.get("fleet_usd_per_hour") is not None:
                line += f" (${h['fleet_usd_per_hour']:.3g}/h for the target)"
        foot.append(Text(line, style="bold green" if h is ans["hosts"][0] else ""))
    for n in ans.get("prices_for_no_host", []):
        foot.append(Text(f"--price {n}: no host of that name was searched", style="yellow"))
    best = run.data.get("best")
    if best:
        foot.append(Text(f"reproduce: {best['command']}"))
    elif run.status == "complete":
        whys = sorted({p["why"] for p in run.data.get("predictions", []) if p.get("why")})
        foot.append(Text("no combination met the budget"
                         + (f": {'; '.join(whys[:3])}" if whys else ""), style="bold red"))
        foot.extend(_no_answer_lines(run, verified, pct))
    return Group(*parts, *foot)


def _no_answer_lines(run, verified: list, pct: float) -> list[Text]:
    """When nothing met the budget: what each verified configuration measured at the
    lowest load it was offered, and the smallest budgets the configurations could meet."""
    out = []
    for c in verified:
        probes = [p for p in (c.search or {}).get("probes", [])
                  if p.get("percentile_latency_ms") is not None]
        if probes:
            low = min(probes, key=lambda p: p["qps"])
            out.append(Text(f"{low['combination']}: p{pct:g} {_ms(low['percentile_latency_ms'])}"
                            f" ms measured at its lowest load, {_num(low['qps'])} QPS"))
    preds = sorted((p for p in run.data.get("predictions", [])
                    if p.get("min_budget_ms") is not None), key=lambda p: p["min_budget_ms"])
    if preds:
        out.append(Text(f"smallest p{pct:g} budgets they could meet (predicted under a "
                        "trickle of load): " + "; ".join(
                            f"{p['label']} {_ms(p['min_budget_ms'])} ms" for p in preds[:5])
                        + (f"; {len(preds) - 5} more in predictions.jsonl"
                           if len(preds) > 5 else "")))
    return out


def _host_text(host: dict) -> str:
    return (host or {}).get("node") or (host or {}).get("hostname") or ""


def _parity_text(c) -> str:
    p = c.parity or {}
    if p.get("max_abs_error") is None:
        return ""
    ok = parity.within(c.precision, p)
    rel = p["max_abs_error"] / p["max_abs_reference"] if p.get("max_abs_reference") else None
    return (f"{rel:.1e}" if rel is not None else f"{p['max_abs_error']:.1e}") + \
        ("" if ok is None else " ok" if ok else " beyond")


def runs_table(records, as_refs: list[str] | None = None) -> Table:
    """Every run directory, the damaged ones too, with what is wrong with them; with
    ``as_refs``, the runs of one name and the ``NAME~N`` each answers to."""
    from densebench.results.store import DamagedRun

    t = Table(title="stored runs" if as_refs is None else
              f"runs named {as_refs[0]}, newest first")
    cols = ("id", "name", "kind", "created", "model", "device", "cells ok", "status")
    for col in cols if as_refs is None else ("as", *cols):
        t.add_column(col, no_wrap=col in ("as", "id", "created"))
    for i, r in enumerate(records):
        lead = [] if as_refs is None else [as_refs[i]]
        if isinstance(r, DamagedRun):
            t.add_row(*lead, r.path.name, "", "", "", "", "", "",
                      Text(f"damaged: {r.reason}", style="red"))
            continue
        d = r.data
        ok = sum(c.ok for c in r.cells)
        t.add_row(*lead, d["id"], d.get("name") or "", d.get("kind", ""),
                  (d.get("created") or "")[:19].replace("T", " "),
                  (d.get("model") or {}).get("name", ""), d.get("device", ""),
                  f"{ok}/{len(r.cells)}",
                  Text(r.status, style="yellow" if r.status in ("abandoned", "incomplete")
                       else ""))
    return t


# ============================================================================ sweeps


def hosts_of(run) -> list[tuple[str, dict]]:
    """The hosts a run's cells ran on (key, host), in first-seen order."""
    from densebench.results.schema import host_key

    seen: dict = {}
    for c in run.cells:
        seen.setdefault(host_key(c.host), c.host)
    return list(seen.items())


def host_view(run, key: str):
    """``run`` with only the cells of host ``key`` (a RunRecord; nothing written)."""
    from densebench.results.schema import host_key
    from densebench.results.store import RunRecord

    cells = [c for c in run.cells if host_key(c.host) == key]
    threads = sorted({c.threads for c in cells if c.threads})
    devices = sorted({c.device for c in cells})
    data = {**run.data, "device": ", ".join(devices),
            "threads": ", ".join(map(str, threads)) or "?",
            "model": {**(run.data.get("model") or {}),
                      "image_size": _image_sizes(run)}}
    label = next((c.host.get("node") or c.hostname for c in cells), key)
    node = next((n for n in (run.data.get("cluster") or {}).get("nodes", [])
                 if host_key(n) == key and n.get("fingerprint")), None)
    if node is not None:  # the environment of that host, as its node reported it
        data["environment"] = node["fingerprint"]
    data["host_label"] = label
    return RunRecord(run.path, data, cells)


def by_host(runs: list) -> list:
    """The cells of ``runs`` split by host, each host a run-like view named after it (for
    ``compare``: the first host is the baseline)."""
    from densebench.errors import ConfigError
    from densebench.results.store import RunRecord

    pooled = RunRecord(runs[0].path, runs[0].data, [c for r in runs for c in r.cells])
    views = []
    for key, _ in hosts_of(pooled):
        v = host_view(pooled, key)
        v.data["id"] = v.data["host_label"]
        views.append(v)
    if len(views) < 2:
        raise ConfigError("--by host: these runs measured on one host only "
                          f"({views[0].data['id'] if views else 'none'}): run a sweep on a "
                          "cluster (densebench sweep --executor ray), or name runs from "
                          "several machines")
    return views


def _image_sizes(run) -> str:
    sizes = (run.data.get("sweep") or {}).get("spec", {}).get("image_sizes")
    return ",".join(map(str, sizes)) if sizes else "default "


def sweep_tables(run) -> Group:
    """A sweep: one summary per host (its CPU named), then the same cells side by side
    across hosts when there are several."""
    parts: list = []
    cluster = run.data.get("cluster") or {}
    if cluster.get("executor") == "ray":
        parts.append(Text(f"Ray cluster {cluster.get('address')} (ray {cluster.get('ray')}): "
                          f"{len(cluster.get('nodes', []))} node(s), "
                          f"{cluster.get('cells_per_node', 1)} job(s) per node at a time",
                          style="bold"))
    prices = price_table((run.data.get("sweep") or {}).get("spec", {}).get("prices", {}),
                         "the sweep file")
    hosts = hosts_of(run)
    for key, host in hosts:
        parts.append(Text(f"host {host.get('node') or host.get('hostname')}: "
                          f"{host.get('cpu_model')}", style="bold cyan"))
        view = host_view(run, key)
        parts.append(summary_table(view))
        line = _cost_line(view, price_for(prices, host))
        if line is not None:
            parts.append(line)
    if len(hosts) > 1:
        parts.append(host_pivot_table(host_pivot([run], prices=prices)))
    return Group(*parts)


def _cost_line(view, usd_per_hour: float | None) -> Text | None:
    """A priced host's cost per million images at its highest-throughput cell."""
    from densebench.results.repeats import merged

    cells = [c for c in merged(view.cells) if c.ok and (c.stats or {}).get("throughput")]
    if usd_per_hour is None or not cells:
        return None
    best = max(cells, key=lambda c: c.stats["throughput"])
    img_s = best.stats["throughput"]
    return Text(f"at ${usd_per_hour:g}/h: ${usd_per_million(usd_per_hour, img_s):.3g} per "
                f"million images at its highest throughput ({best.variant} batch "
                f"{best.batch_size} {best.mode}: {img_s:.4g} img/s)", style="bold")


def host_pivot(runs: list, metric: str = "throughput",
               prices: dict[str, float] | None = None) -> dict:
    """The same cells on different hosts side by side: rows keyed by the cell less its
    host, a value per host, and the best host per row (``compare --by host``); with
    ``prices`` (USD per hour by host), each throughput's cost per million images and the
    cheapest host per row."""
    from densebench.results.repeats import merged
    from densebench.results.schema import host_key

    hosts: dict[str, str] = {}
    usd: dict[str, float] = {}
    table: dict[tuple, dict] = {}
    for run in runs:
        for c in merged(run.cells):
            if not c.ok or not c.stats or c.stats.get(_stat_key(metric)) is None:
                continue
            h = host_key(c.host)
            hosts.setdefault(h, c.host.get("node") or c.hostname or h)
            price = price_for(prices or {}, c.host)
            if price is not None:
                usd[h] = price
            row = table.setdefault(c.key().without_host(), {})
            row[h] = c.stats[_stat_key(metric)]
    rows = []
    for k, values in table.items():
        better = max if metric == "throughput" else min
        best = better(values, key=values.get)
        cost = {h: usd_per_million(usd[h], v) for h, v in values.items()
                if h in usd and metric == "throughput" and v > 0}
        rows.append({"model": k.model, "variant": k.variant, "batch_size": k.batch_size,
                     "mode": k.mode, "device": k.device, "scenario": k.scenario,
                     "axes": dict(k.axes),
                     "values": {hosts[h]: v for h, v in values.items()},
                     "best_host": hosts[best],
                     "spread": better(values.values()) / (min if better is max else max)(
                         values.values()),
                     "usd_per_million": {hosts[h]: v for h, v in cost.items()},
                     "cheapest_host": hosts[min(cost, key=cost.get)] if cost else None})
    return {"metric": metric, "hosts": list(hosts.values()), "rows": rows,
            "priced": bool(usd) and metric == "throughput"}


def _stat_key(metric: str) -> str:
    return "throughput" if metric == "throughput" else f"{metric}_ms"


def host_pivot_table(p: dict) -> Table:
    unit = "img/s" if p["metric"] == "throughput" else "ms"
    t = Table(title=f"across hosts: {p['metric']} ({unit}); best host per cell",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    priced = p.get("priced")
    cols = ("variant", "batch", "mode", *p["hosts"], "best", "best/worst",
            *(("cheapest", "$/M images") if priced else ()))
    for col in cols:
        t.add_column(col, justify="left" if col in ("variant", "mode", "best", "cheapest")
                     else "right", no_wrap=True)
    for r in p["rows"]:
        name = r["variant"] + (f" [{axes_text(r['axes'])}]" if r["axes"] else "")
        cheap = r.get("cheapest_host")
        t.add_row(Text(name), str(r["batch_size"]), r["mode"],
                  *[_num(r["values"].get(h)) if h in r["values"] else "-" for h in p["hosts"]],
                  r["best_host"], f"{r['spread']:.2f}x",
                  *((cheap or "-", f"${r['usd_per_million'][cheap]:.3g}" if cheap else "-")
                    if priced else ()))
    if priced:
        t.caption = ("$/M images: the cheapest host's cost of a million images at its "
                     "throughput ([prices] in the sweep file, USD per hour)")
    return t
