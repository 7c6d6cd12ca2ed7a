"""Runtimes as registered backends, and the one session protocol they all return.

A backend is a class with a class-level ``NAME``, registered by ``@register_backend``. It
owns everything about its runtime that the rest of densebench must not know:

- ``supported(variant, device)``: ``None``, or why this variant cannot run on ``device``;
- ``prepare(variant, loaded, device, artifact=..., threads=..., profile_dir=...)``: a
  ready ``Session``;
- ``versions()``: its libraries' versions, for the environment fingerprint;
- ``profile(session, x, iters, out_dir, tb_dir)``: where the time goes, as an operator
  table plus trace files; ``layout_hint(...)`` for what a profile's layout share means;
- ``FIRST_CALL``: what the first call does (``compile`` for a JIT), shown as the phase.

Every module in this package is a runtime, imported on first use of the registry
(``densebench.plugins``), so adding a runtime is adding one module (plus its variant
entries in ``variants.py``). Modules named with a leading underscore are shared code, not
runtimes. Plugins register the same way, from their own modules.

A ``Session``:

- ``to_device(x_host)``: the input as the runtime wants it on the device (untimed in
  ``model`` mode);
- ``session(x_dev)``: compute only, output left on the device;
- ``to_host(out)``: logits as a float32 CPU tensor;
- ``e2e(x_host)``: host tensor in, host logits out (``end-to-end`` mode);
- ``timer``: ``cuda`` (CUDA events around each call) or ``host`` (perf_counter_ns, after
  the runtime has synchronised).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import torch

from densebench.errors import VariantError


@dataclass
class Session(ABC):
    label: str
    device: str
    timer: str = "host"
    options: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @abstractmethod
    def to_device(self, x: torch.Tensor):
        """The input as the runtime takes it, on the device."""

    @abstractmethod
    def __call__(self, x):
        """Compute only; the output stays where the runtime put it."""

    @abstractmethod
    def to_host(self, out) -> torch.Tensor:
        """Logits as a float32 CPU tensor."""

    def e2e(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_host(self(self.to_device(x)))

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)


@dataclass
class ProfileTrace:
    """What a backend's profiler saw over the profiled iterations."""

    table: list[dict]  # operators: name, calls, self/total CPU us, self device us, share
    files: dict[str, str] = field(default_factory=dict)  # what was written, by role
    breakdown: dict = field(default_factory=dict)  # extra per-iteration figures
    nodes_on_cpu: list[dict] = field(default_factory=list)  # GPU runs: nodes left on the CPU


class Backend:
    """Base of every runtime. Subclasses set ``NAME`` and implement ``prepare``."""

    NAME: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    FIRST_CALL: ClassVar[str] = "warm-up"  # the phase the first timed-shape call is shown as
    MODES: ClassVar[tuple[str, ...]] = ()  # modes a variant may carry (torch.compile's)
    PROFILER: ClassVar[str] = "none"
    # prepare() also takes ``calibration`` (calibration.Calibration) and ``image_size``:
    # runtimes that quantize when the session is built (PT2E)
    CALIBRATED: ClassVar[bool] = False

    def supported(self, variant, device: str) -> str | None:
        return None

    def prepare(self, variant, loaded, device: str, *, artifact=None, threads: int | None = None,
                profile_dir: Path | None = None) -> Session:
        raise NotImplementedError

    def instance_sessions(self, variant, loaded, device: str, n: int, *, artifact=None,
                          threads: int | None = None, **context) -> list[Session] | None:
        """``n`` sessions serving at once from the runtime's own multi-stream form, each
        with ``threads``; None: the runtime has none (each instance is a prepare of its own)."""
        return None

    def versions(self) -> dict[str, str | None]:
        return {}

    def profile(self, session: Session, x, iters: int, out_dir: Path, tb_dir: Path
                ) -> ProfileTrace:
        raise VariantError(f"the {self.NAME} backend has no profiler")

    def layout_hint(self, variant, share: float, names: str) -> str | None:
        return None


_REGISTRY: dict[str, Backend] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` the backend called ``cls.NAME``."""
    if not cls.NAME:
        raise TypeError(f"{cls.__name__} has no NAME")
    if cls.NAME in _REGISTRY and type(_REGISTRY[cls.NAME]).__qualname__ != cls.__qualname__:
        raise TypeError(f"backend {cls.NAME!r} is already registered by "
                        f"{type(_REGISTRY[cls.NAME]).__module__}")
    _REGISTRY[cls.NAME] = cls()
    return cls


def get_backend(name: str) -> Backend:
    from densebench.plugins import load_plugins

    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VariantError(f"unknown backend {name!r}: registered are "
                           f"{', '.join(sorted(_REGISTRY))}") from None


def backends() -> dict[str, Backend]:
    from densebench.plugins import load_plugins

    load_plugins()
    return dict(_REGISTRY)


def library_versions() -> dict[str, str | None]:
    """Every registered runtime's library versions, merged."""
    out: dict[str, str | None] = {}
    for b in backends().values():
        out.update(b.versions())
    return out


def distribution_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed."""
    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return None
