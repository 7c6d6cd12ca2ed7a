"""`densebench profile` as a library: where the time goes, for one variant.

A run of kind ``profile`` through the one pipeline (``pipeline.execute``): the variant is
prepared and profiled in its own worker process by the ``profile`` scenario
(``scenarios/profile.py``), whose summary the run keeps in ``profiles``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from densebench.errors import DensebenchError, bad_setting, check_threads
from densebench.pipeline import Emit, execute
from densebench.run import RunConfig


class ProfileError(DensebenchError):
    """A profile that cannot be produced for a variant, with why."""


@dataclass
class ProfileConfig:
    variant: str
    batch_size: int = 1
    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    device: str = "auto"
    threads: int | None = None
    iters: int = 10
    warmup: int = 3
    top: int = 25
    name: str | None = None
    executor: str = "subprocess"  # in its own worker process

    def __post_init__(self):
        if self.batch_size < 1:
            raise bad_setting("batch_size", f"must be at least 1, got {self.batch_size}")
        check_threads(self.threads)


def run_profile(cfg: ProfileConfig, *, progress: Emit | None = None):
    """Profile the variant; return the stored run and its profile summary."""
    run_cfg = RunConfig(
        model=cfg.model, weights=cfg.weights, num_classes=cfg.num_classes,
        image_size=cfg.image_size, variants=[cfg.variant], batch_sizes=[cfg.batch_size],
        device=cfg.device, threads=cfg.threads, scenario="profile", repeats=1,
        executor=cfg.executor, name=cfg.name,
        settings={"iters": cfg.iters, "warmup": cfg.warmup, "top": cfg.top})
    rec = execute(run_cfg, kind="profile", header={"profile": asdict(cfg)},
                  progress=progress)
    done = [c for c in rec.cells if c.ok]
    if not done:
        error = rec.cells[0].error if rec.cells else "nothing was profiled"
        rec.data["error"] = error
        rec.finish("failed")
        raise ProfileError(f"cannot profile {cfg.variant}: {error}")
    rec.data["profiles"] = [c.extra["profile"] for c in done]
    rec.save()
    return rec, rec.data["profiles"][0]
