"""A variant made ready to measure: model loaded, artifact found or built, session built,
cold start timed. One function, used by `run` (every scenario), `profile` and `eval`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from densebench.backends import Backend, Session, get_backend
from densebench.parity import kept_reference
from densebench.variants import Variant


@dataclass(frozen=True)
class ModelRef:
    """Which model, with which weights, at which input size (``None``: the model's own)."""

    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    calib: str | None = None  # int8 calibration data (calibration.py); None: synthetic


@dataclass
class Prepared:
    variant: Variant
    backend: Backend
    loaded: object  # models.LoadedModel
    image_size: int
    device: str
    threads: int
    session: Session
    artifact: object | None  # artifacts.Artifact
    context: dict = field(default_factory=dict)  # calibration for CALIBRATED backends
    cold_start: dict = field(default_factory=dict)  # export_s, artifact_cached, load_s
    model_size_mb: float = 0.0

    references: Path | None = None  # where eager's logits are kept (None: not kept)

    def reference(self, x_host: torch.Tensor) -> torch.Tensor:
        """The fp32 eager logits for ``x_host``, on the CPU: what parity is measured against.

        Kept in ``references`` (the artifact cache's ``.references``) by model, weights,
        PyTorch version and input, so the other workers of a run (and later runs) read them
        instead of running eager again: 2 s a worker for densenet121 at batch 16 on 2 cores.
        """
        def compute() -> torch.Tensor:
            with torch.inference_mode():
                return self.loaded.module(x_host)

        if self.references is None:
            return compute()
        return kept_reference(self.references, self.loaded, x_host, compute)

    def another_session(self) -> Session:
        """One more session of the same variant (another serving instance)."""
        return self.backend.prepare(self.variant, self.loaded, self.device,
                                    artifact=self.artifact, threads=self.threads,
                                    **self.context)

    def sessions(self, n: int) -> list[Session]:
        """``n`` serving instances: the backend's own multi-stream form where it has one
        (OpenVINO: one compiled model, ``n`` streams), else ``n`` sessions of their own."""
        if n > 1:
            many = self.backend.instance_sessions(self.variant, self.loaded, self.device, n,
                                                  artifact=self.artifact,
                                                  threads=self.threads, **self.context)
            if many is not None:
                self.session = many[0]  # what the run records is what served
                return many
        return [self.session] + [self.another_session() for _ in range(n - 1)]

    def info(self) -> dict:
        """What a run records about the prepared variant."""
        v = self.variant
        return {"description": v.description, "precision": v.precision, "backend": v.backend,
                "options": self.session.options, "cold_start": dict(self.cold_start),
                "artifact": self.artifact.key if self.artifact is not None else None,
                "model_size_mb": self.model_size_mb}


def artifact_spec(variant: Variant, ref: ModelRef, device: str, image_size: int):
    """The ExportSpec of ``variant``'s artifact for ``ref`` on ``device`` (None: it has
    none, it runs the module itself)."""
    from densebench.exporters import ExportSpec

    if not variant.artifact:
        return None
    fmt, prec = variant.artifact
    return ExportSpec(ref.model, fmt, prec, ref.weights, ref.num_classes,
                      image_size=image_size, device=device, calib=ref.calib or "synthetic")


def prepare_variant(variant: Variant, ref: ModelRef, device: str, threads: int, *,
                    loaded=None, cache=None, profile_dir: Path | None = None,
                    phase: Callable[[str], None] | None = None) -> Prepared:
    """Load ``ref``'s model (unless ``loaded`` is given), export or find the variant's
    artifact, build its session on ``device`` with ``threads`` intra-op threads.

    ``phase(name)`` is told each step (``load model``, ``export`` when the artifact is not
    in the cache yet, ``load``).
    ``profile_dir``: prepare for a profile (backends whose profiler must be enabled when
    the session is built write there).
    """
    from densebench.artifacts import ArtifactCache
    from densebench.errors import VariantError
    from densebench.exporters import export_artifact
    from densebench.models import check_image_size, load_model

    say = phase or (lambda name: None)
    cache = cache or ArtifactCache()
    backend = get_backend(variant.backend)
    why = backend.supported(variant, device)
    if why is not None:  # never a quietly different experiment
        raise VariantError(why)
    torch.set_num_threads(threads)
    cold: dict = {}
    if loaded is None:
        say("load model")
        loaded = load_model(ref.model, ref.weights, ref.num_classes)
    image_size = ref.image_size or loaded.default_image_size
    check_image_size(ref.model, image_size, ref.num_classes)
    artifact = None
    spec = artifact_spec(variant, ref, device, image_size)
    if spec is None:  # runs the module itself: built here, not in the timed load
        loaded.build_now()
    else:
        def exporting(step: str) -> None:  # said only when an export happens, not when cached
            if step.startswith("exporting"):
                say("export")
            elif step.startswith("waiting"):
                say("wait for another process's export")

        t0 = time.perf_counter()
        artifact, cached = export_artifact(spec, cache, loaded=loaded, progress=exporting)
        cold["export_s"] = 0.0 if cached else round(time.perf_counter() - t0, 3)
        cold["artifact_cached"] = cached
    context = {}
    if backend.CALIBRATED:
        from densebench.calibration import Calibration

        context = {"calibration": Calibration.parse(ref.calib), "image_size": image_size}
    say("load")
    t0 = time.perf_counter()
    session = backend.prepare(variant, loaded, device, artifact=artifact, threads=threads,
                              profile_dir=profile_dir, **context)
    cold["load_s"] = round(time.perf_counter() - t0, 4)
    size_mb = (artifact.size_bytes / 1e6 if artifact is not None else
               sum(p.numel() * p.element_size() for p in loaded.module.parameters()) / 1e6)
    return Prepared(variant=variant, backend=backend, loaded=loaded, image_size=image_size,
                    device=device, threads=threads, session=session, artifact=artifact,
                    context=context, cold_start=cold, model_size_mb=size_mb,
                    references=cache.references)
