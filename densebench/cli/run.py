"""`densebench run`: benchmark variants at batch sizes, with live progress and a summary."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from densebench.cli.common import out, print_json
from densebench.errors import ConfigError


def _csv(values: list[str] | None) -> list[str]:
    out_: list[str] = []
    for v in values or []:
        out_ += [p.strip() for p in v.split(",") if p.strip()]
    return out_


def _ints(values: list[str] | None, option: str) -> list[int]:
    try:
        return [int(v) for v in _csv(values)]
    except ValueError:
        raise ConfigError(f"{option} takes integers, as in {option} 1,16,64") from None


@contextlib.contextmanager
def settings_as_flags(assigned: dict):
    """An error about a setting given with --set names it as --set NAME, not as a flag."""
    try:
        yield
    except ConfigError as e:
        if e.setting in assigned:
            raise ConfigError(f"--set {e}") from None
        raise


def _assignments(values: list[str] | None) -> dict:
    """``--set NAME=VALUE`` options as {NAME: "VALUE"} (the scenario reads the value)."""
    out_: dict = {}
    for v in values or []:
        name, eq, value = v.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"--set {v!r}: write NAME=VALUE, as in --set target_qps=20")
        out_[name.strip()] = value.strip()
    return out_


def run(
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Variant (repeatable, comma lists allowed), 'all', or 'quick' (make bench's set: each runtime at fp32 and its fastest reduced precision, all from the artifact cache). See `densebench variants`.")] = None,
    batch_size: Annotated[list[str] | None, typer.Option("--batch-size", "-b", help="Batch sizes, e.g. 1,16,64.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (see `densebench models`).")] = "densenet121",
    weights: Annotated[str, typer.Option(help="imagenet | random[:SEED] | PATH.")] = "random",
    num_classes: Annotated[int | None, typer.Option(help="Replace the classifier head with N classes.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size (default: the model's).")] = None,
    calib: Annotated[str | None, typer.Option("--calib", help="int8 calibration data: synthetic (default) | imagefolder:PATH. Part of the artifact key.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads for PyTorch and ONNX Runtime alike (default: PyTorch's).")] = None,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="model (compute only), e2e (host tensor in, host logits out) and/or e2e-jpeg (JPEG files in, top-5 out, every stage timed). Default: model and e2e.")] = None,
    input_: Annotated[str | None, typer.Option("--input", help="e2e-jpeg: jpeg:PATH (a folder of JPEG files; CLASS/IMAGE.jpg folders are labels), imagefolder:PATH, or jpeg:synthetic[:WxH] (64 seeded JPEGs, 500x375 by default, kept in the artifact cache). Default: jpeg:synthetic.")] = None,
    decoder: Annotated[str, typer.Option(help="e2e-jpeg: pil | torchvision | torchvision-cuda.")] = "pil",
    decode_workers: Annotated[list[str] | None, typer.Option("--decode-workers", help="e2e-jpeg: decode workers beside the model's threads, one cell each, e.g. 0,1,2 (0: decode each batch before it runs).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="e2e-jpeg: an image that cannot be decoded is an error (default: counted, reported, skipped).")] = False,
    compile_mode: Annotated[list[str] | None, typer.Option("--compile-mode", help="torch.compile modes: default,reduce-overhead,max-autotune.")] = None,
    warmup: Annotated[str, typer.Option(help="Warm-up per cell: a count (3) or seconds (2s).")] = "3",
    min_iters: Annotated[int, typer.Option(help="Stop rule: at least this many timed iterations...")] = 10,
    min_time: Annotated[str, typer.Option(help="...and at least this long: seconds (3) or with a unit (500ms).")] = "3",
    iters: Annotated[int | None, typer.Option(help="Exactly N timed iterations (overrides the stop rule).")] = None,
    max_time: Annotated[str | None, typer.Option(help="Cap on one cell's timed duration: seconds or with a unit (2m).")] = None,
    repeats: Annotated[int | None, typer.Option(help="Worker processes per cell, rounds interleaved across variants; intervals include the spread between them (default 3; LoadGen scenarios 1).")] = None,
    timeout: Annotated[str, typer.Option(help="How long before a variant's worker is killed and recorded as failed: seconds or with a unit (30m).")] = "1800",
    scenario: Annotated[str, typer.Option(help="closed-loop (fixed batches back to back), or LoadGen's single-stream | multi-stream | server | offline.")] = "closed-loop",
    max_batch: Annotated[list[str] | None, typer.Option("--max-batch", help="LoadGen: the dynamic batcher's largest batch (one cell each), e.g. 1,8.")] = None,
    batch_timeout: Annotated[str | None, typer.Option("--batch-timeout", help="LoadGen: how long the batcher waits to fill a batch (default 2ms).")] = None,
    instances: Annotated[int | None, typer.Option(help="LoadGen: copies of the session serving the queue (default 1); --threads is per instance.")] = None,
    oversubscribe: Annotated[bool, typer.Option("--oversubscribe", help="LoadGen: allow instances x threads above the cores.")] = False,
    samples: Annotated[int | None, typer.Option(help="LoadGen: preprocessed inputs in the sample library (default 256).")] = None,
    data: Annotated[str | None, typer.Option(help="LoadGen: synthetic | imagefolder:PATH (default synthetic).")] = None,
    target_qps: Annotated[float | None, typer.Option("--target-qps", help="server: queries per second offered (Poisson arrivals).")] = None,
    latency_budget: Annotated[str | None, typer.Option("--latency-budget", help="server: the latency bound: seconds, or with a unit (default 100ms).")] = None,
    percentile: Annotated[float | None, typer.Option(help="server: the percentile held under the budget (default 99).")] = None,
    samples_per_query: Annotated[int | None, typer.Option("--samples-per-query", help="multi-stream: samples per query (default 8).")] = None,
    expected_qps: Annotated[float | None, typer.Option("--expected-qps", help="offline: the QPS LoadGen sizes its one query for (default: measured).")] = None,
    duration: Annotated[str | None, typer.Option(help="LoadGen: minimum duration (default 10s; a short run, labelled so).")] = None,
    min_queries: Annotated[int | None, typer.Option("--min-queries", help="LoadGen: minimum query count.")] = None,
    official: Annotated[bool, typer.Option("--official", help="LoadGen: MLPerf's 10-minute minimum duration.")] = False,
    accuracy: Annotated[bool, typer.Option("--accuracy", help="LoadGen: accuracy mode (parity of every response with fp32, top-1 with labels).")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A setting of the scenario's own, NAME=VALUE (repeatable): any scenario's, a plugin's too (see its Settings).")] = None,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Each variant in its own subprocess (default), or all in this process.")] = True,
    executor: Annotated[str | None, typer.Option(help="Where each variant runs: subprocess | inline (overrides --isolate).")] = None,
    name: Annotated[str | None, typer.Option(help="A name for the run (usable with show/compare).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Benchmark variants at batch sizes; store the run under runs/<run-id>/.

    Example: densebench run --variant eager --variant onnxruntime-int8 --batch-size 1,16

    Serving: densebench run --scenario server --target-qps 20 --latency-budget 50ms -v onnxruntime --max-batch 4
    """
    from densebench.cli.progress import Progress
    from densebench.durations import duration_ms, optional_seconds, seconds
    from densebench.report.tables import summary_rows, summary_table
    from densebench.run import RunConfig, run_benchmark

    # the LoadGen scenarios' settings have flags of their own; --set gives any scenario's
    flags = {
        "max_batch": _ints(max_batch, "--max-batch") or None,
        "batch_timeout_ms": duration_ms(batch_timeout, "batch_timeout_ms", allow_zero=True)
        if batch_timeout is not None else None,
        "instances": instances, "oversubscribe": oversubscribe or None, "samples": samples,
        "data": data, "target_qps": target_qps,
        "latency_budget_ms": duration_ms(latency_budget, "latency_budget_ms")
        if latency_budget is not None else None,
        "percentile": percentile, "samples_per_query": samples_per_query,
        "expected_qps": expected_qps, "duration": optional_seconds(duration, "duration"),
        "min_queries": min_queries, "official": official or None,
        "accuracy": accuracy or None}
    assigned = _assignments(set_)
    settings = {k: v for k, v in flags.items() if v is not None} | assigned
    with settings_as_flags(assigned):
        cfg = RunConfig(
            model=model, weights=weights, num_classes=num_classes, image_size=image_size,
            calib=calib, variants=_csv(variant) or ["eager"],
            compile_modes=_csv(compile_mode) or ["default"],
            batch_sizes=_ints(batch_size, "--batch-size") or None,
            modes=_csv(mode) or None, input=input_, decoder=decoder,
            decode_workers=_ints(decode_workers, "--decode-workers") or None, strict=strict,
            device=device, threads=threads, warmup=warmup,
            min_iters=min_iters, min_time=seconds(min_time, "min_time", allow_zero=True),
            iters=iters, max_time=optional_seconds(max_time, "max_time"),
            timeout=seconds(timeout, "timeout"), scenario=scenario, name=name,
            settings=settings, repeats=repeats,
            executor=executor or ("subprocess" if isolate else "inline"))
    with Progress("run", stop=cfg.stop_rule()) as progress:
        rec = run_benchmark(cfg, progress=progress)
    if json_out:
        print_json({"run": rec.id, "path": str(rec.path), "status": rec.data["status"],
                    "device": rec.data["device"], "model": rec.data["model"],
                    "skipped": rec.data["skipped"], "warnings": rec.data.get("warnings", []),
                    "cells": summary_rows(rec)})
        _exit_if_nothing_worked(rec)
        return
    out.print(summary_table(rec))
    out.print(f"stored in {rec.path}")
    _exit_if_nothing_worked(rec)


def _exit_if_nothing_worked(rec) -> None:
    """A run whose every cell failed is a failure (some failed among some that worked is
    a result)."""
    if rec.cells and not any(c.ok for c in rec.cells):
        from densebench.errors import DensebenchError

        raise DensebenchError(f"every cell of run {rec.id} failed (first: "
                              f"{rec.cells[0].error}); the run is stored in {rec.path}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
