"""Scenarios: how a prepared variant is driven while it is measured.

A scenario is a class with a class-level ``NAME``, registered by ``@register_scenario``.
``settings(config)`` picks the settings it records on every cell from a run's config;
``run(prepared, cells, settings, emit, workdir)`` measures the planned cells
(``results.Cell``, their keys already filled) on the prepared session and emits one
``cell`` event per cell, plus ``phase`` and ``progress`` events, all plain data; files it
keeps (LoadGen's logs) go under ``workdir`` (the run directory) and cells name them
relative to it. It never prints or decides where it runs: the executor and the run do.

Built in: ``closed-loop`` (back-to-back batches, the default) and LoadGen's four
(``loadgen.py``: single-stream, multi-stream, server, offline). Others plug in beside them
as modules of this package (or plugins), without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from densebench.errors import ConfigError

Emit = Callable[[dict], None]


class Scenario:
    NAME: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""

    def settings(self, config) -> dict:
        """What of ``config`` (a ``RunConfig``) this scenario uses, recorded per cell."""
        return {}

    def run(self, prepared, cells: list, settings: dict, emit: Emit, workdir) -> None:
        raise NotImplementedError


_REGISTRY: dict[str, Scenario] = {}


def register_scenario(cls: type[Scenario]) -> type[Scenario]:
    if not cls.NAME:
        raise TypeError(f"{cls.__name__} has no NAME")
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
