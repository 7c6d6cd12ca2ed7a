"""Model registry and weights.

Names: the DenseNet family (``densenet121/161/169/201``), ``densenet-tiny`` (a real
torchvision ``DenseNet`` with a small configuration, for tests and quick demos) and any
torchvision classification model by its torchvision name.

Weights: ``imagenet`` (torchvision's pretrained weights through torchvision's own loader
and cache), ``random[:SEED]`` (deterministic: the same seed gives bit-identical weights)
or a path to a state_dict / checkpoint file.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from densebench.checksums import sha256_file
from densebench.errors import ConfigError, ModelError, WeightsError

DEFAULT_NUM_CLASSES = 1000


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    default_image_size: int = 224
    torchvision_name: str | None = None  # name for torchvision's weights registry
    description: str = ""

    @property
    def has_imagenet_weights(self) -> bool:
        return self.torchvision_name is not None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, default_image_size: int = 224, torchvision_name: str | None = None,
    description: str = "",
):
    """Decorator registering a builder ``fn(num_classes=...) -> nn.Module`` under ``name``."""

    def deco(fn):
        _REGISTRY[name] = ModelEntry(name, fn, default_image_size, torchvision_name, description)
        return fn

    return deco


def _torchvision_builder(tv_name: str) -> Callable[..., nn.Module]:
    def build(**kwargs):
        import torchvision

        return torchvision.models.get_model(tv_name, weights=None, **kwargs)

    return build


for _n, _desc in [
    ("densenet121", "DenseNet-121 (torchvision)"),
    ("densenet161", "DenseNet-161 (torchvision)"),
    ("densenet169", "DenseNet-169 (torchvision)"),
    ("densenet201", "DenseNet-201 (torchvision)"),
]:
    _REGISTRY[_n] = ModelEntry(_n, _torchvision_builder(_n), 224, _n, _desc)


@register_model(
    "densenet-tiny", default_image_size=64,
    description="small real DenseNet (growth 12, blocks 2-2-2-2)",
)
def densenet_tiny(num_classes: int = DEFAULT_NUM_CLASSES) -> nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(
        growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=4,
        num_classes=num_classes,
    )


@functools.lru_cache(maxsize=1)
def _torchvision_classification_names() -> tuple[str, ...]:
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def list_models(pattern: str = "*", include_torchvision: bool = False) -> list[str]:
    """Registered names matching a glob ``pattern``; with torchvision's too if asked."""
    from densebench.plugins import load_plugins

    load_plugins()  # plugins may register models
    names = list(_REGISTRY)
    if include_torchvision:
        names += [n for n in _torchvision_classification_names() if n not in _REGISTRY]
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def get_entry(name: str) -> ModelEntry:
    from densebench.plugins import load_plugins

    load_plugins()  # plugins may register models
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _torchvision_classification_names():
        return ModelEntry(name, _torchvision_builder(name), 224, name, "torchvision")
    known = list(_REGISTRY) + list(_torchvision_classification_names())
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `densebench models --all`"
    raise ModelError(f"unknown model {name!r}: {hint}")


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsSpec:
    """Parsed ``--weights`` value."""

    kind: str  # "imagenet" | "random" | "path"
    seed: int = 0
    path: Path | None = None

    @classmethod
    def parse(cls, text: str | None) -> WeightsSpec:
        text = (text or "random").strip()
        if text == "imagenet":
            return cls("imagenet")
        if text == "random":
            return cls("random", seed=0)
        m = re.fullmatch(r"random:(-?\d+)", text)
        if m:
            return cls("random", seed=int(m.group(1)))
        if text.startswith("random:"):
            raise ConfigError(f"--weights {text!r}: the seed must be an integer, as in random:42")
        return cls("path", path=Path(text).expanduser())

    @property
    def label(self) -> str:
        if self.kind == "random":
            return f"random:{self.seed}"
        if self.kind == "path":
            return str(self.path)
        return "imagenet"


