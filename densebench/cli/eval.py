"""`densebench eval`: accuracy and parity, honestly labelled."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench import parity
from densebench.cli.common import err, out, print_json


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


def eval_cmd(
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Variant (repeatable, comma lists allowed), 'all' or 'quick'.")] = None,
    data: Annotated[str, typer.Option("--data", help="synthetic | imagefolder:PATH | cifar10:PATH")] = "synthetic",
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")] = "densenet121",
    weights: Annotated[str, typer.Option(help="imagenet | random[:SEED] | PATH.")] = "random",
    num_classes: Annotated[int | None, typer.Option(help="Classifier classes (must match the data's).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Model input size (CIFAR's 32 px are upscaled to it; default 224).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")] = 32,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most N images (spread over the dataset).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (PyTorch and ONNX Runtime).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="An unreadable image is an error (default: counted and reported).")] = False,
    download: Annotated[bool, typer.Option("--download", help="cifar10: download the batches if missing.")] = False,
    split: Annotated[str, typer.Option(help="cifar10: test | train.")] = "test",
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Each variant in its own worker process (default: a crash fails that variant only), or all in this process.")] = True,
    name: Annotated[str | None, typer.Option(help="A name for the stored run.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Top-1/top-5 accuracy (Wilson 95% intervals) and parity with eager fp32 per variant.

    Example: densebench eval -v eager -v onnxruntime-int8 --data imagefolder:val --weights imagenet
    """
    from rich.table import Table

    from densebench.cli.progress import Progress
    from densebench.cli.run import _csv
    from densebench.eval import EvalConfig, run_eval

    cfg = EvalConfig(variants=_csv(variant) or ["eager"], data=data, model=model,
                     weights=weights, num_classes=num_classes, image_size=image_size,
                     batch_size=batch_size, limit=limit, device=device, threads=threads,
                     strict=strict, download=download, split=split, name=name,
                     executor="subprocess" if isolate else "inline")
    with Progress("eval") as progress:
        rec = run_eval(cfg, progress=progress)
    d = rec.data
    if json_out:
        print_json({"run": rec.id, "path": str(rec.path), "data": d["data"],
                    "model": d["model"], "skipped": d["skipped"],
                    "cells": [{"variant": c.variant, "status": c.status, "error": c.error,
                               "accuracy": c.accuracy, "parity": c.parity} for c in rec.cells]})
        return
    info = d["data"]
    t = Table(title=f"{d['model']['name']} on {info['source']}: {info['images']} images, "
                    f"{d['model']['image_size']} px, {d['device']} - run {rec.id}",
              title_justify="left")
    for col in ("variant", "top-1 [95% CI]", "top-5 [95% CI]", "top-1 agree vs fp32",
                "max|err|", "min cos", "status"):
        t.add_column(col, no_wrap=True)
    for c in rec.cells:
        acc, par = c.accuracy, c.parity or {}
        if not c.ok:
            t.add_row(c.variant, "", "", "", "", "", f"[red]failed: {c.error}[/red]")
            continue
        if acc is None:
            a1 = a5 = "- (no labels)"
        elif not acc["meaningful"]:
            a1 = a5 = f"n/m ({acc['not_meaningful_because']})"
        else:
            a1 = f"{_pct(acc['top1'])} [{_pct(acc['top1_ci'][0])}-{_pct(acc['top1_ci'][1])}]"
            a5 = f"{_pct(acc['top5'])} [{_pct(acc['top5_ci'][0])}-{_pct(acc['top5_ci'][1])}]"
        t.add_row(c.variant, a1, a5, _pct(par.get("top1_agreement")),
                  f"{par.get('max_abs_error', 0):.2g}",
                  f"{par.get('cosine_similarity_min', 0):.5f}", "ok")
    out.print(t)
    for c in rec.cells:
        if parity.within(c.precision, c.parity) is False:
            out.print(f"[red]{c.variant}: logits beyond the {c.precision or 'fp32'} threshold "
                      f"({parity.threshold(c.precision):g} of the largest logit)[/red]")
    if info["unreadable"]:
        err.print(f"[yellow]{info['unreadable']} unreadable image(s) skipped, e.g. "
                  f"{', '.join(info['unreadable_examples'][:3])} (--strict makes this an "
                  "error)[/yellow]")
    for note in info.get("notes", []):
        out.print(f"[dim]note: {note}[/dim]")
    if d["model"]["random_weights"]:
        out.print(f"[yellow]Weights: {d['model']['weights_description']}: accuracy is not "
                  "meaningful; parity still is.[/yellow]")
    for s in d.get("skipped", []):
        out.print(f"[dim]skipped {s['variant']}: {s['reason']}[/dim]")
    out.print(f"stored in {rec.path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
