"""`densebench search`: the highest QPS each configuration serves under a latency budget."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import out, print_json


def search(
    latency_budget: Annotated[str, typer.Option("--latency-budget", help="The latency bound: 50ms, 0.1s (a bare number is seconds).")],
    percentile: Annotated[float, typer.Option(help="The percentile held under the budget (0-100).")] = 99.0,
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Variants (repeatable, comma lists allowed; default: every one this machine runs of the quick set).")] = None,
    max_batch: Annotated[list[str] | None, typer.Option("--max-batch", help="The dynamic batcher's largest batch (default 1,4,8).")] = None,
    batch_timeout: Annotated[list[str] | None, typer.Option("--batch-timeout", help="How long the batcher waits to fill a batch (default 0ms,2ms).")] = None,
    instances: Annotated[list[str] | None, typer.Option("--instances", help="Copies of the session serving the queue (default: every split of the cores, 1 x 2 and 2 x 1 on 2).")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads per instance (default: the cores shared out).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")] = "densenet121",
    weights: Annotated[str, typer.Option(help="imagenet | random[:SEED] | PATH.")] = "random",
    num_classes: Annotated[int | None, typer.Option(help="Replace the classifier head with N classes.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    oversubscribe: Annotated[bool, typer.Option("--oversubscribe", help="Allow instances x threads above the cores.")] = False,
    samples: Annotated[int, typer.Option(help="Preprocessed inputs in the sample library.")] = 256,
    data: Annotated[str, typer.Option(help="synthetic | imagefolder:PATH (labelled: top-1 is screened too)")] = "synthetic",
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="With labelled --data: refuse a variant whose top-1 may drop by more (upper end of its 95% interval; 0.01 = 1 point).")] = 0.01,
    verify: Annotated[int, typer.Option(help="Predicted configurations verified with LoadGen on each host.")] = 2,
    verify_all: Annotated[bool, typer.Option("--verify-all", help="Verify them even when predicted below what their host already verified (they cannot be the answer).")] = False,
    target_qps: Annotated[float | None, typer.Option("--target-qps", help="The load to serve: how many replicas each host needs.")] = None,
    price: Annotated[list[str] | None, typer.Option("--price", help="HOST=USD_PER_HOUR (repeatable), or a sweep file with a [prices] table: cost per million images, hosts ranked by it.")] = None,
    precision: Annotated[float, typer.Option(help="Verification stops when the bracket is this tight (0.05 = 5%).")] = 0.05,
    probe_duration: Annotated[str, typer.Option("--probe-duration", help="Minimum duration of each LoadGen probe: 10s.")] = "10s",
    input_: Annotated[str | None, typer.Option("--input", help="Serve the JPEG path: jpeg:PATH, imagefolder:PATH or jpeg:synthetic[:WxH]; the instances decode JPEG bytes, and LoadGen's latency includes it.")] = None,
    decoder: Annotated[str, typer.Option(help="With --input: pil | torchvision | torchvision-cuda.")] = "pil",
    decode_workers: Annotated[int, typer.Option("--decode-workers", help="With --input: decode workers beside the instances; their cores are left out of the instances x threads splits.")] = 0,
    screen_time: Annotated[str, typer.Option("--screen-time", help="Closed-loop time per batch size and split when screening: 0.5s.")] = "0.5s",
    min_queries: Annotated[int | None, typer.Option(help="Queries per probe at least (default: what the percentile needs, 662 for p99).")] = None,
    start_qps: Annotated[float | None, typer.Option(help="First QPS to probe (default: the prediction).")] = None,
    max_probes: Annotated[int, typer.Option("--max-probes", help="LoadGen probes per verified configuration before its answer is confirmed (the confirmation, twice a probe's duration, up to 3 runs, comes after).")] = 8,
    max_time: Annotated[str | None, typer.Option("--max-time", help="Stop the whole search after this long (e.g. 20m) with what it found.")] = None,
    executor: Annotated[str, typer.Option(help="local (each job in its own worker here) | ray (every node of a cluster).")] = "local",
    address: Annotated[str | None, typer.Option(help="ray: the cluster's address, auto or HOST:PORT (default auto).")] = None,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="local: each job in its own subprocess (default).")] = True,
    name: Annotated[str | None, typer.Option(help="A name for the stored run.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be screened and predicted here, run nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """What to deploy to serve Poisson load with the percentile under the budget: every
    candidate screened in short closed loops, its p99 predicted by simulating the batcher,
    the best few verified with LoadGen Server runs; replicas and cost for a target load.

    Example: densebench search -m densenet121 --latency-budget 100ms --target-qps 200
    """
    from densebench.cli.progress import Progress
    from densebench.cli.run import _csv, _ints
    from densebench.cost import parse_prices
    from densebench.durations import duration_ms, optional_seconds, seconds
    from densebench.report.tables import search_table
    from densebench.search import SearchConfig, plan_search, run_search

    if executor not in ("local", "ray"):
        from densebench.errors import ConfigError

        raise ConfigError(f"--executor {executor!r} is unknown: choose local or ray",
                          setting="executor")
    cfg = SearchConfig(
        latency_budget_ms=duration_ms(latency_budget, "latency_budget_ms"),
        percentile=percentile, variants=_csv(variant) or None,
        max_batch=_ints(max_batch, "--max-batch") or [1, 4, 8],
        batch_timeout_ms=[duration_ms(t, "batch_timeout_ms", allow_zero=True)
                          for t in _csv(batch_timeout)] if batch_timeout else None,
        instances=_ints(instances, "--instances") or None, model=model, weights=weights,
        num_classes=num_classes, image_size=image_size, device=device, threads=threads,
        oversubscribe=oversubscribe, samples=samples, data=data,
        max_accuracy_drop=max_accuracy_drop, verify=verify, verify_all=verify_all,
        target_qps=target_qps,
        prices=parse_prices(price or []), precision=precision,
        probe_duration=seconds(probe_duration, "probe_duration"),
        screen_time=seconds(screen_time, "screen_time"), input=input_, decoder=decoder,
        decode_workers=decode_workers,
        min_queries=min_queries, start_qps=start_qps, max_probes=max_probes,
        max_time=optional_seconds(max_time, "max_time"),
        executor="ray" if executor == "ray" else "subprocess" if isolate else "inline",
        address=address, name=name,
    )
    if dry_run:
        plan = plan_search(cfg)
        if json_out:
            print_json(plan)
            return
        out.print(f"device {plan['device']}; variants: {', '.join(plan['variants'])}")
        for sk in plan["skipped"]:
            out.print(f"  skipped {sk['variant']}: {sk['reason']}")
        out.print("splits (instances x threads): "
                  + ", ".join(f"{s['instances']} x {s['threads']}" for s in plan["splits"]))
        out.print("batcher: " + ", ".join(
            f"max batch {s['max_batch']}" + (f" / {s['batch_timeout_ms']:g} ms"
                                              if s["max_batch"] > 1 else "")
            for s in plan["serving"]))
        out.print(f"screened at batch {', '.join(map(str, plan['batch_sizes_screened']))}; "
                  f"{plan['configurations']} configurations predicted, the best "
                  f"{plan['verified_per_host']} per host verified with LoadGen")
        return
    with Progress("search") as progress:
        rec = run_search(cfg, progress=progress)
    answer = rec.data.get("answer")
    if json_out:
        print_json({"run": rec.id, "path": str(rec.path), "best": rec.data.get("best"),
                    "answer": answer, "not_admitted": rec.data.get("not_admitted"),
                    "predictions": [{k: v for k, v in p.items() if k != "service_ms"}
                                    for p in rec.data.get("predictions", [])],
                    "screened": [{"variant": c.variant, "host": c.host, "status": c.status,
                                  "error": c.error, "parity": c.parity,
                                  "accuracy": c.accuracy, "search": c.search}
                                 for c in rec.cells if c.axes.get("search") == "screen"],
                    "combinations": [{"variant": c.variant, "max_batch": c.batch_size,
                                      "instances": c.axes.get("instances"),
                                      "threads": c.threads,
                                      "batch_timeout_ms": c.axes.get("batch_timeout_ms"),
                                      "host": c.host, "status": c.status, "error": c.error,
                                      "search": c.search}
                                     for c in rec.cells if c.axes.get("search") == "verify"]})
        return
    out.print(search_table(rec))
    out.print(f"stored in {rec.path} (predictions.jsonl; every probe: probes.jsonl; "
              "LoadGen logs: loadgen/)")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
