"""`densebench report`: PNG plots and an index.html for one or more stored runs
(``RunRecord``s, any schema version)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from densebench.report.tables import summary_rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ok(run, mode: str) -> list:
    """Finished closed-loop or eval cells of ``mode`` that have statistics (LoadGen cells
    are drawn by ``plot_serving``)."""
    from densebench.results.repeats import merged

    return [c for c in merged(run.cells) if c.ok and c.mode == mode and c.stats
            and c.samples_ms and c.loadgen is None and c.search is None]


def _predicted_curves(runs: list) -> dict:
    """(label) -> [(offered QPS, predicted percentile latency ms)]: what the search's
    calibrated simulation predicted for each configuration it verified."""
    many = len(runs) > 1
    out: dict[str, list] = {}
    for d in runs:
        for c in d.cells:
            curve = (c.search or {}).get("curve") if c.ok else None
            if curve:
                inst = c.scenario_settings.get("instances") or c.axes.get("instances") or 1
                label = _label(d, f"{c.variant} b{c.batch_size} x{inst}", many)
                out[label + " (search)"] = [(p["qps"], p["percentile_ms"]) for p in curve]
    return out


def _serving_points(runs: list) -> dict:
    """(label) -> [(offered QPS, percentile latency ms, VALID?, percentile, budget)] from
    server cells and search probes."""
    many = len(runs) > 1
    out: dict[str, list] = {}
    for d in runs:
        for c in d.cells:
            if not c.ok:
                continue
            inst = c.scenario_settings.get("instances") or 1
            label = _label(d, f"{c.variant} b{c.batch_size} x{inst}", many)
            if c.search:
                for pr in c.search.get("probes", []):
                    if pr.get("percentile_latency_ms") is not None:
                        out.setdefault(label + " (search)", []).append(
                            (pr["qps"], pr["percentile_latency_ms"],
                             pr["validity"] == "VALID", c.search["percentile"],
                             c.search["latency_budget_ms"]))
            elif c.loadgen and c.scenario == "server" and \
                    c.loadgen.get("percentile_latency_ms") is not None:
                lg = c.loadgen
                out.setdefault(label, []).append(
                    (lg["target_qps"], lg["percentile_latency_ms"], lg["validity"] == "VALID",
                     lg["percentile"], lg["latency_budget_ms"]))
    return out


def plot_serving(runs: list, path: Path, mode: str = "e2e") -> None:
    """The serving curve: the chosen latency percentile against offered QPS (LoadGen
    Server runs and search probes), VALID filled, INVALID hollow, the budget dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5.2))
    points = _serving_points(runs)
    curves = _predicted_curves(runs)
    budgets = set()
    for i, (label, pts) in enumerate(sorted(points.items())):
        pts = sorted(pts)
        color = f"C{i % 10}"
        if label in curves:  # the prediction, dashed, with the probes that verified it
            ax.plot(*zip(*curves[label], strict=True), color=color, ls="--", lw=1.2,
                    alpha=0.8)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, alpha=0.5, lw=1)
        for qps, lat, valid, _, _ in pts:
            ax.scatter([qps], [lat], s=40, color=color if valid else "white",
                       edgecolors=color, zorder=3)
        ax.scatter([], [], color=color, label=label)
        budgets |= {(p[3], p[4]) for p in pts}
    for pct, budget in sorted(budgets):
        ax.axhline(budget, color="#a00", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], budget, f" p{pct:g} budget {budget:g} ms", color="#a00",
                va="bottom", fontsize=8)
    ax.set_xlabel("offered load, queries / s (LoadGen Server, Poisson arrivals)")
    ax.set_ylabel("latency at the chosen percentile, ms (log)")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_title("serving curve: filled = VALID, hollow = INVALID"
                 + ("; dashed: the search's prediction" if curves else ""),
                 loc="left", fontsize=10)
    if points:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(plt, fig, path)


def _label(run, variant: str, many: bool) -> str:
    return f"{variant} ({run.name or run.id})" if many else variant


def _mode(runs: list) -> str:
    modes = {c.mode for d in runs for c in d.cells if c.ok and c.loadgen is None}
    return "model" if "model" in modes else (sorted(modes) or ["model"])[0]


