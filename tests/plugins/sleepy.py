"""A runtime with a known service time, registered through the real registries like any
other plugin (``DENSEBENCH_PLUGINS=.../tests/plugins/sleepy.py``).

Its session sleeps ``base_ms + per_image_ms * batch`` per call and returns the model's own
logits (eager fp32's: pool-tiny's cost microseconds), so what a scenario or the store does
with it can be checked against arithmetic, and its parity holds as a real fp32 runtime's. It is
never a stand-in for a runtime under test. ``pool-tiny`` is a model cheap enough for runs
of hundreds of cells (its fp32 reference costs microseconds).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

import densebench.devices
from densebench.backends import Backend, Session, register_backend
from densebench.errors import bad_setting
from densebench.imaging.decoders import PillowDecoder, register_decoder
from densebench.measure.stats import summarize
from densebench.models import register_model
from densebench.parity import fixed_input
from densebench.results.schema import Cell
from densebench.scenarios import Scenario, duration_field, register_scenario
from densebench.variants import Variant, register_variant

if os.environ.get("DENSEBENCH_TEST_PRETEND_CUDA") == "1":
    # the suite's pretend-CUDA switch (tests/conftest.py), in every process the tests start:
    # densebench is told a GPU is visible, so --device auto picks cuda as on a GPU host
    densebench.devices.cuda_available = lambda: True


@register_model("pool-tiny", default_image_size=8,
                description="test model: global average pool and one linear layer")
def pool_tiny(num_classes: int = 1000) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))


class ExportProbe(nn.Module):
    """pool-tiny whose export (torch.export, TorchScript tracing) is slow or fails when
    $EXPORT_PROBE says so (``slow``: a minute; ``fail``: an error), while eager runs as
    usual: what a run does with an export that takes long or breaks."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.net = pool_tiny(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            how = os.environ.get("EXPORT_PROBE", "")
            if how == "fail":
                raise RuntimeError("EXPORT_PROBE: this model cannot be exported")
            if how == "slow":
                time.sleep(60)
            if how.startswith("block:"):  # block:FILE: in the export, for a test to interrupt
                _arrived(how.removeprefix("block:"))
        return self.net(x)


@register_model("export-probe", default_image_size=8,
                description="test model: pool-tiny whose export is slow or fails on demand")
def export_probe(num_classes: int = 1000) -> nn.Module:
    return ExportProbe(num_classes)


@dataclass
class SleepSession(Session):
    base_ms: float = 0.0
    per_image_ms: float = 0.0
    num_classes: int = 1000
    module: nn.Module | None = None  # the model itself: the logits it returns
    calls: int = 0  # so far: SLEEPY_BLOCK=VARIANT:callN:FILE blocks the N-th

    def service_ms(self, batch: int) -> float:
        return self.base_ms + self.per_image_ms * batch

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        block_here(self.label.partition(":")[0], f"call{self.calls}")
        time.sleep(self.service_ms(len(x)) * self.slowdown() / 1e3)
        if self.module is None:
            return torch.zeros(len(x), self.num_classes)
        with torch.inference_mode():
            return self.module(x)

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def slowdown(self) -> float:
        """$SLEEPY_SLOW_WHEN=VARIANT:FILE:FACTOR: while FILE exists, a session of VARIANT
        runs FACTOR times slower (a host that gets busy part way through a run)."""
        variant, _, rest = os.environ.get("SLEEPY_SLOW_WHEN", "").partition(":")
        path, _, factor = rest.rpartition(":")
        if variant == self.label.partition(":")[0] and os.path.exists(path):
            return float(factor)
        return 1.0


def block_here(variant: str, phase: str) -> None:
    """With $SLEEPY_BLOCK=VARIANT:PHASE:FILE, a worker that reaches PHASE for VARIANT
    (``prepare``, or ``callN``: the session's N-th call) writes FILE (its pid) and blocks
    there until it is killed: a test interrupts the run at a point it knows, instead of
    guessing it with a sleep."""
    spec = os.environ.get("SLEEPY_BLOCK", "")
    want_variant, _, rest = spec.partition(":")
    want_phase, _, path = rest.partition(":")
    if want_variant == variant and want_phase == phase and path:
        _arrived(path)


