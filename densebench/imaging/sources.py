"""Where a run's JPEG files come from, checked before anything runs.

- ``jpeg:PATH``: every ``*.jpg`` / ``*.jpeg`` under a folder; where the folder is laid out
  as ImageFolder's (``PATH/CLASS/IMAGE.jpg``) the class folders are the labels, sorted as
  ImageFolder sorts them;
- ``imagefolder:PATH``: the same, labels required (eval's and LoadGen's ``--data``);
- ``jpeg:synthetic[:WxH]``: ``SYNTHETIC_COUNT`` images densebench encodes once (seeded,
  quality ``SYNTHETIC_QUALITY``, 500 x 375 by default: the typical ImageNet validation
  photo), kept in the artifact cache under ``jpeg/``, written whole then renamed.

``unreadable(source, decoder)`` decodes every file once and says which cannot be decoded
(truncated, not a JPEG): a run counts and reports them, ``--strict`` refuses them.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densebench.errors import ConfigError, DensebenchError

SYNTHETIC_SIZE = (500, 375)
SYNTHETIC_QUALITY = 90
SYNTHETIC_COUNT = 64
SYNTHETIC_SEED = 0
SUFFIXES = (".jpg", ".jpeg")
MAX_SYNTHETIC_SIDE = 8192


class ImageDataError(DensebenchError):
    """A folder of images that is missing, empty or unreadable."""


@dataclass(frozen=True)
class ImageSource:
    """JPEG files, in a fixed order, with labels where the folder has classes."""

    spec: str  # as given
    root: Path  # the folder the files were found in
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None = None
    classes: tuple[str, ...] = ()
    synthetic: tuple[int, int] | None = None  # (width, height) of encoded images

    def __len__(self) -> int:
        return len(self.files)

    def resolved_spec(self) -> str:
        """What a worker resolves to the same files: the folder as an absolute path, or
        the synthetic set by its size (a cluster node encodes the same into its cache)."""
        if self.synthetic is not None:
            return f"jpeg:synthetic:{self.synthetic[0]}x{self.synthetic[1]}"
        return f"jpeg:{self.root.resolve()}"

    def describe(self) -> dict:
        sizes = [p.stat().st_size for p in self.files]
        return {"input": self.spec, "images": len(self.files),
                "labelled": self.labels is not None, "classes": len(self.classes),
                "mean_file_kb": round(float(np.mean(sizes)) / 1024, 1),
                **({"synthetic_size": list(self.synthetic)} if self.synthetic else {})}


_SYNTHETIC = re.compile(r"^synthetic(?::(\d+)x(\d+))?$")


def parse(text: str) -> tuple[str, object]:
    """("synthetic", (w, h)), ("jpeg", Path) or ("imagefolder", Path); bad text: ConfigError."""
    kind, _, rest = str(text).partition(":")
    if kind == "jpeg" and (m := _SYNTHETIC.match(rest)):
        w, h = (int(m.group(1)), int(m.group(2))) if m.group(1) else SYNTHETIC_SIZE
        if not (16 <= w <= MAX_SYNTHETIC_SIDE and 16 <= h <= MAX_SYNTHETIC_SIDE):
            raise ConfigError(f"input {text!r}: synthetic images are 16 to "
                              f"{MAX_SYNTHETIC_SIDE} px a side, as in jpeg:synthetic:500x375",
                              setting="input")
        return "synthetic", (w, h)
    if kind in ("jpeg", "imagefolder") and rest:
        return kind, Path(rest).expanduser()
    raise ConfigError(f"input {text!r}: use jpeg:PATH (a folder of JPEG files), "
                      "imagefolder:PATH or jpeg:synthetic[:WxH]", setting="input")


def resolve(text: str, cache_root: Path | None = None) -> ImageSource:
    """The files ``text`` names (synthetic ones encoded into the cache the first time)."""
    kind, what = parse(text)
    if kind == "synthetic":
        folder = synthetic_folder(what, cache_root)
        return ImageSource(text, folder, tuple(sorted(folder.glob("*.jpg"))), synthetic=what)
    return _folder(text, kind, what)


def _folder(text: str, kind: str, root: Path) -> ImageSource:
    if not root.is_dir():
        raise ImageDataError(f"{text}: {root} is not a directory: give a folder of JPEG "
                             "files (or CLASS/IMAGE.jpg folders)")
    try:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        top = sorted(p for p in root.iterdir() if _is_jpeg(p))
    except OSError as e:
        raise ImageDataError(f"{text}: {root} cannot be read ({e.strerror or e})") from e
    if classes and not top:  # ImageFolder's layout: the class folders are the labels
        files, labels = [], []
        for i, c in enumerate(classes):
            found = sorted(p for p in (root / c).rglob("*") if _is_jpeg(p))
            files += found
            labels += [i] * len(found)
        if files:
            return ImageSource(text, root, tuple(files), tuple(labels), tuple(classes))
    elif kind == "imagefolder":
        raise ImageDataError(f"{text}: {root} has no class folders (expected "
                             f"{root}/CLASS/IMAGE.jpg)")
    files = top or sorted(p for p in root.rglob("*") if _is_jpeg(p))
    if not files:
        raise ImageDataError(f"{text}: {root} holds no JPEG files (*.jpg, *.jpeg): give a "
                             "folder of JPEG images, or jpeg:synthetic")
    return ImageSource(text, root, tuple(files))


def _is_jpeg(p: Path) -> bool:
    return p.suffix.lower() in SUFFIXES and p.is_file()


def synthetic_folder(size: tuple[int, int], cache_root: Path | None = None) -> Path:
    """The folder of synthetic JPEGs at ``size``, encoded the first time it is asked for."""
    from densebench.artifacts import default_root

    w, h = size
    root = Path(cache_root or default_root()) / "jpeg"
    folder = root / (f"synthetic-{w}x{h}-q{SYNTHETIC_QUALITY}-n{SYNTHETIC_COUNT}"
                     f"-s{SYNTHETIC_SEED}")
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == SYNTHETIC_COUNT:
        return folder
    tmp = root / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir(parents=True)
        for i, data in enumerate(synthetic_jpegs(w, h)):
            (tmp / f"{i:04d}.jpg").write_bytes(data)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it first: theirs is the same
            if not folder.is_dir():
                raise
    except OSError as e:
        raise ImageDataError(f"cannot write synthetic JPEGs under {root} "
                             f"({e.strerror or e}); set DENSEBENCH_ARTIFACTS to a writable "
                             "folder") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def synthetic_jpegs(w: int, h: int, count: int = SYNTHETIC_COUNT,
                    seed: int = SYNTHETIC_SEED) -> list[bytes]:
    """``count`` JPEGs that compress like photographs: smooth colour fields (a few
    gradients and blobs) with fine grain, seeded, so every machine encodes the same."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            a, b = rng.uniform(-1, 1, 2)
            img[..., c] = 128 + 60 * (a * xx / w + b * yy / h)
        for _ in range(6):  # blobs: edges and texture where they meet
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(0.05, 0.3) * max(w, h)
            colour = rng.uniform(-90, 90, 3)
            mask = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
            img += mask[..., None] * colour
        img += rng.normal(0, 6, img.shape)  # grain
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            buf, "JPEG", quality=SYNTHETIC_QUALITY)
        out.append(buf.getvalue())
    return out


def unreadable(source: ImageSource, decoder, device: str = "cpu") -> list[tuple[Path, str]]:
    """The files ``decoder`` cannot decode, each with why (in one line)."""
    from densebench.errors import one_line

    bad = []
    for p in source.files:
        try:
            decoder.decode(p.read_bytes(), device)
        except Exception as e:
            bad.append((p, one_line(e)))
    return bad


def unreadable_record(bad: list[tuple[Path, str]]) -> dict:
    """What a cell reports of the files it skipped."""
    return {"count": len(bad), "examples": [f"{p.name}: {why}" for p, why in bad[:5]]}


def without(source: ImageSource, bad: list[tuple[Path, str]]) -> ImageSource:
    """``source`` less the files in ``bad``."""
    drop = {p for p, _ in bad}
    keep = [i for i, p in enumerate(source.files) if p not in drop]
    if not keep:
        raise ImageDataError(f"{source.spec}: none of its {len(source.files)} files can be "
                             f"decoded (first: {bad[0][0].name}: {bad[0][1]})")
    return ImageSource(source.spec, source.root, tuple(source.files[i] for i in keep),
                       None if source.labels is None else
                       tuple(source.labels[i] for i in keep), source.classes, source.synthetic)