def plot_throughput(runs: list, path: Path, mode: str) -> None:
    plt = _plt()
    many = len(runs) > 1
    batches = sorted({c.batch_size for d in runs for c in _ok(d, mode)})
    per_batch = {}
    for bs in batches:
        items = []
        for d in runs:
            for c in _ok(d, mode):
                if c.batch_size == bs:
                    st = c.stats
                    ci = st.get("throughput_ci") or (st["throughput"], st["throughput"])
                    items.append((_label(d, c.variant, many), st["throughput"], ci))
        per_batch[bs] = items
    height = sum(1.1 + 0.32 * len(v) for v in per_batch.values())
    fig, axes = plt.subplots(len(batches), 1, figsize=(9, max(height, 2.5)), squeeze=False,
                             height_ratios=[1 + len(per_batch[b]) for b in batches])
    for ax, bs in zip(axes[:, 0], batches, strict=True):
        items = per_batch[bs]
        items.sort(key=lambda t: t[1])
        y = np.arange(len(items))
        vals = [t[1] for t in items]
        err = np.array([[t[1] - t[2][0] for t in items], [t[2][1] - t[1] for t in items]])
        ax.barh(y, vals, xerr=err, color="#4C72B0", capsize=3, ecolor="#222")
        ax.set_yticks(y, [t[0] for t in items])
        for yi, t in zip(y, items, strict=True):
            ax.text(t[2][1], yi, f"  {t[1]:.1f}", va="center", fontsize=8)
        ax.set_xlabel("images / s (bars: bootstrap 95% interval)")
        ax.set_title(f"throughput, batch {bs}, {mode} mode", loc="left", fontsize=10)
        ax.set_xlim(0, max(t[2][1] for t in items) * 1.15 if items else 1)
    _save(plt, fig, path)


def plot_latency_distributions(runs: list, path: Path, mode: str) -> None:
    plt = _plt()
    many = len(runs) > 1
    batches = sorted({c.batch_size for d in runs for c in _ok(d, mode)})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches) + 1, 4.8),
                             squeeze=False)
    for ax, bs in zip(axes[0], batches, strict=True):
        items = [(_label(d, c.variant, many), np.asarray(c.samples_ms))
                 for d in runs for c in _ok(d, mode) if c.batch_size == bs]
        items.sort(key=lambda t: float(np.median(t[1])))
        ax.boxplot([t[1] for t in items], orientation="horizontal", showfliers=True,
                   flierprops={"markersize": 2, "alpha": 0.4})
        ax.set_yticks(range(1, len(items) + 1), [t[0] for t in items])
        ax.set_xlabel("latency per batch, ms (log)")
        ax.set_xscale("log")
        ax.set_title(f"latency distribution, batch {bs}, {mode}", loc="left", fontsize=10)
    _save(plt, fig, path)


