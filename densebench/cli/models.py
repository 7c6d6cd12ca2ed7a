"""`densebench models`: what the registry knows."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import out, print_json


def models(
    pattern: Annotated[str, typer.Argument(help="Glob over names, e.g. 'densenet*'.")] = "*",
    all_: Annotated[bool, typer.Option("--all", help="Include every torchvision classification model.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List registered models with parameter count and GMACs at 224 px."""
    from rich.table import Table

    from densebench.models import get_entry, list_models, model_stats

    rows = []
    for name in list_models(pattern, include_torchvision=all_):
        try:
            st = model_stats(name, 224)
            params, gmacs = st.params, round(st.gmacs, 3)
        except Exception:  # a torchvision model that cannot take 224 px on meta
            params, gmacs = None, None
        e = get_entry(name)
        rows.append({
            "name": name, "params_m": None if params is None else round(params / 1e6, 2),
            "gmacs_224": gmacs, "default_image_size": e.default_image_size,
            "imagenet_weights": e.has_imagenet_weights, "description": e.description,
        })
    if json_out:
        print_json(rows)
        return
    t = Table(title="models (GMACs: multiply-accumulates per image at 224 px)")
    for col in ("name", "params (M)", "GMACs@224", "default px", "imagenet", "description"):
        t.add_column(col, justify="right" if col[0] in "pGd" else "left", no_wrap=col == "name")
    for r in rows:
        t.add_row(r["name"], f"{r['params_m']}", f"{r['gmacs_224']}",
                  str(r["default_image_size"]), "yes" if r["imagenet_weights"] else "no",
                  r["description"])
    out.print(t)
    if not all_:
        out.print("Any torchvision classification model works by name: `densebench models --all`.")


def register(app: typer.Typer) -> None:
    app.command("models")(models)
