"""`densebench profile`: where the time goes, for every runtime."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import out, print_json


def profile(
    variant: Annotated[str, typer.Option("--variant", "-v", help="The variant to profile.")] = "eager",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size.")] = 1,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")] = "densenet121",
    weights: Annotated[str, typer.Option(help="imagenet | random[:SEED] | PATH.")] = "random",
    num_classes: Annotated[int | None, typer.Option(help="Replace the classifier head with N classes.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (PyTorch and ONNX Runtime).")] = None,
    iters: Annotated[int, typer.Option(help="Profiled iterations.")] = 10,
    warmup: Annotated[int, typer.Option(help="Warm-up iterations before profiling.")] = 3,
    top: Annotated[int, typer.Option(help="Rows of the operator table to show.")] = 25,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Profile in a worker process of its own (default), or in this process.")] = True,
    name: Annotated[str | None, typer.Option(help="A name for the stored run.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the profile summary as JSON.")] = False,
) -> None:
    """Kernel/operator table, traces (Chrome/Perfetto, TensorBoard), time breakdown, FLOPs
    and hints for one variant; stored under runs/<run-id>/profiles/<variant>/.

    Example: densebench profile --variant onnxruntime-int8 --batch-size 16
    """
    from rich.table import Table

    from densebench.cli.progress import Progress
    from densebench.profile import ProfileConfig, run_profile

    cfg = ProfileConfig(variant=variant, batch_size=batch_size, model=model, weights=weights,
                        num_classes=num_classes, image_size=image_size, device=device,
                        threads=threads, iters=iters, warmup=warmup, top=top, name=name,
                        executor="subprocess" if isolate else "inline")
    with Progress(f"profile {variant}") as progress:
        rec, res = run_profile(cfg, progress=progress)
    if json_out:
        print_json({"run": rec.id, "path": str(rec.path / res["path"]), **res})
        return
    t = Table(title=f"{variant}, batch {batch_size}, {res['device']}: top {min(top, len(res['top']))}"
                    f" of {res['operators']} operators over {iters} iterations",
              title_justify="left")
    for col in ("name", "calls", "self CPU ms", "total CPU ms", "self device ms", "share"):
        t.add_column(col, justify="left" if col == "name" else "right",
                     no_wrap=col != "name", max_width=60 if col == "name" else None)
    for r in res["top"]:
        t.add_row(r["name"], str(r["calls"]), f"{r['self_cpu_us'] / 1e3:.2f}",
                  f"{r['total_cpu_us'] / 1e3:.2f}", f"{r['self_device_us'] / 1e3:.2f}",
                  f"{r['share']:.1%}")
    out.print(t)
    b = res["breakdown"]
    out.print(f"per iteration (median): H2D {b['h2d_ms']:.2f} ms, compute {b['compute_ms']:.2f} ms, "
              f"D2H {b['d2h_ms']:.2f} ms, host overhead {b['host_overhead_ms']:.2f} ms "
              f"(end-to-end {b['e2e_ms']:.2f} ms)")
    util = [f"CPU busy {b['cpu_busy_fraction']:.0%} of {rec.data['threads']} thread(s) x wall"]
    if b.get("device_busy_fraction") is not None:
        util.append(f"GPU busy {b['device_busy_fraction']:.0%} of wall, "
                    f"{b['kernels_per_iter']:.0f} kernels/iter")
    out.print("utilisation: " + "; ".join(util))
    line = (f"FLOPs: {res['gflops_per_image']:.3f} GFLOP per image, achieved "
            f"{res['achieved_gflops']:.1f} GFLOP/s")
    peak = res.get("peak")
    if peak and peak.get("gflops"):
        line += (f" = {res['peak_share']:.0%} of an estimated {peak['gflops']:.0f} GFLOP/s peak "
                 f"({peak['cores']} cores x {peak['flops_per_cycle_per_core']} FLOP/cycle x "
                 f"{peak['mhz'] / 1e3:.2f} GHz, {peak['isa']})")
    out.print(line)
    out.print(f"peak memory: {', '.join(f'{k} {v}' for k, v in res['memory'].items())}")
    for h in res["hints"]:
        out.print(f"[yellow]hint: {h}[/yellow]")
    if not res["hints"]:
        out.print("[dim]no hint: the profile shows no launch-bound, layout or placement "
                  "problem[/dim]")
    out.print(f"stored in {rec.path / res['path']} (operators.csv, {res['files']['trace']}"
              + (f"; TensorBoard: tensorboard --logdir {rec.path / res['files']['tensorboard']}"
                 if "tensorboard" in res["files"] else "") + ")")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