def plot_batch_scaling(runs: list, path: Path, mode: str) -> None:
    plt = _plt()
    many = len(runs) > 1
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for d in runs:
        variants = sorted({c.variant for c in _ok(d, mode)})
        for v in variants:
            cells = sorted((c for c in _ok(d, mode) if c.variant == v),
                           key=lambda c: c.batch_size)
            bs = [c.batch_size for c in cells]
            a1.plot(bs, [c.stats["p50_ms"] for c in cells], marker="o",
                    label=_label(d, v, many))
            a2.plot(bs, [c.stats["throughput"] for c in cells], marker="o",
                    label=_label(d, v, many))
    batches = sorted({c.batch_size for d in runs for c in _ok(d, mode)})
    for ax, ylabel in ((a1, "p50 latency per batch, ms"), (a2, "images / s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
    a1.set_yscale("log")
    a1.set_title(f"latency against batch size ({mode})", loc="left", fontsize=10)
    a2.set_title(f"throughput against batch size ({mode})", loc="left", fontsize=10)
    a2.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(plt, fig, path)


def plot_parity(runs: list, path: Path, mode: str) -> None:
    """Accuracy against throughput where an eval measured it, else parity error."""
    plt = _plt()
    many = len(runs) > 1
    fig, ax = plt.subplots(figsize=(10, 5))
    with_acc = any((c.accuracy or {}).get("top1") is not None
                   for d in runs for c in d.cells)
    best = {}
    for d in runs:
        for c in _ok(d, mode):
            key = (id(d), c.variant)
            if key not in best or c.stats["throughput"] > best[key][2].stats["throughput"]:
                best[key] = (d, c.variant, c)
    markers = "osD^v<>Pp*hX"
    plotted = 0
    for i, (d, v, c) in enumerate(sorted(best.values(),
                                         key=lambda t: -t[2].stats["throughput"])):
        if with_acc:
            y = (c.accuracy or {}).get("top1")
        else:
            err = (c.parity or {}).get("max_abs_error")
            if err is None or (err == 0 and v == "eager"):
                continue  # eager fp32 is the reference itself
            y = max(err, 1e-9)
        if y is None:
            continue
        ax.scatter([c.stats["throughput"]], [y], s=55, marker=markers[i % len(markers)],
                   label=f"{_label(d, v, many)} (batch {c.batch_size})")
        plotted += 1
    if plotted:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        ax.text(0.5, 0.5, "no parity or accuracy recorded in these runs", ha="center",
                va="center", transform=ax.transAxes)
    ax.set_xlabel("images / s (best batch size per variant)")
    if with_acc:
        ax.set_ylabel("top-1 accuracy")
        ax.set_title("accuracy against throughput", loc="left", fontsize=10)
    else:
        ax.set_yscale("log")
        ax.set_ylabel("max abs error of logits vs eager fp32 (log)")
        ax.set_title("parity against throughput: down and right is better (eager fp32 is "
                     "the reference)", loc="left", fontsize=10)
    _save(plt, fig, path)


PLOTS = {
    "throughput.png": plot_throughput,
    "latency_distribution.png": plot_latency_distributions,
    "batch_scaling.png": plot_batch_scaling,
    "parity.png": plot_parity,
}


SERVING_PLOT = "serving.png"


HEATMAP_PLOT = "heatmap.png"
PARETO_PLOT = "pareto.png"


def _host_cells(runs: list) -> dict:
    """host label -> its finished closed-loop cells (merged), across ``runs``."""
    from densebench.results.repeats import merged

    out: dict[str, list] = {}
    for d in runs:
        for c in merged(d.cells):
            if c.ok and c.stats and c.stats.get("throughput") and c.loadgen is None \
                    and c.search is None:
                out.setdefault(c.host.get("node") or c.hostname or "?", []).append(c)
    return out


def _config(c) -> str:
    from densebench.report.tables import axes_text

    return c.variant + (f" [{axes_text(c.axes)}]" if c.axes else "")


def plot_heatmaps(runs: list, path: Path, mode: str) -> None:
    """Per host, throughput by variant (rows) and batch size (columns), the best cell of
    each host outlined and named: which runtime and batch size win on each machine."""
    plt = _plt()
    hosts = _host_cells(runs)
    fig, axes = plt.subplots(1, len(hosts), figsize=(5.5 * len(hosts), 0.5 + 0.45 * max(
        len({_config(c) for c in cells}) for cells in hosts.values()) + 1.5), squeeze=False)
    for ax, (host, cells) in zip(axes[0], hosts.items(), strict=True):
        cells = [c for c in cells if c.mode == mode] or cells
        rows = sorted({_config(c) for c in cells})
        cols = sorted({c.batch_size for c in cells})
        grid = np.full((len(rows), len(cols)), np.nan)
        for c in cells:
            grid[rows.index(_config(c)), cols.index(c.batch_size)] = c.stats["throughput"]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [str(b) for b in cols])
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("batch size")
        ax.grid(False)
        for i in range(len(rows)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    v = grid[i, j]
                    ax.text(j, i, f"{v:.0f}" if v >= 100 else f"{v:.3g}", ha="center", va="center",
                            color="white", fontsize=8)
        bi, bj = np.unravel_index(np.nanargmax(grid), grid.shape)
        ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_title(f"{host}: best {rows[bi]} at batch {cols[bj]}\n"
                     f"({cells[0].host.get('cpu_model')})", fontsize=9)
        fig.colorbar(im, ax=ax, label="img/s")
    fig.suptitle(f"throughput ({mode} mode) per host", fontsize=10)
    _save(plt, fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, throughput) points no other point beats on both (lower
    latency and higher throughput), in order of latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(runs: list, path: Path, mode: str) -> None:
    """Every measured configuration as p50 latency against throughput, one colour per host,
    the Pareto front (nothing both faster and higher-throughput) joined and labelled."""
    plt = _plt()
    hosts = _host_cells(runs)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    pts, labels = [], []
    for (host, cells), color in zip(hosts.items(), plt.cm.tab10.colors * 10, strict=False):
        cells = [c for c in cells if c.mode == mode] or cells
        xs = [c.stats["p50_ms"] for c in cells]
        ys = [c.stats["throughput"] for c in cells]
        best = max(cells, key=lambda c: c.stats["throughput"])
        ax.scatter(xs, ys, color=color, alpha=0.7,
                   label=f"{host}: best {_config(best)} b{best.batch_size}")
        pts += list(zip(xs, ys, strict=True))
        labels += [f"{_config(c)} b{c.batch_size}" + (f" @{host}" if len(hosts) > 1 else "")
                   for c in cells]
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1,
            label="Pareto front")
    for i in front:
        ax.annotate(labels[i], pts[i], fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per batch (ms, log)")
    ax.set_ylabel("throughput (img/s)")
    ax.set_title(f"latency against throughput ({mode} mode), every configuration measured")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def plots_for(runs: list) -> list[str]:
    """The plots these runs have something for."""
    names = []
    if any(_ok(d, m) for d in runs for m in ("model", "e2e")):
        names += list(PLOTS)
    if _serving_points(runs):
        names.append(SERVING_PLOT)
    if any(d.data.get("kind") == "sweep" for d in runs) or len(_host_cells(runs)) > 1:
        names += [HEATMAP_PLOT, PARETO_PLOT]
    return names


def write_report(runs: list, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = _mode(runs)
    written = []
    names = plots_for(runs)
    for name in names:
        fn = {SERVING_PLOT: plot_serving, HEATMAP_PLOT: plot_heatmaps,
              PARETO_PLOT: plot_pareto}.get(name) or PLOTS[name]
        fn(runs, out_dir / name, mode)
        written.append(out_dir / name)
    index = out_dir / "index.html"
    index.write_text(_html(runs, mode, names))
    written.append(index)
    return written


def _html(runs: list, mode: str, names: list[str]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>densebench report"
             "</title><style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;"
             "padding:0 1em}table{border-collapse:collapse;font-size:13px}td,th{border:1px "
             "solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
             "td:first-child{text-align:left}.warn{color:#a60}img{max-width:100%}</style>"
             "</head><body><h1>densebench report</h1>"]
    for d in runs:
        m = d.data.get("model", {})
        env = d.data.get("environment", {})
        parts.append(
            f"<h2>run {e(d.id)}{' (' + e(d.name) + ')' if d.name else ''}</h2>"
            f"<p>{e(str(m.get('name')))} at {e(str(m.get('image_size')))} px on "
            f"{e(str(d.data.get('device')))}, {e(str(d.data.get('threads')))} threads; "
            f"{e(str(env.get('cpu', {}).get('model')))}; torch "
            f"{e(str(env.get('libraries', {}).get('torch')))}; status {e(d.status)}"
            "</p>")
        if m.get("random_weights"):
            parts.append(f"<p class='warn'>Weights: {e(str(m.get('weights_description')))}: "
                         "latencies are real, accuracy would not be.</p>")
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in (
            "variant", "batch", "mode", "p50 ms", "p90 ms", "p99 ms", "img/s",
            "95% CI img/s", "vs eager", "max abs err", "top-1 agree", "status")) + "</tr>")
        for r in summary_rows(d):
            tci = r["throughput_ci"]
            cells = [r["variant"], r["batch_size"], r["mode"], _n(r["p50_ms"]), _n(r["p90_ms"]),
                     _n(r["p99_ms"]), _n(r["throughput"]),
                     f"{tci[0]:.1f}-{tci[1]:.1f}" if tci else "-",
                     f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-",
                     _n(r["parity_max_abs_error"]),
                     f"{r['parity_top1_agreement']:.0%}"
                     if r["parity_top1_agreement"] is not None else "-",
                     _status(r)]
            parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table><p><small>n/s: percentile not supported by the sample (p90 "
                     "needs 64 iterations, p99 662).</small></p>")
    parts.append(f"<h2>plots ({e(mode)} mode)</h2>")
    for name in names:
        parts.append(f"<p><img src='{name}' alt='{name}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _status(r: dict) -> str:
    if r["status"] != "ok":
        return f"failed: {r['error']}"
    lg = r.get("loadgen")
    if lg:
        why = f" ({'; '.join(lg.get('reasons') or [])})" if lg.get("reasons") else ""
        return f"{r['scenario']}: {lg['validity']}{why}"
    if r.get("search"):
        best = r["search"].get("best_qps")
        return f"search: best {best:.4g} QPS" if best else "search: budget not met"
    return "ok"


def _n(v) -> str:
    if v is None:
        return "n/s"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
