"""`densebench artifacts`: list, remove and verify cache entries."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import err, out, print_json
from densebench.errors import ConfigError, CorruptArtifactError

artifacts_app = typer.Typer(help="List, remove and verify entries of the artifact cache.",
                            invoke_without_command=True)


@artifacts_app.callback()
def list_artifacts(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List cache entries (model, format, precision, size, created, last used)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from densebench.artifacts import ArtifactCache, artifact_row

    cache = ArtifactCache()
    rows = [artifact_row(a) for a in cache.entries()]
    if json_out:
        print_json(rows)
        return
    if not rows:
        out.print(f"no artifacts in {cache.root}")
        return
    t = Table(title=f"artifacts in {cache.root}")
    for col in ("key", "model", "format", "prec", "shape", "weights", "MB", "created",
                "last used"):
        t.add_column(col, justify="right" if col == "MB" else "left",
                     no_wrap=col in ("key", "model", "format", "prec"))
    for r in rows:
        t.add_row(r["key"] + (" [red](corrupt)[/red]" if r["corrupt"] else ""), r["model"],
                  r["format"], r["precision"], r["shape"].replace("batch", "N"),
                  str(r["weights"]).split(":")[0] + ":" + str(r["weights"]).split(":")[-1][:8],
                  f"{r['size_mb']:.1f}", _short(r["created"]), _short(r["last_used"]))
    out.print(t)


def _short(ts: str | None) -> str:
    return (ts or "-")[5:16].replace("T", " ")


@artifacts_app.command("rm")
def rm(
    keys: Annotated[list[str] | None, typer.Argument(help="Keys (or unique prefixes) to remove.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every entry, and the kept eager logits.")] = False,
) -> None:
    """Remove entries by key, or all of them (with the eager fp32 logits kept for parity)."""
    from densebench.artifacts import ArtifactCache

    cache = ArtifactCache()
    if not keys and not all_:
        raise ConfigError("name the artifacts to remove (see `densebench artifacts`) or pass --all")
    targets = cache.entries() if all_ else [cache.find(k) for k in keys or []]
    for a in targets:
        cache.remove(a)
        out.print(f"removed {a.path.name}")
    references = cache.remove_references() if all_ else 0
    if references:
        out.print(f"removed {references} kept reference logits")
    if not targets and not references:
        out.print("nothing to remove")


@artifacts_app.command("verify")
def verify() -> None:
    """Check every entry's files against its manifest's checksums (exit 1 if any fails)."""
    from densebench.artifacts import ArtifactCache

    bad = 0
    entries = ArtifactCache().entries()
    for a in entries:
        try:
            if a.manifest.get("corrupt"):
                raise CorruptArtifactError(str(a.manifest["corrupt"]))
            a.verify()
            out.print(f"ok       {a.path.name}")
        except CorruptArtifactError as e:
            bad += 1
            err.print(f"corrupt  {a.path.name}: {e}")
    out.print(f"{len(entries) - bad} ok, {bad} corrupt")
    if bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(artifacts_app, name="artifacts")
