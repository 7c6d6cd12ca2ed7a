"""`densebench search`: the highest QPS each configuration serves under a latency budget."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import out, print_json


def search(
    latency_budget: Annotated[str, typer.Option("--latency-budget", help="The latency bound: 50ms, 0.1s (a bare number is seconds).")],
    percentile: Annotated[float, typer.Option(help="The percentile held under the budget (0-100).")] = 99.0,
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Variants (repeatable, comma lists allowed).")] = None,
    max_batch: Annotated[list[str] | None, typer.Option("--max-batch", help="The dynamic batcher's largest batch, e.g. 1,4,8,16.")] = None,
    instances: Annotated[list[str] | None, typer.Option("--instances", help="Copies of the session serving the queue, e.g. 1,2.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")] = "densenet121",
    weights: Annotated[str, typer.Option(help="imagenet | random[:SEED] | PATH.")] = "random",
    num_classes: Annotated[int | None, typer.Option(help="Replace the classifier head with N classes.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads per instance (default: the cores shared out).")] = None,
    oversubscribe: Annotated[bool, typer.Option("--oversubscribe", help="Allow instances x threads above the cores.")] = False,
    batch_timeout: Annotated[str, typer.Option("--batch-timeout", help="How long the batcher waits to fill a batch: 2ms.")] = "2ms",
    samples: Annotated[int, typer.Option(help="Preprocessed inputs in the sample library.")] = 256,
    data: Annotated[str, typer.Option(help="synthetic | imagefolder:PATH")] = "synthetic",
    precision: Annotated[float, typer.Option(help="Stop when the bracket is this tight (0.05 = 5%).")] = 0.05,
    probe_duration: Annotated[str, typer.Option("--probe-duration", help="Minimum duration of each probe: 10s.")] = "10s",
    min_queries: Annotated[int | None, typer.Option(help="Queries per probe at least (default: what the percentile needs, 662 for p99).")] = None,
    start_qps: Annotated[float | None, typer.Option(help="First QPS to probe (default: half the predicted capacity).")] = None,
    max_time: Annotated[str | None, typer.Option("--max-time", help="Stop the whole search after this long (e.g. 20m) with what it found.")] = None,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Each combination in its own subprocess (default).")] = True,
    name: Annotated[str | None, typer.Option(help="A name for the stored run.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Highest LoadGen Server QPS with the percentile under the budget, per variant, max batch
    and instance count; every probe stored; the best printed as a command.

    Example: densebench search --latency-budget 50ms -v eager,onnxruntime --max-batch 1,4,8
    """
    from densebench.cli.progress import Progress
    from densebench.cli.run import _csv, _ints
    from densebench.durations import duration_ms, optional_seconds, seconds
    from densebench.report.tables import search_table
    from densebench.search import SearchConfig, run_search

    cfg = SearchConfig(
        latency_budget_ms=duration_ms(latency_budget, "latency_budget_ms"),
        percentile=percentile, variants=_csv(variant) or ["eager"],
        max_batch=_ints(max_batch, "--max-batch") or [1],
        instances=_ints(instances, "--instances") or [1], model=model, weights=weights,
        num_classes=num_classes, image_size=image_size, device=device, threads=threads,
        oversubscribe=oversubscribe,
        batch_timeout_ms=duration_ms(batch_timeout, "batch_timeout_ms", allow_zero=True),
        samples=samples, data=data, precision=precision,
        probe_duration=seconds(probe_duration, "probe_duration"),
        min_queries=min_queries, start_qps=start_qps,
        max_time=optional_seconds(max_time, "max_time"),
        executor="subprocess" if isolate else "inline", name=name,
    )
    with Progress("search") as progress:
        rec = run_search(cfg, progress=progress)
    best = rec.data.get("best")
    if json_out:
        print_json({"run": rec.id, "path": str(rec.path), "best": best,
                    "combinations": [{"variant": c.variant, "max_batch": c.batch_size,
                                      "instances": c.scenario_settings.get("instances"),
                                      "status": c.status, "error": c.error,
                                      "search": c.search} for c in rec.cells]})
        return
    out.print(search_table(rec))
    out.print(f"stored in {rec.path} (every probe: probes.jsonl; LoadGen logs: loadgen/)")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
