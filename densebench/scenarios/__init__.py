"""Scenarios: how a prepared variant is driven while it is measured, and what that takes.

A scenario is a class with a class-level ``NAME``, registered by ``@register_scenario``.
It owns its configuration:

- ``Settings``: its own settings, a dataclass that validates in ``__post_init__``. A run
  carries them by name (``RunConfig.settings``; ``--set NAME=VALUE`` on the command line,
  the ``[settings]`` table of a sweep file); ``configure(values)`` reads them, strings
  included, and refuses an unknown or ill-typed one in one line.
- ``BATCH_AXIS``: which of a run's lists makes its cells, ``batch_sizes`` (fixed batches)
  or its own ``max_batch`` setting (a dynamic batcher); ``MODES``: the modes it can
  measure (None: any); ``DEFAULT_REPEATS``: worker processes per cell by default.
- ``check(config)``: what it refuses in the rest of a run's configuration, before anything
  runs; ``threads(config)``: intra-op threads per session.
- ``record(config, threads)``: what it records on every cell (its settings, resolved);
  ``run(prepared, cells, settings, emit, workdir)`` measures the planned cells
  (``results.Cell``, keys filled) and emits one ``cell`` event per cell, plus ``phase``
  and ``progress`` events, all plain data; files it keeps (LoadGen's logs) go under
  ``workdir`` and cells name them relative to it. It never prints or decides where it
  runs: the executor and the pipeline do.

Built in: ``closed-loop`` (back-to-back batches, the default) and LoadGen's four
(``loadgen.py``: single-stream, multi-stream, server, offline). Others plug in beside them
as modules of this package, or plugins, without an edit anywhere else.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import ClassVar

from densebench.durations import duration_ms, seconds
from densebench.errors import ConfigError, bad_setting

Emit = Callable[[dict], None]


@dataclasses.dataclass
class NoSettings:
    """A scenario with no settings of its own."""


def duration_field(default=None, unit: str = "s"):
    """A settings field that takes a duration (``unit``: what the field holds, ``s`` or
    ``ms``): a bare number in that unit, or a number with its own unit (``500ms``)."""
    return dataclasses.field(default=default, metadata={"duration": unit})


class Scenario:
    NAME: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    FAMILY: ClassVar[str | None] = None  # scenarios that share settings: "LoadGen"
    Settings: ClassVar[type] = NoSettings
    BATCH_AXIS: ClassVar[str] = "batch_sizes"  # or "max_batch", one of its Settings
    MODES: ClassVar[tuple[str, ...] | None] = None  # None: every mode
    DEFAULT_MODES: ClassVar[tuple[str, ...] | None] = None  # None: MODES, or model and e2e
    MODES_WHY: ClassVar[str] = ""
    DEFAULT_REPEATS: ClassVar[int] = 3

    # ------------------------------------------------------------------ configuration

    def configure(self, values: dict | None):
        """Its ``Settings`` from ``values`` by name (strings are read as the field's
        type): an unknown name or a value of the wrong type is one ConfigError."""
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(self.Settings)}
        for name in values:
            if name not in known:
                raise unknown_setting(name, self.NAME)
        hints = typing.get_type_hints(self.Settings)
        given = {name: _coerce(name, v, hints[name], known[name].metadata)
                 for name, v in values.items()}
        return self.Settings(**given)

    def check(self, config) -> None:
        """Refuse what the rest of ``config`` (a ``RunConfig``) asks that this scenario
        cannot do: the other batch axis, a mode it does not measure."""
        if self.BATCH_AXIS != "batch_sizes" and config.batch_sizes is not None:
            raise bad_setting("batch_sizes", f"is a closed-loop setting: the {self.NAME} "
                              f"scenario batches dynamically; give {self.BATCH_AXIS}")
        if self.MODES is not None and any(m not in self.MODES for m in config.modes or []):
            raise bad_setting("modes", f"must be {' or '.join(self.MODES)} for the "
                              f"{self.FAMILY or self.NAME} scenarios{self.MODES_WHY}")

    def batch_sizes(self, config) -> list[int]:
        """The batch size of each planned cell."""
        if self.BATCH_AXIS == "batch_sizes":
            return config.batch_sizes or [1]
        return getattr(config.scenario_settings, self.BATCH_AXIS) or [1]

    def modes(self, config) -> list[str]:
        from densebench.measure.engine import DEFAULT_MODES

        return config.modes or list(self.DEFAULT_MODES or self.MODES or DEFAULT_MODES)

    def repeats(self, config) -> int:
        return config.repeats if config.repeats is not None else self.DEFAULT_REPEATS

    def threads(self, config) -> int | None:
        """Intra-op threads per session (None: the node's default)."""
        return config.threads

    def record(self, config, threads: int | None) -> dict:
        """What of ``config`` this scenario uses, recorded on every cell."""
        return dataclasses.asdict(config.scenario_settings)

    def prepare_options(self, workdir, variant: str) -> dict:
        """What the variant's preparation needs for this scenario (a profiler's output
        folder, for runtimes that arm their profiler when the session is built)."""
        return {}

    def run(self, prepared, cells: list, settings: dict, emit: Emit, workdir) -> None:
        raise NotImplementedError


def _coerce(name: str, value, hint, metadata):
    """``value`` as the field's type; strings (``--set``) are parsed."""
    unit = metadata.get("duration")
    if unit is not None and value is not None:
        # a bare number is in the setting's own unit (latency_budget_ms=50: 50 ms;
        # duration=10: 10 s); a number with its unit is converted (0.05s, 500ms)
        bare = _number(value)
        if bare is not None:
            value = f"{bare}ms" if unit == "ms" else bare
        return duration_ms(value, name, allow_zero=True) if unit == "ms" else \
            seconds(value, name, allow_zero=True)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and \
        type(None) in typing.get_args(hint)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    try:
        if origin is list:
            (item,) = typing.get_args(hint)
            parts = value.split(",") if isinstance(value, str) else list(value)
            return [_scalar(item, p) for p in parts]
        return _scalar(hint, value)
    except (TypeError, ValueError):
        kind = getattr(hint, "__name__", str(hint))
        raise bad_setting(name, f"takes {_KIND.get(kind, kind)}, got {value!r}") from None


_KIND = {"int": "a whole number", "float": "a number", "bool": "true or false",
         "str": "text", "list": "a list"}


def _number(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _scalar(kind, v):
    if kind is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(v, str) and v.lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(v)
    if kind is int:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError(v)
        return int(str(v).strip()) if isinstance(v, str) else int(v)
    if kind is float:
        if isinstance(v, bool):
            raise ValueError(v)
        return float(v)
    if kind is str:
        if not isinstance(v, str):
            raise TypeError(v)
        return v
    return v


def check_batch_sizes(setting: str, values: list | None) -> None:
    """Batch sizes are positive whole numbers, each once (each is a cell)."""
    if values is None:
        return
    if not values:
        raise bad_setting(setting, "is empty: give at least one, e.g. 1,16")
    for b in values:
        if not isinstance(b, int) or isinstance(b, bool) or b < 1:
            raise bad_setting(setting, f"must be positive integers, got {b}")
    twice = sorted({b for b in values if values.count(b) > 1})
    if twice:
        raise bad_setting(setting, f"names {twice[0]} more than once: each batch size is "
                          "one cell")


def unknown_setting(name: str, scenario: str) -> ConfigError:
    """``name`` is not a setting of ``scenario``: say whose it is, or which there are."""
    known = scenarios()
    owners = [s for s in known.values()
              if name in {f.name for f in dataclasses.fields(s.Settings)}]
    if owners:
        families = {s.FAMILY for s in owners}
        family = families.pop() if len(families) == 1 else None
        members = [s.NAME for s in known.values() if family and s.FAMILY == family]
        if family and sorted(members) == sorted(s.NAME for s in owners):
            whose = f"the {family} scenarios ({', '.join(members)})"
        else:
            names = [s.NAME for s in owners]
            whose = f"the {' and '.join(names)} scenario{'s' if len(names) > 1 else ''}"
        return bad_setting(name, f"is a setting of {whose}, not of {scenario}")
    own = [f.name for f in dataclasses.fields(known[scenario].Settings)] \
        if scenario in known else []
    return bad_setting(name, f"is not a setting of the {scenario} scenario: "
                       + (f"its settings are {', '.join(own)}" if own else "it has none"))


_REGISTRY: dict[str, Scenario] = {}


def register_scenario(cls: type[Scenario]) -> type[Scenario]:
    if not cls.NAME:
        raise TypeError(f"{cls.__name__} has no NAME")
    if not dataclasses.is_dataclass(cls.Settings):
        raise TypeError(f"{cls.__name__}.Settings is not a dataclass")
    _REGISTRY[cls.NAME] = cls()
    return cls


def scenarios() -> dict[str, Scenario]:
    from densebench.plugins import load_plugins

    load_plugins()
    return dict(_REGISTRY)


def get_scenario(name: str) -> Scenario:
    known = scenarios()
    if name not in known:
        raise ConfigError(f"scenario {name!r} is unknown: choose from {', '.join(known)}",
                          setting="scenario")
    return known[name]