@dataclass
class LoadedModel:
    """A model in eval mode on the CPU, in fp32, with what identifies its weights.

    ``module`` is built when first used: a worker that runs a cached artifact against kept
    reference logits never needs it (random weights; a weights file or ImageNet weights are
    loaded at once, so that a bad one is reported before anything runs). Building densenet121
    costs 2 s a process on 2 cores, most of it importing torchvision."""

    name: str
    build: Callable[[], nn.Module] | None = field(repr=False)  # None: built already
    weights: WeightsSpec
    weights_id: str  # goes into artifact keys: seed, torchvision weights enum or file checksum
    num_classes: int
    random_weights: bool  # True when any part of the network (even just the head) is random
    head_replaced: bool
    default_image_size: int
    notes: list[str] = field(default_factory=list)
    _module: nn.Module | None = field(default=None, repr=False)

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            assert self.build is not None
            self._module = _inference_ready(self.build())
        return self._module

    def build_now(self) -> None:
        """Build ``module`` now, if it is not built yet."""
        self.module  # noqa: B018 (the property builds it)

    def describe_weights(self) -> str:
        if self.weights.kind == "random":
            return f"random weights (seed {self.weights.seed})"
        base = "ImageNet" if self.weights.kind == "imagenet" else f"file {self.weights.path}"
        return base + (" with a random classifier head" if self.head_replaced else "")


