"""Sweeps: a grid of cells described in a TOML file, run here or across a Ray cluster, and
stored as one run (kind ``sweep``).

A sweep file names its axes as top-level arrays (``models``, ``variants``, ``batch_sizes``,
``image_sizes``, ``threads``, ``modes``, ``compile_modes``, ``scenarios``, ``devices``),
``weights`` as a scalar, a ``[measure]`` table (the stop rule, ``timeout``, ``repeats``), a
``[loadgen]`` table for LoadGen scenarios' settings, ``[[exclude]]`` and ``[[include]]``
tables, ``[targets]`` (which nodes run which cells) and ``[prices]`` (USD per hour by host:
what a million images cost on each; ``search --price FILE`` reads it too).
``load_sweep(path)`` reads and
checks it; ``Sweep.cells()`` is the expanded grid; ``Sweep.jobs(...)`` the jobs that
measure it: one per (model, image size, threads, scenario, device, variant) and repeat,
each a ``run.measure_variant`` job like ``densebench run``'s, so a sweep's cells are the
same cells as a run's. ``run_sweep`` hands the jobs to an executor (``local``: the
subprocess executor here; ``ray``: a cluster) and stores every cell as it comes back.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from densebench.cost import price_table
from densebench.durations import duration_ms, seconds
from densebench.errors import ConfigError
from densebench.pipeline import MeasureTask
from densebench.scenarios import get_scenario, unknown_setting

# file key -> the cell's field it sets
AXES = {"models": "model", "variants": "variant", "batch_sizes": "batch_size",
        "image_sizes": "image_size", "threads": "threads", "modes": "mode",
        "compile_modes": "compile_mode", "scenarios": "scenario", "devices": "device"}
SCALARS = ("weights", "num_classes", "name")
TABLES = ("measure", "loadgen", "settings", "targets", "prices", "exclude", "include")
MEASURE = ("warmup", "min_time", "min_iters", "iters", "max_time", "timeout", "repeats")
DURATIONS = ("min_time", "max_time", "timeout")  # [measure] keys that take a duration
# [loadgen] key -> (RunConfig field, takes a duration with its unit)
LOADGEN = {"target_qps": ("target_qps", False), "latency_budget": ("latency_budget_ms", True),
           "percentile": ("percentile", False), "duration": ("duration", True),
           "min_queries": ("min_queries", False), "samples": ("samples", False),
           "batch_timeout": ("batch_timeout_ms", True), "instances": ("instances", False),
           "samples_per_query": ("samples_per_query", False),
           "expected_qps": ("expected_qps", False), "data": ("data", False)}
TARGETS = ("placement", "labels", "device", "variant")
PLACEMENTS = ("each", "any")  # each: every node that may runs the cell; any: one of them
DEFAULTS = {"models": ["densenet121"], "variants": ["eager"], "batch_sizes": [1],
            "image_sizes": [None], "threads": [None], "modes": ["model"],
            "compile_modes": ["default"], "scenarios": ["closed-loop"], "devices": ["cpu"]}
MATCH_KEYS = tuple(AXES.values())  # what [[exclude]] and [[include]] tables may name
SWEEP_EXECUTORS = {"local": "subprocess"}  # sweep names for the registered executors
CPU_GMACS_PER_S = 20.0  # eager fp32 on a 2-core EPYC: a time estimate, not a measurement


class SweepError(ConfigError):
    """A sweep file or request that cannot be run as written."""


@dataclass(frozen=True)
class SweepCell:
    """One point of the grid (the variant label carries its compile mode)."""

    model: str
    variant: str
    batch_size: int
    image_size: int | None
    threads: int | None
    mode: str
    scenario: str
    device: str

    def group(self) -> tuple:
        """The cells one worker process measures: all but batch size and mode."""
        return (self.model, self.image_size, self.threads, self.scenario, self.device,
                self.variant)


@dataclass
class Sweep:
    path: str
    spec: dict  # the file's content, as parsed (stored in the run, used by --resume)
    axes: dict  # axis -> values (defaults filled in)
    weights: str = "random"
    num_classes: int | None = None
    name: str | None = None
    measure: dict = field(default_factory=dict)
    loadgen: dict = field(default_factory=dict)  # [loadgen]: LoadGen setting -> value
    settings: dict = field(default_factory=dict)  # [settings]: any scenario's, by name
    targets: dict = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)  # [prices]: host -> USD per hour
    exclude: list[dict] = field(default_factory=list)
    include: list[dict] = field(default_factory=list)

    # ------------------------------------------------------------------ the grid

    def varying(self) -> list[str]:
        """Cell fields beyond a run cell's key that this sweep varies (they join the key)."""
        return [AXES[a] for a in ("image_sizes", "threads") if len(self.axes[a]) > 1]

    def cells(self) -> list[SweepCell]:
        """The grid, minus exclusions, plus inclusions, in file order, without repeats."""
        grid = [self._cell(dict(zip(MATCH_KEYS, combo, strict=True)))
                for combo in itertools.product(*(self.axes[a] for a in AXES))]
        out = [c for c in grid if not any(_matches(c, ex) for ex in self.exclude)]
        for inc in self.include:
            values = {k: (v if isinstance(v, list) else [v]) for k, v in inc.items()}
            for combo in itertools.product(*(values.get(f) or [self.axes[a][0]]
                                             for a, f in AXES.items())):
                out.append(self._cell(dict(zip(MATCH_KEYS, combo, strict=True))))
        seen: set = set()
        unique = []
        for c in out:
            if c not in seen:
                seen.add(c)
                unique.append(c)
        if not unique:
            raise SweepError(f"{self.path}: the grid is empty after the [[exclude]] tables: "
                             "remove an exclusion or add an axis value")
        return unique

    def _cell(self, d: dict) -> SweepCell:
        from densebench.variants import get_variant

        v = get_variant(d["variant"])
        label = v.with_mode(d["compile_mode"]).label if v.modes and ":" not in d["variant"] \
            else v.label
        modes = get_scenario(d["scenario"]).MODES  # LoadGen answers e2e only
        mode = modes[0] if modes is not None and d["mode"] not in modes else d["mode"]
        return SweepCell(d["model"], label, d["batch_size"], d["image_size"], d["threads"],
                         mode, d["scenario"], d["device"])

    # ------------------------------------------------------------------ the jobs

    def repeats(self) -> int:
        return int(self.measure.get("repeats") or 1)

    def config(self, group: list[SweepCell]):
        """The RunConfig a group of cells is measured with (checked as `run` checks it)."""
        from densebench.run import RunConfig

        c = group[0]
        batches = sorted({g.batch_size for g in group})
        scenario = get_scenario(c.scenario)
        dynamic = scenario.BATCH_AXIS != "batch_sizes"  # the batcher's largest batch
        # the file's scenario settings that this scenario has; a sweep's cells have their
        # threads each, never refused for the cores they add up to
        own = {f.name for f in dataclasses.fields(scenario.Settings)}
        settings = {k: v for k, v in {"oversubscribe": True, **self.loadgen,
                                      **self.settings}.items() if k in own}
        if dynamic:
            settings[scenario.BATCH_AXIS] = batches
        m = self.measure
        try:
            return RunConfig(
                model=c.model, weights=self.weights, num_classes=self.num_classes,
                image_size=c.image_size, variants=[c.variant], device=c.device,
                threads=c.threads, scenario=c.scenario, settings=settings,
                batch_sizes=None if dynamic else batches,
                modes=None if scenario.MODES is not None else sorted({g.mode for g in group}),
                warmup=str(m.get("warmup", "3")), min_iters=int(m.get("min_iters", 10)),
                min_time=float(m.get("min_time", 3.0)), iters=m.get("iters"),
                max_time=m.get("max_time"), timeout=float(m.get("timeout", 1800.0)),
                repeats=self.repeats())
        except ConfigError as e:
            raise SweepError(f"{self.path}: {e}", setting=e.setting) from None

    def groups(self) -> list[list[SweepCell]]:
        groups: dict[tuple, list[SweepCell]] = {}
        for c in self.cells():
            groups.setdefault(c.group(), []).append(c)
        return list(groups.values())

    def jobs(self, run_dir: Path, host: dict | None) -> list:
        """The jobs, rounds interleaved (every group once, then again for each repeat).
        ``host``: stamped on the planned cells (an executor with nodes stamps its own)."""
        from densebench.scenarios import get_scenario
        from densebench.variants import get_variant

        varying = self.varying()
        planned = []
        for group in self.groups():
            cfg = self.config(group)
            c = group[0]
            v = get_variant(c.variant)
            settings = get_scenario(c.scenario).record(cfg, c.threads)
            labels = self.labels_for(c)
            planned.append((group, cfg, v, settings, labels))
        jobs = []
        for r in range(self.repeats()):
            for group, cfg, v, settings, labels in planned:
                c = group[0]
                cells = [_cell(g, v, settings, host, r, varying) for g in group]
                name = "-".join(str(x) for x in (
                    c.variant,
                    c.model if len(self.axes["models"]) > 1 else None,
                    c.device if len(self.axes["devices"]) > 1 else None,
                    c.scenario if len(self.axes["scenarios"]) > 1 else None,
                    f"{c.image_size}px" if "image_size" in varying else None,
                    f"t{c.threads}" if "threads" in varying else None,
                    f"r{r + 1}" if self.repeats() > 1 else None) if x is not None)
                env = {}
                if c.threads:
                    env.update(OMP_NUM_THREADS=str(c.threads), MKL_NUM_THREADS=str(c.threads))
                if c.device == "cpu":
                    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU cell sees no GPU
                task = MeasureTask(config=asdict(cfg), variant=c.variant, device=c.device,
                                   threads=c.threads, settings=settings, cells=cells,
                                   run_dir=str(run_dir), skip_unsupported=True)
                jobs.append(task.job(name, timeout=cfg.timeout, env=env, needs={
                    "gpu": c.device.startswith("cuda"), "labels": labels}))
        seen: dict[str, int] = {}
        for j in jobs:  # names key log files: keep them apart
            seen[j.name] = seen.get(j.name, 0) + 1
            if seen[j.name] > 1:
                j.name += f"-{seen[j.name]}"
        return jobs

    def labels_for(self, c: SweepCell) -> list[list[str]]:
        """Node labels a cell needs: one of each list ([targets] labels, device, variant)."""
        t = self.targets
        need = []
        if t.get("labels"):
            need.append(list(t["labels"]))
        dev = (t.get("device") or {}).get(c.device.split(":")[0])
        if dev:
            need.append(list(dev))
        base = c.variant.partition(":")[0]
        var = (t.get("variant") or {}).get(c.variant) or (t.get("variant") or {}).get(base)
        if var:
            need.append(list(var))
        return need

    @property
    def placement(self) -> str:
        return self.targets.get("placement", "each")

    def estimate_s(self, slots: int = 1, nodes_per_job: float = 1.0) -> float:
        """A rough time for the whole sweep, spread over ``slots``: each job's start (worker,
        model, export, compile) plus each cell's warm-up and stop rule, an iteration costed
        from the model's MACs at ``CPU_GMACS_PER_S``."""
        from densebench.backends import get_backend
        from densebench.measure.engine import Warmup
        from densebench.models import model_stats
        from densebench.variants import get_variant

        m = self.measure
        min_time, min_iters = float(m.get("min_time", 3.0)), int(m.get("min_iters", 10))
        warm = Warmup.parse(str(m.get("warmup", "3")))
        gmacs: dict = {}
        total = 0.0
        for group in self.groups():
            c = group[0]
            key = (c.model, c.image_size)
            if key not in gmacs:
                try:
                    gmacs[key] = model_stats(c.model, c.image_size or 224).gmacs
                except Exception:
                    gmacs[key] = 3.0
            v = get_variant(c.variant)
            start = 8.0 + (60.0 if get_backend(v.backend).FIRST_CALL == "compile" else 0.0) \
                + (20.0 if v.artifact else 0.0)
            for g in group:
                if get_scenario(c.scenario).BATCH_AXIS != "batch_sizes":  # LoadGen's
                    total += float(self.loadgen.get("duration") or 10.0) + 5.0
                    continue
                it = gmacs[key] * g.batch_size / CPU_GMACS_PER_S
                if c.device.startswith("cuda"):
                    it /= 100
                warmup = warm.seconds if warm.seconds is not None else warm.count * it
                timed = it * m["iters"] if m.get("iters") else max(min_time, min_iters * it)
                if m.get("max_time") is not None:
                    timed = min(timed, float(m["max_time"]))
                total += warmup + timed
            total += start
        return total * self.repeats() * nodes_per_job / max(slots, 1)


