"""`densebench export`: build a model artifact into the shared cache."""

from __future__ import annotations

from typing import Annotated

import typer

from densebench.cli.common import out, print_json, status


def export(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (see `densebench models`).")] = "densenet121",
    format: Annotated[str, typer.Option("--format", "-f", help="A registered artifact format: onnx | torchscript | aoti | openvino | checkpoint, or a plugin's.")] = "onnx",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8, where the format supports it.")] = "fp32",
    weights: Annotated[str, typer.Option(help="imagenet | random[:SEED] | PATH to a state_dict or checkpoint.")] = "random",
    num_classes: Annotated[int | None, typer.Option(help="Replace the classifier head with N classes.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Fix the batch size (default: dynamic batch axis).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size in pixels (default: the model's).")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18).")] = None,
    device: Annotated[str, typer.Option(help="Device an aoti package is compiled for: cpu | cuda.")] = "cpu",
    calib_batches: Annotated[int, typer.Option(help="int8: calibration batches (of 4 images).")] = 8,
    calib: Annotated[str, typer.Option("--calib", help="int8: calibration data, synthetic | imagefolder:PATH (part of the artifact key).")] = "synthetic",
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached (also repairs a corrupted entry).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Export a model once into the artifact cache (a second identical export is a cache hit).

    Example: densebench export --model densenet121 --format onnx --precision int8
    """
    from densebench.artifacts import ArtifactCache
    from densebench.exporters import ExportSpec, export_artifact

    spec = ExportSpec(
        model=model, format=format, precision=precision, weights=weights,
        num_classes=num_classes, batch_size=batch_size, image_size=image_size, opset=opset,
        device=device, calib_batches=calib_batches, calib=calib,
    )
    cache = ArtifactCache()
    with status(f"export {model} {format} {precision}", quiet=json_out) as progress:
        art, cached = export_artifact(spec, cache, force=force, progress=progress)
    if json_out:
        print_json({"path": str(art.path), "cached": cached, **art.manifest})
        return
    par = art.manifest.get("parity", {})
    w = art.manifest.get("weights_info", {})
    verb = "cached" if cached else f"exported in {art.manifest.get('export_seconds', 0):.1f} s"
    out.print(f"{verb}: {art.main_file}")
    out.print(
        f"  key {art.key}  {art.fields['format']} {art.fields['precision']}  "
        f"shape {'x'.join(map(str, art.fields['input_shape']))}  "
        f"{art.size_bytes / 1e6:.1f} MB"
    )
    if par:
        out.print(
            f"  vs eager fp32: max abs error {par['max_abs_error']:.3g}, "
            f"top-1 agreement {par['top1_agreement']:.0%} ({par['input']})"
        )
    if w.get("random"):
        out.print(f"  [yellow]weights: {w.get('description')} - not for accuracy[/yellow]")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
