"""A run's configuration, checked before anything runs (``RunConfig``).

Composed of what every cell shares (the model reference, variants, batch sizes, modes,
device, threads), the closed-loop measurement, the repetition and the executor, and the
scenario's own settings by name (``settings``), which the scenario reads into its own
``Settings`` dataclass (``scenarios/``). The CLI maps its flags onto it in one place per
command; sweeps build one per cell group; a job carries it across processes as plain data
(``to_dict``), and the worker checks it again as it reads it back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from densebench.backends import get_backend
from densebench.calibration import Calibration
from densebench.errors import ConfigError, bad_setting, check_threads
from densebench.executors import get_executor
from densebench.exporters import ExportSpec
from densebench.measure.engine import MODES, StopRule, Warmup
from densebench.prepare import ModelRef
from densebench.scenarios import check_batch_sizes, get_scenario
from densebench.variants import expand


@dataclass(init=False)
class RunConfig:
    """A run's configuration: the model, the cells every scenario shares (variants, batch
    sizes, modes, device, threads), the closed-loop measurement, the repetition and the
    executor, and ``settings``: the scenario's own, by name (its ``Settings`` dataclass
    reads and checks them). A scenario's settings may also be given as keywords
    (``RunConfig(scenario="server", target_qps=20)``), as the Python API always took them.
    """

    model: str = "densenet121"
    weights: str = "random"
    num_classes: int | None = None
    image_size: int | None = None
    calib: str | None = None  # int8 calibration data: synthetic | imagefolder:PATH
    variants: list[str] = field(default_factory=lambda: ["eager"])
    compile_modes: list[str] = field(default_factory=lambda: ["default"])
    batch_sizes: list[int] | None = None  # fixed batches; None: [1]
    modes: list[str] | None = None  # None: the scenario's (model and e2e; LoadGen: e2e)
    device: str = "auto"
    threads: int | None = None  # intra-op threads (per instance in LoadGen scenarios)
    scenario: str = "closed-loop"
    settings: dict = field(default_factory=dict)  # the scenario's own settings, by name
    # closed-loop measurement
    warmup: str = "3"
    min_iters: int = 10
    min_time: float = 3.0
    iters: int | None = None
    max_time: float | None = None
    # the JPEG path (e2e-jpeg mode: densebench.imaging)
    input: str | None = None  # jpeg:PATH | imagefolder:PATH | jpeg:synthetic[:WxH]
    decoder: str = "pil"  # see densebench.imaging.decoders
    decode_workers: list[int] | None = None  # e2e-jpeg cells: one per count; None: [0]
    strict: bool = False  # an image the decoder cannot decode is an error, not counted
    # repetition: worker processes per cell, rounds interleaved across variants
    repeats: int | None = None  # None: the scenario's default
    # where
    timeout: float = 1800.0
    executor: str = "subprocess"
    name: str | None = None

    def __init__(self, **kw):
        own = {f.name: f for f in dataclasses.fields(RunConfig)}
        settings = dict(kw.pop("settings", None) or {})
        # a scenario's settings given as keywords; None and False are "not given"
        settings.update({k: kw.pop(k) for k in list(kw) if k not in own
                         and kw[k] is not None and kw[k] is not False})
        for k in [k for k in kw if k not in own]:
            del kw[k]
        for name, f in own.items():
            if name == "settings":
                continue
            if name in kw:
                value = kw[name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, name, value)
        self.settings = settings
        self.__post_init__()

    def __post_init__(self):
        if not self.variants:
            raise bad_setting("variants", "is empty: name at least one variant (or all)")
        check_batch_sizes("batch_sizes", self.batch_sizes)
        for m in self.modes or []:
            if m not in MODES:
                raise bad_setting("modes", f"has unknown mode {m!r}: choose from "
                                  f"{', '.join(MODES)}")
        check_threads(self.threads)
        if self.repeats is not None and not 1 <= self.repeats <= 100:
            raise bad_setting("repeats", f"must be between 1 and 100, got {self.repeats}")
        if not self.timeout > 0:
            raise bad_setting("timeout", f"must be positive, got {self.timeout}")
        if self.image_size is not None and self.image_size < 1:
            raise bad_setting("image_size", f"must be at least 1, got {self.image_size}")
        if not math.isfinite(self.min_time):
            raise bad_setting("min_time", f"must be a finite number, got {self.min_time}")
        if self.max_time is not None and not math.isfinite(self.max_time):
            raise bad_setting("max_time", f"must be a finite number, got {self.max_time}")
        Warmup.parse(self.warmup)
        self.stop_rule()
        scenario = get_scenario(self.scenario)
        self.scenario_settings = scenario.configure(self.settings)
        get_executor(self.executor)
        if self.calib is not None:
            self._check_calibration()
        scenario.check(self)
        self._check_jpeg()

    def _check_jpeg(self) -> None:
        """The JPEG path's settings: readable, and given only where a cell uses them."""
        from densebench.imaging.decoders import get_decoder
        from densebench.imaging.sources import parse

        if self.input is not None:
            parse(self.input)
        get_decoder(self.decoder)
        workers = self.decode_workers
        if workers is not None:
            if not workers:
                raise bad_setting("decode_workers", "is empty: give counts, e.g. 0,1,2")
            for n in workers:
                if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 256:
                    raise bad_setting("decode_workers", f"must be whole numbers from 0 to "
                                      f"256, got {n}")
            if len(set(workers)) != len(workers):
                raise bad_setting("decode_workers", "names a count more than once: each "
                                  "is one cell")
        if "e2e-jpeg" not in self.cell_modes():
            given = [name for name, v in (("input", self.input),
                                          ("decode_workers", workers),
                                          ("decoder", self.decoder != "pil" or None),
                                          ("strict", self.strict or None)) if v is not None]
            if given:
                raise bad_setting(given[0], "is a setting of the JPEG path: add the "
                                  "e2e-jpeg mode (--mode e2e-jpeg)")

    def jpeg_input(self) -> str:
        """The JPEG path's images: --input, else a LoadGen run's labelled --data, else
        densebench's synthetic JPEGs."""
        data = self.settings.get("data")
        if self.input is None and isinstance(data, str) and data.startswith("imagefolder:"):
            return data
        return self.input or "jpeg:synthetic"

    def _check_calibration(self) -> None:
        """A missing folder, or fewer images than a batch calibrates on, is refused before
        anything runs: PT2E calibrates at the cell's batch size, the artifacts in batches
        of ``ExportSpec.calib_batch_size``."""
        calib = Calibration.parse(self.calib)
        chosen, _ = expand(self.variants, self.compile_modes, None)
        int8 = [v for v in chosen if v.precision == "int8"]
        if calib.source == "synthetic" or not int8:
            return
        need = ExportSpec.calib_batch_size
        if any(get_backend(v.backend).CALIBRATED for v in int8):
            need = max(need, *self.cell_batch_sizes())
        have = calib.count()
        if have < need:
            raise ConfigError(f"calib: the calibration set ({calib.label}) has {have} images, "
                              f"fewer than the batch of {need}: give more images",
                              setting="calib")

    def to_dict(self) -> dict:
        """Plain data (the job payload, the run file); ``RunConfig(**d)`` reads it back."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def scenario_object(self):
        return get_scenario(self.scenario)

    def cell_batch_sizes(self) -> list[int]:
        """Batch sizes of the cells: fixed batches, or the batcher's max batch."""
        return self.scenario_object.batch_sizes(self)

    def effective_repeats(self) -> int:
        return self.scenario_object.repeats(self)

    def cell_modes(self) -> list[str]:
        return self.scenario_object.modes(self)

    def stop_rule(self) -> StopRule:
        return StopRule(self.min_iters, self.min_time, self.iters, self.max_time)

    def model_ref(self) -> ModelRef:
        return ModelRef(self.model, self.weights, self.num_classes, self.image_size,
                        self.calib)
