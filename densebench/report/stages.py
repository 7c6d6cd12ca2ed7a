"""Where an e2e-jpeg cell's time goes: each stage's share of the work per batch, the time an
image waits, its latency, and the bottleneck with what to change (``Cell.pipeline``)."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from densebench.imaging.pipeline import STAGES, bottleneck_line

SHORT = {"preprocess": "prep", "postprocess": "post"}


def _ms(v) -> str:
    if v is None:
        return "n/s"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def stages_table(rows: list[dict]) -> Table:
    """One row per e2e-jpeg cell: each working stage's share (queue: ms an image waits,
    p50), the latency per image (submitted to top-5)."""
    decoders = sorted({r["pipeline"]["decoder"] for r in rows})
    t = Table(title="where the time goes, JPEG to top-5 (share of the work per batch; queue: "
              f"ms an image waits, p50) - {', '.join(decoders)} decoder",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    hosts = {r["host_key"] for r in rows}
    cols = ["variant", "batch", "workers", *[SHORT.get(s, s) for s in STAGES],
            "lat p50", "lat p99"]
    for c in cols:
        t.add_column(c, justify="left" if c == "variant" else "right", no_wrap=True)
    for r in rows:
        p = r["pipeline"]
        name = r["variant"] + (f" @{r['node'] or r['host']}" if len(hosts) > 1 else "")
        if len(decoders) > 1:
            name += f" [{p['decoder']}]"
        neck = p["bottleneck"]["stage"]
        cells = []
        for s in STAGES:
            st = p["stages"][s]
            text = _ms(st["p50_ms"] if st["p50_ms"] is not None else st["mean_ms"]) \
                if s == "queue" else f"{st['share']:.0%}"
            cells.append(Text(text, style="bold yellow" if s == neck else ""))
        t.add_row(name, str(r["batch_size"]), str(p["decode_workers"]), *cells,
                  _ms(p["latency"]["p50_ms"]), _ms(p["latency"]["p99_ms"]))
    return t


def stage_notes(rows: list[dict]) -> list[Text]:
    """The bottleneck of each e2e-jpeg cell, what to try, and what could not be decoded."""
    notes = []
    for r in rows:
        p = r["pipeline"]
        notes.append(Text(bottleneck_line(f"{r['variant']} batch {r['batch_size']}", p),
                          style="bold"))
        bad = p.get("unreadable") or {}
        if bad.get("count"):
            notes.append(Text(f"{r['variant']} batch {r['batch_size']}: {bad['count']} "
                              f"image(s) could not be decoded and were skipped (first: "
                              f"{bad['examples'][0]}); --strict makes this an error",
                              style="yellow"))
    dec = next((r["pipeline"].get("decoder_parity") for r in rows
                if r["pipeline"].get("decoder_parity")), None)
    if dec is not None:
        d = rows[0]["pipeline"]["decoder"]
        notes.append(Text(
            f"decoder {d} against the tensor path (Pillow and the same transforms): inputs "
            f"differ by at most {dec['max_abs_input_difference']:.3g}, fp32 logits by "
            f"{dec['max_abs_error']:.3g} (top-1 agrees on {dec['top1_agreement']:.0%} of "
            f"{dec['images']} images); max|err| above is each variant against fp32 on this "
            "decoder's inputs", style="dim"))
    return notes
