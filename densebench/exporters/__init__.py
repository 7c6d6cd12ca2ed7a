"""Artifact formats as registered exporters, and the one entry point that builds them.

An exporter is a class with a class-level ``FORMAT``, registered by ``@register_exporter``.
It owns everything about its format that the cache must not know:

- ``PRECISIONS``: the precisions it exports; ``DEVICE_BOUND``: its artifact runs only on the
  device type it was built for (a compiled package), so that type is part of the key;
- ``check(spec)``: options it refuses (``--opset`` where it takes none);
- ``versions(spec)``: the libraries whose versions change its artifact (torch's and
  torchvision's are in every key);
- ``key(spec)``: what else it adds to the key (ONNX's opset, an int8 export's calibration
  and method, ``calibration.calibration_key``);
- ``export(loaded, spec, out, example, cache=..., progress=...)``: write the files into
  ``out``, return the main file's name and the manifest's notes;
- ``load(path, device, fields)``: a callable ``fp32 tensor -> logits`` (the parity check's).

Every module of this package is a format, imported on first use of the registry
(``densebench.plugins``); plugins register the same way. ``export_artifact`` resolves the
model and weights, computes the key, builds the artifact on a miss (under the cache's lock,
atomically) and records its max abs error against eager fp32 on a fixed input. The cache
(``artifacts.py``) hashes the fields it is given and knows no format by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from densebench.artifacts import Artifact, ArtifactCache, Progress
from densebench.devices import resolve_device
from densebench.errors import ConfigError, ExportError
from densebench.models import LoadedModel, check_image_size, load_model
from densebench.parity import SEED as PARITY_SEED
from densebench.parity import fixed_input, parity_stats

CALIB_BATCH_SIZE = 4  # images per calibration batch of an int8 export


@dataclass(frozen=True)
class ExportSpec:
    """What to export. Validated on creation (by its format's exporter);
    ``image_size=None`` means the model's default."""

    model: str
    format: str = "onnx"
    precision: str = "fp32"
    weights: str = "random"
    num_classes: int | None = None
    batch_size: int | None = None  # None: dynamic batch axis
    image_size: int | None = None
    opset: int | None = None
    device: str = "cpu"
    calib_batches: int = 8
    calib_batch_size: int = CALIB_BATCH_SIZE
    calib_seed: int = 0
    calib: str = "synthetic"  # int8: calibration data (calibration.Calibration.parse)

    def __post_init__(self):
        exp = get_exporter(self.format)
        if self.precision not in exp.PRECISIONS:
            raise ConfigError(
                f"format {self.format} does not support precision {self.precision!r}: "
                f"it supports {', '.join(exp.PRECISIONS)}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"--image-size must be at least 1, got {self.image_size}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"--num-classes must be at least 1, got {self.num_classes}")
        if self.calib_batches < 1 or self.calib_batch_size < 1:
            raise ConfigError("calibration batches and batch size must be at least 1")
        exp.check(self)

    @property
    def dynamic(self) -> bool:
        return self.batch_size is None


class Exporter:
    """Base of every artifact format. Subclasses set ``FORMAT`` and implement ``export``
    and ``load``."""

    FORMAT: ClassVar[str] = ""
    PRECISIONS: ClassVar[tuple[str, ...]] = ("fp32",)
    DEVICE_BOUND: ClassVar[bool] = False

    def check(self, spec: ExportSpec) -> None:
        if spec.opset is not None:
            raise ConfigError(f"--opset applies to the onnx format only, not {self.FORMAT}")

    def versions(self, spec: ExportSpec) -> dict[str, str | None]:
        return {}

    def key(self, spec: ExportSpec) -> dict:
        return {}

    def export(self, loaded: LoadedModel, spec: ExportSpec, out: Path, example: torch.Tensor,
               *, cache: ArtifactCache, progress: Progress | None) -> tuple[str, dict]:
        raise NotImplementedError

    def load(self, path: Path, device: str, fields: dict
             ) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError


_REGISTRY: dict[str, Exporter] = {}


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: make ``cls`` the exporter of the format ``cls.FORMAT``."""
    if not cls.FORMAT:
        raise TypeError(f"{cls.__name__} has no FORMAT")
    held = _REGISTRY.get(cls.FORMAT)
    if held is not None and type(held).__qualname__ != cls.__qualname__:
        raise TypeError(f"format {cls.FORMAT!r} is already registered by "
                        f"{type(held).__module__}")
    _REGISTRY[cls.FORMAT] = cls()
    return cls


def exporters() -> dict[str, Exporter]:
    from densebench.plugins import load_plugins

    load_plugins()
    return dict(_REGISTRY)


def get_exporter(fmt: str) -> Exporter:
    known = exporters()
    if fmt not in known:
        raise ConfigError(f"unknown format {fmt!r}: choose one of {', '.join(known)}")
    return known[fmt]


def _torchvision_version() -> str:
    """torchvision's ``__version__`` (local part included, as keys always had it), read from
    its version.py: importing torchvision costs a worker that only loads an artifact 1.6 s."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torchvision")
        text = (Path(spec.submodule_search_locations[0]) / "version.py").read_text()
        return re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.M).group(1)
    except (AttributeError, TypeError, IndexError, OSError):  # an unusual install
        import torchvision

        return torchvision.__version__


def key_fields(spec: ExportSpec, weights_id: str, image_size: int, num_classes: int) -> dict:
    """Every field that changes the artifact; their hash is the cache key."""
    exp = get_exporter(spec.format)
    return {
        "model": spec.model,
        "weights": weights_id,
        "num_classes": num_classes,
        "format": spec.format,
        "precision": spec.precision,
        "opset": None,
        "input_shape": [spec.batch_size or "batch", 3, image_size, image_size],
        "dynamic_axes": ["batch"] if spec.dynamic else [],
        "device": (torch.device(resolve_device(spec.device)).type if exp.DEVICE_BOUND
                   else "any"),
        "versions": {"torch": torch.__version__, "torchvision": _torchvision_version(),
                     **exp.versions(spec)},
        **exp.key(spec),
    }


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
    exp = get_exporter(spec.format)

    def build(tmp: Path) -> dict:
        batch = spec.batch_size or 2
        example = fixed_input(batch, image_size)
        if progress:
            progress(f"exporting {spec.format} {spec.precision}")
        try:
            main, extra = exp.export(loaded, spec, tmp, example, cache=cache,
                                     progress=progress)
        except (ExportError, KeyboardInterrupt):
            raise
        except Exception as e:  # an exporter's own failure: say which and why, in one line
            msg = _reason(e)
            raise ExportError(
                f"{spec.format} {spec.precision} export of {spec.model} failed: {msg}"
            ) from e
        if progress:
            progress("checking the artifact against eager fp32")
        device = spec.device if exp.DEVICE_BOUND else "cpu"
        run = exp.load(tmp / main, device, fields)
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
    return get_exporter(artifact.fields["format"]).load(artifact.main_file, device, artifact.fields)
