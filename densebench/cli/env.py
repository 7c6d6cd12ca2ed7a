"""`densebench env`: the environment fingerprint every result is stamped with."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import out, print_json


def env(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show this machine's fingerprint: CPU and flags, GPUs, libraries, threads, precision settings."""
    from densebench.environment import fingerprint

    fp = fingerprint()
    if json_out:
        print_json(fp)
        return
    cpu = fp["cpu"]
    ident = (f", family {cpu['family']} model {cpu['model_number']}"
             if cpu.get("family") is not None else "")
    out.print(f"[bold]CPU[/bold]   {cpu['model']} ({cpu['arch']}{ident}), {cpu['physical_cores'] or '?'} physical / "
              f"{cpu['logical_cores']} logical cores, {cpu['memory_gb']} GiB")
    out.print(f"      flags: {' '.join(cpu['flags']) or '-'}")
    if fp["gpus"]:
        for g in fp["gpus"]:
            out.print(f"[bold]GPU {g['index']}[/bold] {g['name']} (sm {g['capability']}, "
                      f"{g['memory_gb']} GiB, driver {g['driver']})")
    else:
        out.print("[bold]GPU[/bold]   none visible to PyTorch")
    out.print("[bold]libs[/bold]  " + ", ".join(f"{k} {v}" for k, v in fp["libraries"].items() if v))
    out.print("[bold]set[/bold]   " + ", ".join(f"{k}={v}" for k, v in fp["settings"].items()
                                                   if k != "env"))
    out.print(f"[bold]git[/bold]   {fp['git_commit'] or '-'}")


def register(app: typer.Typer) -> None:
    app.command("env")(env)