def _arrived(path: str) -> None:
    """Write ``path`` (this pid), atomically, then block until killed or interrupted."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    while True:
        time.sleep(1)


def _next_process_index() -> int:
    with open(os.environ["SLEEPY_PROCESS_COUNTER"], "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = len(f.read())
        f.write(".")
    return n


@register_backend
class SleepBackend(Backend):
    NAME = "sleep"
    DESCRIPTION = "test runtime: sleeps a known time per batch"

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        # SLEEPY_SCALE: a real slowdown (2 = twice as slow). SLEEPY_PROCESS_FACTORS: the
        # n-th process to prepare (counted in the file $SLEEPY_PROCESS_COUNTER) runs its
        # own factor slower, as compilation or memory layout make processes differ, while
        # iterations within a process stay alike; fixed factors, so tests never draw a
        # spread too small to see
        if os.environ.get("SLEEPY_FAIL") == variant.name:  # a runtime that breaks here
            raise RuntimeError(f"{variant.name} failed to load (SLEEPY_FAIL)")
        if os.environ.get("SLEEPY_CRASH") == variant.name:  # one that kills its process
            os._exit(139)
        block_here(variant.name, "prepare")
        scale = float(os.environ.get("SLEEPY_SCALE", "1"))
        if factors := os.environ.get("SLEEPY_PROCESS_FACTORS"):
            factors = [float(f) for f in factors.split(",")]
            scale *= factors[_next_process_index() % len(factors)]
        return SleepSession(label=variant.label, device=device, options=dict(variant.options),
                            base_ms=variant.options["base_ms"] * scale,
                            per_image_ms=variant.options["per_image_ms"] * scale,
                            num_classes=loaded.num_classes, module=loaded.module.eval())

    def supported(self, variant, device: str) -> str | None:
        # "needs": a CPU feature this machine may lack, read from $SLEEPY_FLAGS the way a
        # real backend reads the CPU's flags (a cluster's nodes can differ)
        need = variant.options.get("needs")
        if need and need not in os.environ.get("SLEEPY_FLAGS", "").split(","):
            return f"{variant.name} needs the {need} feature, which this machine lacks"
        return None if device == "cpu" else f"{variant.name} runs on the CPU only"

    def versions(self) -> dict[str, str | None]:
        return {"sleepy": "1.0"}


register_variant(Variant("sleep", "sleep", "test: sleeps 4 ms + 1 ms per image",
                         options={"base_ms": 4.0, "per_image_ms": 1.0}))
register_variant(Variant("sleep-fast", "sleep", "test: sleeps 0.02 ms per batch",
                         options={"base_ms": 0.02, "per_image_ms": 0.0}))
register_variant(Variant("sleep-bf16", "sleep", "test: sleeps 2 ms, where $SLEEPY_FLAGS has bf16",
                         precision="bf16",
                         options={"base_ms": 2.0, "per_image_ms": 0.0, "needs": "bf16"}))


@register_decoder
class SlowDecoder(PillowDecoder):
    """Pillow, after a known sleep per image ($SLEEPY_DECODE_MS, 8 ms by default): a
    decoder slow enough to be the JPEG path's bottleneck, by arithmetic."""

    NAME = "slow-pil"
    DESCRIPTION = "test decoder: Pillow after a known sleep per image"

    def decode(self, data: bytes, device: str):
        time.sleep(float(os.environ.get("SLEEPY_DECODE_MS", "8")) / 1e3)
        return super().decode(data, device)


@dataclass
class PerturbedSession(Session):
    """The model itself, eager fp32, with each logit moved by ``relative`` times the
    largest one: a runtime whose answers are off by a known amount."""

    module: nn.Module | None = None
    relative: float = 0.0

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(x).float()
        g = torch.Generator().manual_seed(7)
        sign = torch.randint(0, 2, out.shape, generator=g).float() * 2 - 1
        return out + sign * self.relative * out.abs().max()

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        return out


@register_backend
class PerturbBackend(Backend):
    NAME = "perturb"
    DESCRIPTION = "test runtime: eager fp32 with every logit moved by a known amount"

    def prepare(self, variant, loaded, device, *, artifact=None, threads=None,
                profile_dir=None):
        return PerturbedSession(label=variant.label, device=device,
                                options=dict(variant.options), module=loaded.module.eval(),
                                relative=variant.options["relative"])

    def supported(self, variant, device: str) -> str | None:
        return None if device == "cpu" else f"{variant.name} runs on the CPU only"

    def versions(self) -> dict[str, str | None]:
        return {}


register_variant(Variant("perturbed", "perturb",
                         "test: eager fp32, logits moved by 1e-3 of the largest (beyond fp32's "
                         "1e-4)", options={"relative": 1e-3}))


@dataclass
class OneCallSettings:
    """The plugin scenario's own settings: set with --set calls=3, or a sweep's [settings]."""

    calls: int = 1  # timed end-to-end calls per cell
    pause_ms: float = duration_field(0.0, "ms")  # between calls

    def __post_init__(self):
        if self.calls < 1:
            raise bad_setting("calls", f"must be at least 1, got {self.calls}")


@register_scenario
class OneCall(Scenario):
    """A second scenario beside closed-loop: ``calls`` timed end-to-end calls per cell,
    ``pause_ms`` apart; e2e cells only, one worker process per cell by default."""

    NAME = "one-call"
    DESCRIPTION = "test scenario: a few timed end-to-end calls per cell"
    Settings = OneCallSettings
    MODES = ("e2e",)  # it times end-to-end calls only
    DEFAULT_REPEATS = 1

    def run(self, prepared, cells, settings, emit, workdir=None):
        for planned in cells:
            x = fixed_input(planned.batch_size, prepared.image_size)
            samples = []
            for _ in range(settings["calls"]):
                t0 = time.perf_counter_ns()
                prepared.session.e2e(x)
                samples.append((time.perf_counter_ns() - t0) / 1e6)
                time.sleep(settings["pause_ms"] / 1e3)
            cell = Cell.from_dict({**planned.to_dict(), "status": "ok", "samples_ms": samples,
                                   "stats": summarize(samples, planned.batch_size)})
            emit({"event": "cell", "cell": cell.to_dict()})


def crash(payload: dict, emit) -> None:
    """A job target that reports its first planned cell, then dies like a segfault would."""
    first = Cell.from_dict(payload["cells"][0])
    emit({"event": "cell", "cell": Cell.from_dict({**first.to_dict(), "status": "ok"})
          .to_dict()})
    os._exit(payload.get("exit_code", 3))
