"""Data sources for `densebench eval`: synthetic, ImageFolder, CIFAR-10 (local).

Preprocessing follows the weights' own transforms (torchvision's ``weights.transforms()``:
resize, centre crop, normalise) for ImageNet weights, and the same ImageNet recipe
otherwise. CIFAR's 32 px images are upscaled to the model's input size.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from densebench.errors import ConfigError, DensebenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


class DataError(DensebenchError):
    """A dataset that is missing, empty, malformed or does not fit the model."""


@dataclass
class Source:
    kind: str  # synthetic | imagefolder | cifar10
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Source:
        kind, _, rest = text.partition(":")
        if kind == "synthetic" and not rest:
            return cls("synthetic")
        if kind in ("imagefolder", "cifar10") and rest:
            return cls(kind, Path(rest).expanduser())
        raise ConfigError(
            f"--data {text!r}: use synthetic, imagefolder:PATH or cifar10:PATH"
        )

    @property
    def label(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


@dataclass
class Dataset:
    """Preprocessed images in batches, with labels (None for synthetic data)."""

    source: Source
    num_classes: int | None
    class_names: list[str]
    items: list  # what load_item() takes
    load_item: object  # callable(item) -> (tensor CxHxW, label) ; raises on unreadable
    unreadable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, batch_size: int, strict: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        xs, ys = [], []
        for item in self.items:
            try:
                x, y = self.load_item(item)
            except Exception as e:
                name = str(item[0] if isinstance(item, tuple) else item)
                if strict:
                    raise DataError(f"unreadable image {name}: {e} (drop --strict to skip "
                                    "and count such images)") from e
                self.unreadable.append(name)
                continue
            xs.append(x)
            ys.append(y)
            if len(xs) == batch_size:
                yield torch.stack(xs), (None if ys[0] is None else torch.tensor(ys))
                xs, ys = [], []
        if xs:
            yield torch.stack(xs), (None if ys[0] is None else torch.tensor(ys))


def preprocessing(weights_enum, image_size: int, upscale: bool = False):
    """The transform for one PIL image: the weights' own, or the ImageNet recipe at size."""
    from torchvision.transforms import v2 as T

    if weights_enum is not None and not upscale:
        tf = weights_enum.transforms()
        if getattr(tf, "crop_size", [image_size])[0] == image_size:
            return tf
    steps = [T.ToImage()]
    if upscale:
        steps.append(T.Resize((image_size, image_size), antialias=True))
    else:
        steps += [T.Resize(int(round(image_size * 256 / 224)), antialias=True),
                  T.CenterCrop(image_size)]
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def load(source: Source, image_size: int, *, weights_enum=None, limit: int | None = None,
         download: bool = False, split: str = "test", synthetic_count: int = 64) -> Dataset:
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if source.kind == "synthetic":
        n = limit or synthetic_count
        g = torch.Generator().manual_seed(0)
        images = torch.randn(n, 3, image_size, image_size, generator=g)
        return Dataset(source, None, [], list(range(n)), lambda i: (images[i], None),
                       notes=["synthetic inputs: parity only, no accuracy"])
    if source.kind == "imagefolder":
        return _imagefolder(source, image_size, weights_enum, limit)
    return _cifar10(source, image_size, limit, download, split)


def _imagefolder(source: Source, image_size: int, weights_enum, limit) -> Dataset:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    root = source.path
    if not root.is_dir():
        raise DataError(f"imagefolder {root} is not a directory")
    try:
        ds = ImageFolder(str(root), allow_empty=True)
    except FileNotFoundError as e:
        raise DataError(f"imagefolder {root} has no class folders (expected "
                        f"{root}/CLASS/IMAGE.jpg)") from e
    except OSError as e:
        raise DataError(f"imagefolder {root} cannot be read: {e.strerror or e}") from e
    if not ds.samples:
        raise DataError(f"imagefolder {root} holds no images (expected {root}/CLASS/IMAGE.jpg)")
    tf = preprocessing(weights_enum, image_size)

    def load_item(item):
        path, label = item
        with Image.open(path) as im:
            return tf(im.convert("RGB")), label

    items = list(ds.samples)
    if limit:
        items = _spread(items, limit)
    return Dataset(source, len(ds.classes), list(ds.classes), items, load_item)


def _spread(items: list, limit: int) -> list:
    """``limit`` items spread over the whole list (every class, not just the first ones)."""
    if limit >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def _cifar10(source: Source, image_size: int, limit, download: bool, split: str) -> Dataset:
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR-10 reader; files must exist, their checksums are reported."""

        def _check_integrity(self) -> bool:
            base = Path(self.root) / self.base_folder
            files = self.train_list if split == "train" else self.test_list
            return all((base / name).is_file() for name, _ in files)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            self.classes = CIFAR10_CLASSES
            if path.is_file():
                with open(path, "rb") as f:
                    self.classes = list(pickle.load(f, encoding="latin1")[self.meta["key"]])
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    if split not in ("test", "train"):
        raise ConfigError(f"--split must be test or train, got {split!r}")
    root = source.path
    notes = []
    try:
        if download:
            ds = CIFAR10(str(root), train=split == "train", download=True)
        else:
            ds = LocalCIFAR10(str(root), train=split == "train", download=False)
    except RuntimeError as e:
        raise DataError(
            f"cifar10 {root}: no CIFAR-10 python batches there (expected "
            f"{root}/cifar-10-batches-py/test_batch); pass --download to fetch them"
        ) from e
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError, TypeError) as e:
        raise DataError(f"cifar10 {root}: malformed batch files ({type(e).__name__}: {e})") \
            from e
    from torchvision.datasets.utils import check_integrity

    used = ds.train_list if split == "train" else ds.test_list
    if not all(check_integrity(str(Path(ds.root) / ds.base_folder / n), md5) for n, md5 in used):
        notes.append("batch files differ from the official CIFAR-10 release (checksum)")
    if len(ds.data) == 0 or len(ds.data) != len(ds.targets):
        raise DataError(f"cifar10 {root}: the batch files hold no images or mismatched labels")
    if ds.data.ndim != 4 or ds.data.shape[1:] != (32, 32, 3):
        raise DataError(f"cifar10 {root}: images of shape {ds.data.shape[1:]}, not 32x32x3")
    tf = preprocessing(None, image_size, upscale=True)
    data, targets = ds.data, ds.targets

    def load_item(i):
        return tf(data[i]), int(targets[i])

    items = list(range(len(data)))
    if limit:
        items = _spread(items, limit)
    names = list(getattr(ds, "classes", [])) or [str(i) for i in range(10)]
    return Dataset(source, 10, names, items, load_item, notes=notes)
