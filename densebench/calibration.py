"""Calibration data for every int8 variant, from one place.

``--calib synthetic`` (default: seeded standard-normal batches, the same every time) or
``--calib imagefolder:PATH`` (real images, preprocessed as the model's evaluation would
preprocess them, spread over the classes). Its ``identity()`` goes into the artifact key
and manifest, so an int8 artifact calibrated on other data is another artifact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from densebench.errors import ConfigError

SYNTHETIC_SEED = 0


@dataclass(frozen=True)
class Calibration:
    source: str = "synthetic"  # synthetic | imagefolder
    path: str | None = None
    images: int = 32  # images calibrated on (the first ones, spread over the classes)

    @classmethod
    def parse(cls, text: str | None, images: int = 32) -> Calibration:
        text = (text or "synthetic").strip()
        kind, _, rest = text.partition(":")
        if images < 1:
            raise ConfigError(f"calib: calibration needs at least 1 image, got {images}",
                              setting="calib")
        if kind == "synthetic" and not rest:
            return cls("synthetic", None, images)
        if kind == "imagefolder" and rest:
            p = Path(rest).expanduser()
            if not p.is_dir():
                raise ConfigError(f"calib: imagefolder {p} does not exist (or is not a "
                                  "directory): give a folder of class folders of images",
                                  setting="calib")
            return cls("imagefolder", str(p.resolve()), images)
        raise ConfigError(f"calib {text!r}: use synthetic or imagefolder:PATH",
                          setting="calib")

    @property
    def label(self) -> str:
        return self.source if self.path is None else f"{self.source}:{self.path}"

    def identity(self) -> dict:
        """What the calibration data is, exactly enough to key an artifact on it."""
        if self.source == "synthetic":
            return {"source": "synthetic", "images": self.images, "seed": SYNTHETIC_SEED}
        files = self._files()
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(self.path)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
        return {"source": "imagefolder", "path": self.path, "images": len(files),
                "files_sha256": h.hexdigest()[:16]}

    def count(self) -> int:
        """Images the calibration uses (for synthetic data: as many as asked)."""
        return self.images if self.source == "synthetic" else len(self._files())

    def _files(self) -> list[Path]:
        from densebench.data import Source, load

        ds = load(Source("imagefolder", Path(self.path)), 32, limit=self.images)
        return [Path(p) for p, _ in ds.items]

    def batches(self, image_size: int, batch_size: int) -> list[torch.Tensor]:
        """The calibration images in batches of ``batch_size`` (all full: static shapes)."""
        from densebench.data import Source, load

        if self.source == "synthetic":
            g = torch.Generator().manual_seed(SYNTHETIC_SEED)
            x = torch.randn(self.images, 3, image_size, image_size, generator=g)
        else:
            ds = load(Source("imagefolder", Path(self.path)), image_size, limit=self.images)
            x = torch.cat([b for b, _ in ds.batches(64)]) if len(ds) else torch.empty(0)
        if len(x) < batch_size:
            raise ConfigError(f"calib: the calibration set ({self.label}) has {len(x)} "
                              f"images, fewer than the batch of {batch_size}: give more "
                              "images", setting="calib")
        n = len(x) // batch_size * batch_size
        return list(x[:n].split(batch_size))


def spec_calibration(spec) -> Calibration:
    """The calibration data an int8 export of ``spec`` (an ``ExportSpec``) is calibrated on."""
    return Calibration.parse(spec.calib, images=spec.calib_batches * spec.calib_batch_size)


def calibration_key(spec, method: dict) -> dict:
    """What an int8 export adds to its key: the calibration data, its batching and the
    exporter's ``method`` (how it quantizes); nothing for other precisions."""
    if spec.precision != "int8":
        return {}
    return {"calibration": {**spec_calibration(spec).identity(),
                            "batches": spec.calib_batches,
                            "batch_size": spec.calib_batch_size, **method}}
