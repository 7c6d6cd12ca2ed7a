"""Exporters: one module per format, each with ``export(...)`` and ``load(...)``.

``export_artifact`` is the one entry point: it resolves the model and weights, computes
the cache key, builds the artifact on a miss (under the cache's lock, atomically) and
records its max abs error against eager fp32 on a fixed input in the manifest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from densebench.artifacts import Artifact, ArtifactCache, ExportSpec, Progress, key_fields
from densebench.errors import ExportError
from densebench.models import LoadedModel, check_image_size, load_model
from densebench.parity import SEED as PARITY_SEED
from densebench.parity import fixed_input, parity_stats


def exporter(fmt: str):
    return importlib.import_module(f"densebench.exporters.{fmt}")


def batch_axis(spec: ExportSpec) -> tuple | None:
    """torch.export's dynamic_shapes for a dynamic batch (None: a fixed batch), given by
    position: a model's forward may call its input anything (nn.Sequential's: input)."""
    return ({0: torch.export.Dim("batch", min=1, max=4096)},) if spec.dynamic else None


def resolve(spec: ExportSpec) -> tuple[LoadedModel, int, dict]:
    loaded = load_model(spec.model, spec.weights, spec.num_classes)
    image_size = spec.image_size or loaded.default_image_size
    check_image_size(spec.model, image_size, spec.num_classes)
    fields = key_fields(spec, loaded.weights_id, image_size, loaded.num_classes)
    return loaded, image_size, fields


def export_artifact(
    spec: ExportSpec, cache: ArtifactCache | None = None, *, force: bool = False,
    progress: Progress | None = None, loaded: LoadedModel | None = None,
) -> tuple[Artifact, bool]:
    """The artifact for ``spec``, from the cache or exported now: ``(artifact, cached)``."""
    cache = cache or ArtifactCache()
    if progress:
        progress("loading model")
    if loaded is None:
        loaded, image_size, fields = resolve(spec)
    else:
        image_size = spec.image_size or loaded.default_image_size
        check_image_size(spec.model, image_size, spec.num_classes)
        fields = key_fields(spec, loaded.weights_id, image_size, loaded.num_classes)
    mod = exporter(spec.format)

    def build(tmp: Path) -> dict:
        batch = spec.batch_size or 2
        example = fixed_input(batch, image_size)
        if progress:
            progress(f"exporting {spec.format} {spec.precision}")
        try:
            main, extra = mod.export(loaded, spec, tmp, example, cache=cache, progress=progress)
        except (ExportError, KeyboardInterrupt):
            raise
        except Exception as e:  # an exporter's own failure: say which and why, in one line
            msg = _reason(e)
            raise ExportError(
                f"{spec.format} {spec.precision} export of {spec.model} failed: {msg}"
            ) from e
        if progress:
            progress("checking the artifact against eager fp32")
        device = spec.device if spec.format == "aoti" else "cpu"
        run = mod.load(tmp / main, device, fields)
        with torch.no_grad():
            ref = loaded.module(example)
            out = run(example.to(device))
        parity = parity_stats(out, ref)
        parity.update({
            "input": f"randn(seed={PARITY_SEED}) {list(example.shape)}", "device": device,
            "reference": "eager fp32",
        })
        return {
            "main": main,
            "parity": parity,
            "weights_info": {
                "spec": loaded.weights.label, "random": loaded.random_weights,
                "head_replaced": loaded.head_replaced, "description": loaded.describe_weights(),
            },
            **extra,
        }

    return cache.build(fields, build, force=force, progress=progress)


def _reason(e: BaseException) -> str:
    """The first line of what went wrong at the bottom of ``e``'s chain (torch's ONNX
    exporter wraps the model's own error in a banner of next steps), without colours."""
    import re

    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load_artifact(
    artifact: Artifact, device: str = "cpu"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``fn(fp32 tensor on device) -> logits tensor`` for a verified artifact."""
    artifact.verify()
    artifact.touch()
    return exporter(artifact.fields["format"]).load(artifact.main_file, device, artifact.fields)