def _inference_ready(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _seeded(fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _find_head(model: nn.Module, out_features: int) -> tuple[str, nn.Module] | None:
    """The last Linear (or 1x1 Conv) producing ``out_features`` outputs: the classifier."""
    found = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.out_features == out_features:
            found = (name, mod)
        elif isinstance(mod, nn.Conv2d) and mod.out_channels == out_features:
            found = (name, mod)
    return found


def replace_head(model: nn.Module, num_classes: int, old: int = DEFAULT_NUM_CLASSES) -> None:
    head = _find_head(model, old)
    if head is None:
        raise ModelError(
            f"cannot find a {old}-output classifier to replace with {num_classes} classes"
        )
    name, mod = head
    if isinstance(mod, nn.Linear):
        new: nn.Module = nn.Linear(mod.in_features, num_classes, bias=mod.bias is not None)
    else:
        new = nn.Conv2d(mod.in_channels, num_classes, kernel_size=mod.kernel_size,
                        stride=mod.stride, bias=mod.bias is not None)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _clean_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(
            f"weights file {path} holds no state_dict (expected a dict of tensors, or a "
            "checkpoint with a 'state_dict' or 'model' entry)"
        )
    out = {}
    for k, v in obj.items():
        k = k.removeprefix("module.").removeprefix("_orig_mod.")
        m = _OLD_DENSENET_KEY.match(k)  # torchvision's old DenseNet key layout (norm.1 -> norm1)
        if m:
            k = m.group(1) + m.group(2)
        out[k] = v.float() if v.is_floating_point() else v
    return out


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightsError(
            f"weights file {path} does not exist: give a state_dict path, 'imagenet' or "
            "'random[:SEED]'"
        )
    if not os.access(path, os.R_OK) or path.is_dir():
        raise WeightsError(f"weights file {path} cannot be read: check its permissions")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors, truncated files, not a torch file at all
        raise WeightsError(
            f"weights file {path} could not be loaded as a PyTorch state_dict "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from e
    return _clean_state_dict(obj, path)


def load_model(
    name: str, weights: str | WeightsSpec | None = "random", num_classes: int | None = None,
) -> LoadedModel:
    """``name`` with ``weights`` on the CPU in eval mode, fp32 (random weights: built when
    its ``module`` is first used)."""
    entry = get_entry(name)
    spec = weights if isinstance(weights, WeightsSpec) else WeightsSpec.parse(weights)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {num_classes}")
    classes = num_classes or DEFAULT_NUM_CLASSES
    head_replaced = False
    notes: list[str] = []
    build, module = None, None

    if spec.kind == "random":
        build = functools.partial(
            _seeded, functools.partial(entry.builder, num_classes=classes), spec.seed)
        weights_id = f"random:{spec.seed}"
        random_weights = True
    elif spec.kind == "imagenet":
        module, weights_id = _load_imagenet(entry)
        random_weights = False
        if num_classes is not None and num_classes != DEFAULT_NUM_CLASSES:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                replace_head(module, num_classes)
            head_replaced = True
            random_weights = True
            notes.append(f"classifier head replaced by a random {num_classes}-class head (seed 0)")
    else:
        assert spec.path is not None
        state = _load_file(spec.path)
        module = _seeded(lambda: entry.builder(num_classes=classes), 0)
        _load_state(module, state, spec.path, name, classes)
        weights_id = f"file:{sha256_file(spec.path)}"
        random_weights = False

    return LoadedModel(
        name=name, build=build, _module=None if module is None else _inference_ready(module),
        weights=spec, weights_id=weights_id, num_classes=classes,
        random_weights=random_weights, head_replaced=head_replaced,
        default_image_size=entry.default_image_size, notes=notes,
    )


def _load_state(
    module: nn.Module, state: dict, path: Path, name: str, classes: int
) -> None:
    own = module.state_dict()
    head = _find_head(module, classes)
    if head is not None:
        key = f"{head[0]}.weight"
        if key in state and key in own and state[key].shape[0] != own[key].shape[0]:
            raise WeightsError(
                f"weights file {path} has a {state[key].shape[0]}-class head but the model has "
                f"{own[key].shape[0]} classes: pass --num-classes {state[key].shape[0]}"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        raise WeightsError(
            f"weights file {path} does not fit {name}: {'; '.join(parts)} keys; is it a "
            f"state_dict of {name}?"
        )
    module.load_state_dict(state)


def _load_imagenet(entry: ModelEntry) -> tuple[nn.Module, str]:
    import torchvision

    if not entry.has_imagenet_weights:
        raise WeightsError(
            f"{entry.name} has no ImageNet weights: use --weights random[:SEED] or --weights PATH"
        )
    tv = entry.torchvision_name
    weights_enum = torchvision.models.get_model_weights(tv).DEFAULT
    try:
        module = torchvision.models.get_model(tv, weights=weights_enum)
    except Exception as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"could not get ImageNet weights {weights_enum} for {entry.name} ({reason}); "
            f"put {Path(weights_enum.url).name} in {cache}, or use --weights random[:SEED] "
            "or --weights PATH (no fallback to random weights is made)"
        ) from e
    return module, f"imagenet:{weights_enum}"


# --------------------------------------------------------------------------- shapes


def check_image_size(name: str, image_size: int, num_classes: int | None = None) -> None:
    """Raise ModelError when ``name`` cannot take square images of ``image_size`` pixels.

    Checked on the meta device: no weights, no compute. A model's own size is taken as
    fitting without building it (building imports torchvision: 1.6 s a worker process).
    """
    if image_size < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}",
                          setting="image_size")
    if image_size == get_entry(name).default_image_size:
        return
    if not _fits(name, image_size, num_classes):
        lo, hi = image_size, max(image_size * 2, 32)
        while not _fits(name, hi, num_classes):
            if hi > 1024:
                raise ModelError(f"{name} cannot take {image_size}x{image_size} images")
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _fits(name, mid, num_classes) else (mid, hi)
        raise ModelError(
            f"image size {image_size} is too small for {name}: its feature maps shrink to "
            f"nothing; use --image-size {hi} or more"
        )


@functools.lru_cache(maxsize=256)
def _fits(name: str, image_size: int, num_classes: int | None) -> bool:
    entry = get_entry(name)
    with torch.device("meta"):
        model = entry.builder(num_classes=num_classes or DEFAULT_NUM_CLASSES).eval()
        try:
            with torch.no_grad():
                model(torch.empty(1, 3, image_size, image_size))
        except (RuntimeError, ValueError):
            return False
    return True


@dataclass(frozen=True)
class ModelStats:
    name: str
    params: int
    gmacs: float  # multiply-accumulates at the given size, batch 1
    image_size: int


@functools.lru_cache(maxsize=256)
def model_stats(name: str, image_size: int = 224) -> ModelStats:
    """Parameter count and GMACs (FLOPs / 2, torch.utils.flop_counter) on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    entry = get_entry(name)
    with torch.device("meta"):
        model = entry.builder().eval()
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, image_size, image_size))
    return ModelStats(name, params, counter.get_total_flops() / 2e9, image_size)