def _cell(g: SweepCell, v, settings: dict, host: dict | None, repeat: int,
          varying: list[str]) -> dict:
    from densebench.results.schema import Cell

    return Cell(model=g.model, variant=g.variant, batch_size=g.batch_size, mode=g.mode,
                device=g.device, scenario=g.scenario, host=dict(host or {}), repeat=repeat,
                axes={f: getattr(g, f) for f in varying}, status="planned",
                precision=v.precision, backend=v.backend, description=v.description,
                threads=g.threads, scenario_settings=settings).to_dict()


def _matches(c: SweepCell, table: dict) -> bool:
    for k, want in table.items():
        wants = want if isinstance(want, list) else [want]
        have = getattr(c, k) if k != "compile_mode" else c.variant.partition(":")[2] or None
        if k == "variant":
            if not (have in wants or have.partition(":")[0] in wants):
                return False
        elif have not in wants:
            return False
    return True


# ============================================================================ reading


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every problem is a SweepError naming the file."""
    import tomllib

    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SweepError(f"sweep file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"cannot read sweep file {p}: {getattr(e, 'strerror', None) or e}") \
            from None
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{p}: not valid TOML: {e}") from None
    return parse_sweep(spec, str(p))


def parse_sweep(spec: dict, where: str = "sweep") -> Sweep:
    unknown = [k for k in spec if k not in AXES and k not in SCALARS and k not in TABLES]
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r}: the axes are "
                         f"{', '.join(AXES)}; also {', '.join(SCALARS)} and the tables "
                         f"[{'], ['.join(TABLES[:3])}], [[exclude]], [[include]]")
    axes = {}
    for axis, default in DEFAULTS.items():
        values = spec.get(axis, default)
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: {axis} must be a non-empty array, as in "
                             f"{axis} = {_example(axis)}")
        axes[axis] = [_check_value(axis, v, where) for v in values] if axis in spec \
            else values
        if len(set(map(str, axes[axis]))) != len(axes[axis]):
            raise SweepError(f"{where}: {axis} names a value more than once")
    measure = dict(_table(spec, "measure", where))  # the spec itself stays as written
    for k, v in measure.items():
        if k not in MEASURE:
            raise SweepError(f"{where}: [measure] has unknown key {k!r}: choose from "
                             f"{', '.join(MEASURE)}")
        if k in DURATIONS:  # seconds, or a duration with its unit ("500ms")
            try:
                measure[k] = seconds(v, k)
            except ConfigError as e:
                raise SweepError(f"{where}: [measure] {e}") from None
        elif k != "warmup" and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and math.isfinite(v) and v > 0):
            raise SweepError(f"{where}: [measure] {k} must be a positive number, got {v!r}")
    loadgen = {}
    for k, v in _table(spec, "loadgen", where).items():
        if k not in LOADGEN:
            raise SweepError(f"{where}: [loadgen] has unknown key {k!r}: choose from "
                             f"{', '.join(LOADGEN)}")
        fld, is_duration = LOADGEN[k]
        if is_duration:
            ms = duration_ms(str(v), fld, allow_zero=(k == "batch_timeout"))
            v = ms / 1e3 if k == "duration" else ms
        loadgen[fld] = v
    settings = dict(_table(spec, "settings", where))
    for k in settings:  # a setting of at least one of the sweep's scenarios
        owners = [s for s in axes["scenarios"] if k in
                  {f.name for f in dataclasses.fields(get_scenario(s).Settings)}]
        if not owners:
            raise SweepError(f"{where}: [settings] {unknown_setting(k, axes['scenarios'][0])}")
    targets = _table(spec, "targets", where)
    for k in targets:
        if k not in TARGETS:
            raise SweepError(f"{where}: [targets] has unknown key {k!r}: choose from "
                             f"{', '.join(TARGETS)}")
    if targets.get("placement", "each") not in PLACEMENTS:
        raise SweepError(f"{where}: [targets] placement must be one of "
                         f"{', '.join(PLACEMENTS)}, got {targets['placement']!r}")
    if not _labels(targets.get("labels", [])):
        raise SweepError(f"{where}: [targets] labels must be an array of node labels")
    for sub in ("device", "variant"):
        table = targets.get(sub, {})
        if not isinstance(table, dict) or not all(_labels(x) for x in table.values()):
            raise SweepError(f"{where}: [targets.{sub}] maps a {sub} to an array of node "
                             f"labels, as in [targets.{sub}] {_example(sub)}")
        for key in table:
            _check_value("devices" if sub == "device" else "variants", key, where)
    try:
        prices = price_table(spec.get("prices", {}), where)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    exclude = _tables(spec, "exclude", where)
    include = _tables(spec, "include", where)
    weights = spec.get("weights", "random")
    if not isinstance(weights, str):
        raise SweepError(f"{where}: weights must be a string (random[:SEED], imagenet or a "
                         "path)")
    sweep = Sweep(path=where, spec=spec, axes=axes, weights=weights,
                  num_classes=spec.get("num_classes"), name=spec.get("name"),
                  measure=measure, loadgen=loadgen, settings=settings, targets=targets,
                  prices=prices, exclude=exclude, include=include)
    sweep.cells()  # an empty grid is refused now
    for group in sweep.groups():
        sweep.config(group)  # each combination checked as `run` would check it
    return sweep


def _labels(x) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) and s for s in x)


def _example(axis: str) -> str:
    return {"models": '["densenet121"]', "variants": '["eager", "onnxruntime"]',
            "batch_sizes": "[1, 16]", "image_sizes": "[224]", "threads": "[2]",
            "modes": '["model"]', "compile_modes": '["default"]',
            "scenarios": '["closed-loop"]', "devices": '["cpu"]',
            "device": 'cuda = ["gpu"]', "variant": 'openvino = ["intel"]'}.get(axis, "[...]")


def _table(spec: dict, name: str, where: str) -> dict:
    t = spec.get(name, {})
    if not isinstance(t, dict):
        raise SweepError(f"{where}: {name} must be a table ([{name}])")
    return t


def _tables(spec: dict, name: str, where: str) -> list[dict]:
    ts = spec.get(name, [])
    if not isinstance(ts, list) or not all(isinstance(t, dict) for t in ts):
        raise SweepError(f"{where}: {name} must be tables ([[{name}]])")
    for t in ts:
        if not t:
            raise SweepError(f"{where}: an empty [[{name}]] table: name at least one of "
                             f"{', '.join(MATCH_KEYS)}")
        for k, v in t.items():
            if k not in MATCH_KEYS:
                raise SweepError(f"{where}: [[{name}]] has unknown key {k!r}: choose from "
                                 f"{', '.join(MATCH_KEYS)}")
            axis = next(a for a, f in AXES.items() if f == k)
            for one in (v if isinstance(v, list) else [v]):
                _check_value(axis, one, where, in_table=name)
    return ts


def _check_value(axis: str, v, where: str, in_table: str | None = None):
    """One axis value, checked; the valid ones are listed when it is not."""
    from densebench.measure.engine import MODES
    from densebench.models import list_models
    from densebench.scenarios import scenarios
    from densebench.variants import GROUPS, VariantError, get_variant, variants

    at = f"[[{in_table}]] {AXES[axis]}" if in_table else axis
    if axis in ("batch_sizes", "image_sizes", "threads"):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise SweepError(f"{where}: {at} must be positive integers, got {v!r}")
        if axis == "threads" and v > 1024:
            raise SweepError(f"{where}: {at}: {v} threads is more than any machine has "
                             "(at most 1024)")
        return v
    if not isinstance(v, str):
        raise SweepError(f"{where}: {at} must be strings, got {v!r}")
    if axis == "models":
        known = list_models(include_torchvision=True)
        if v not in known:
            raise SweepError(f"{where}: {at}: unknown model {v!r}: see `densebench models` "
                             f"(registered: {', '.join(list_models())})")
    elif axis == "variants":
        if v in GROUPS:
            raise SweepError(f"{where}: {at}: name the variants (a sweep runs on machines "
                             f"that differ): choose from {', '.join(variants())}")
        try:
            get_variant(v)
        except VariantError as e:
            raise SweepError(f"{where}: {at}: {e}") from None
    elif axis == "modes":
        if v not in MODES:
            raise SweepError(f"{where}: {at}: unknown mode {v!r}: choose from "
                             f"{', '.join(MODES)}")
    elif axis == "compile_modes":
        offered = sorted({m for x in variants().values() for m in x.modes})
        if v not in offered:
            raise SweepError(f"{where}: {at}: unknown compile mode {v!r}: choose from "
                             f"{', '.join(offered)}")
    elif axis == "scenarios":
        if v not in scenarios():
            raise SweepError(f"{where}: {at}: unknown scenario {v!r}: choose from "
                             f"{', '.join(scenarios())}")
    elif axis == "devices":
        base, _, index = v.partition(":")
        if base not in ("cpu", "cuda") or (index and (base != "cuda" or not index.isdigit())):
            raise SweepError(f"{where}: {at}: unknown device {v!r}: choose from cpu, cuda, "
                             "cuda:N")
    return v


# ============================================================================ running


def run_sweep(sweep: Sweep, *, executor: str = "local", address: str | None = None,
              cells_per_node: int = 1, resume: str | None = None, progress=None,
              store=None):
    """Run ``sweep``'s cells on ``executor``; return the stored run. ``resume``: a stored
    sweep run whose missing and failed cells are run (into that run)."""
    from densebench.environment import fingerprint, host_identity
    from densebench.results.store import RunStore

    emit = progress or (lambda ev: None)
    store = store or RunStore()
    from densebench.executors import done_key, get_executor

    ex = get_executor(SWEEP_EXECUTORS.get(executor, executor), address=address,
                      cells_per_node=cells_per_node)
    # before anything is stored: cells no node can run, an unreachable cluster
    warnings = ex.check(sweep.jobs(Path("."), None))
    if resume is not None:
        rec = store.load(resume)
        if rec.data.get("kind") != "sweep":
            raise SweepError(f"run {rec.id} is a {rec.data.get('kind')} run, not a sweep: "
                             "--resume takes a run that `densebench sweep` stored",
                             setting="resume")
        done = {done_key(c, hostless) for c in rec.cells if c.ok or c.skipped
                for hostless in (False, True)}
        rec.data["status"] = "running"
        rec.data["owner"] = _owner()
        rec.data.setdefault("resumed", []).append(
            {"at": _now(), "executor": ex.describe()})
    else:
        done = set()
        rec = store.create("sweep", sweep.name, {"sweep": sweep.spec, "file": sweep.path,
                                                 "executor": executor},
                           fingerprint(), extra={
                               "command": sys.argv, "scenario": "sweep",
                               "model": {"name": ", ".join(sweep.axes["models"])},
                               "sweep": {"file": sweep.path, "spec": sweep.spec,
                                         "varying": sweep.varying(),
                                         "placement": sweep.placement},
                               "repeats": {"processes_per_cell": sweep.repeats(),
                                           "interleaved": sweep.repeats() > 1,
                                           "independent": True},
                               "skipped": [], "warnings": []})
    rec.data["cluster"] = ex.describe()
    rec.data["warnings"] = sorted(set(rec.data.get("warnings", []) + warnings))
    rec.save()
    for w in warnings:
        emit({"event": "warning", "message": w})
    jobs = sweep.jobs(rec.path, None if ex.PLACES_CELLS else host_identity())
    started = time.time()

    def on_event(ev: dict) -> None:
        from densebench.results.schema import Cell

        kind = ev.get("event")
        if kind == "cell":
            rec.add_cell(Cell.from_dict(ev["cell"]))
        elif kind == "variant":
            rec.data["variants"].setdefault(ev["variant"], ev["info"])
        emit(ev)

    try:
        ex.run_all(jobs, on_event, done=done, placement=sweep.placement,
                    start=lambda n: emit({"event": "start", "run": rec.id,
                                          "path": str(rec.path), "cells": n,
                                          "variants": sorted({
                                              MeasureTask.from_payload(j.payload).variant
                                              for j in jobs}),
                                          "resumed": resume is not None}))
    except KeyboardInterrupt as e:
        from densebench.errors import interrupted

        rec.finish("incomplete")
        raise interrupted(e, f"sweep {rec.id} kept its {sum(c.ok for c in rec.cells)} "
                          f"finished cells and is marked incomplete; `densebench sweep "
                          f"--resume {rec.id}` runs the rest") from None
    finally:
        ex.close()
    from densebench.results.schema import latest

    rec.data["elapsed_s"] = round(time.time() - started, 1)
    rec.cells = latest(rec.cells)  # a resumed cell supersedes its failed record
    missing = [c for c in rec.cells if not (c.ok or c.skipped)]
    rec.finish("complete" if not missing else "incomplete")
    emit({"event": "end", "run": rec.id})
    return rec


def plan(sweep: Sweep, *, executor: str = "local", address: str | None = None,
         cells_per_node: int = 1) -> dict:
    """What ``run_sweep`` would do: every cell, where it would run, the estimated time."""
    import platform

    from densebench.executors import get_executor

    ex = get_executor(SWEEP_EXECUTORS.get(executor, executor), address=address,
                      cells_per_node=cells_per_node)
    try:
        jobs = sweep.jobs(Path("."), None)
        warnings = ex.check(jobs)
        nodes = getattr(ex, "nodes", None)
        rows = []
        slots, per_job = 1, 1.0
        if nodes:
            slots = sum(n.slots for n in nodes)
            fits = [[n for n in nodes if n.fits(j) is None] for j in jobs]
            per_job = 1.0 if sweep.placement == "any" else \
                sum(len(f) for f in fits) / max(len(jobs), 1)
        for i, job in enumerate(jobs):
            task = MeasureTask.from_payload(job.payload)
            if task.cells[0]["repeat"] != 0:
                continue
            if nodes:
                names = [n.describe() for n in fits[i]]
                where = names if sweep.placement == "each" else [f"one of: {', '.join(names)}"]
            else:
                from densebench.backends import get_backend
                from densebench.variants import get_variant

                v = get_variant(task.variant)
                why = get_backend(v.backend).supported(v, task.device)
                where = [platform.node() + (f" (skipped: {why})" if why else "")]
            for c in job.cells:
                rows.append({k: c[k] for k in ("variant", "model", "batch_size", "mode",
                                                "scenario", "device")}
                            | {"image_size": task.config["image_size"],
                               "threads": c["threads"], "runs_on": where})
        return {"file": sweep.path, "cells": rows, "jobs": len(jobs),
                "placement": sweep.placement, "slots": slots, "warnings": warnings,
                "estimated_s": round(sweep.estimate_s(slots, per_job), 1),
                "executor": ex.describe()}
    finally:
        ex.close()


def _owner() -> dict:
    from densebench.results.store import _owner as owner

    return owner()


def _now() -> str:
    from densebench.results.store import _now as now

    return now()
