"""A new artifact format, its exporter, a runtime that loads it and two variants over it,
added from outside the package: what the README's "Adding a runtime, a format or a
scenario" asks of a plugin, and nothing more (``DENSEBENCH_PLUGINS=.../numpy_head.py``,
with sleepy.py for the pool-tiny model and the one-call scenario).

The ``npz`` format holds a pooled linear classifier (pool-tiny: global average pool, one
linear layer) as NumPy arrays; the ``numpy`` runtime computes it with NumPy. It is a real
runtime, small: its logits are checked against eager fp32 like any other's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from densebench.backends import Backend, Session, register_backend
from densebench.errors import ExportError
from densebench.exporters import Exporter, register_exporter
from densebench.variants import Variant, register_variant

MAIN = "head.npz"
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def _linear_head(module: nn.Module) -> nn.Linear:
    """The linear layer of a global-average-pool classifier; an ExportError for anything
    else (the format holds nothing more)."""
    layers = list(module.children()) if isinstance(module, nn.Sequential) else []
    if (len(layers) == 3 and isinstance(layers[0], nn.AdaptiveAvgPool2d)
            and layers[0].output_size in (1, (1, 1)) and isinstance(layers[1], nn.Flatten)
            and isinstance(layers[2], nn.Linear)):
        return layers[2]
    raise ExportError("the npz format holds a global-average-pool + linear classifier "
                      "(pool-tiny) only")


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["weight"], z["bias"]


def _forward(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    pooled = x.astype(weight.dtype, copy=False).mean(axis=(2, 3))
    return (pooled @ weight.T + bias).astype(np.float32)


@register_exporter
class NpzExporter(Exporter):
    FORMAT = "npz"
    PRECISIONS = ("fp32", "fp16")

    def versions(self, spec) -> dict[str, str | None]:
        return {"numpy": np.__version__}

    def key(self, spec) -> dict:
        return {"layout": "weight [classes, channels], bias [classes]"}

    def export(self, loaded, spec, out: Path, example: torch.Tensor, *, cache, progress):
        head = _linear_head(loaded.module)
        dtype = DTYPES[spec.precision]
        np.savez(out / MAIN, weight=head.weight.detach().numpy().astype(dtype),
                 bias=head.bias.detach().numpy().astype(dtype))
        return MAIN, {"exporter": f"numpy.savez of the linear head, {spec.precision}"}

    def load(self, path: Path, device: str, fields: dict):
        weight, bias = _load(path)
        return lambda x: torch.from_numpy(_forward(weight, bias, x.detach().cpu().numpy()))


@dataclass
class NumpySession(Session):
    weight: np.ndarray = None
    bias: np.ndarray = None

    def to_device(self, x: torch.Tensor):
        return np.ascontiguousarray(x.detach().cpu().numpy())

    def __call__(self, x):
        return _forward(self.weight, self.bias, x)

    def to_host(self, out) -> torch.Tensor:
        return torch.from_numpy(out)


@register_backend
class NumpyBackend(Backend):
    NAME = "numpy"
    DESCRIPTION = "NumPy on an npz artifact (test plugin)"

    def supported(self, variant, device: str) -> str | None:
        return None if device == "cpu" else f"{variant.name} runs on the CPU only"

    def versions(self) -> dict[str, str | None]:
        return {"numpy": np.__version__}

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        artifact.verify()
        artifact.touch()
        weight, bias = _load(artifact.main_file)
        return NumpySession(label=variant.label, device=device,
                            options={"artifact": artifact.key, "dtype": str(weight.dtype)},
                            weight=weight, bias=bias)


register_variant(Variant("numpy", "numpy", "test plugin: NumPy on the npz artifact",
                         artifact=("npz", "fp32")))
register_variant(Variant("numpy-fp16", "numpy", "test plugin: NumPy on the fp16 npz artifact",
                         precision="fp16", artifact=("npz", "fp16")))
