"""Durations as people write them, read the same way in every command and sweep file: a
bare number is seconds (``3``, ``0.5``), or a number with its unit (``50ms``, ``0.1s``,
``10s``, ``20m``, ``500us``, ``1h``).
"""

from __future__ import annotations

import math
import re

from densebench.errors import bad_setting

_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "min": 60e3, "h": 3600e3}
_RE = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zµ]*)\s*$", re.IGNORECASE)


def duration_ms(text: str | float, setting: str, *, allow_zero: bool = False) -> float:
    """Milliseconds in ``text`` (``"50ms"`` -> 50.0, ``3`` or ``"3"`` -> 3000.0); errors
    name ``setting``."""
    if isinstance(text, bool):
        raise bad_setting(setting, f"{text!r} is not a duration: give seconds (3) or a "
                          "number with its unit (50ms, 0.1s, 10s, 20m)")
    m = _RE.match(str(text))
    unit = (m.group(2).lower() or "s") if m else None
    if unit not in _UNITS:
        raise bad_setting(setting, f"{text!r} is not a duration: give seconds (3) or a "
                          "number with its unit (50ms, 0.1s, 10s, 20m)")
    value = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise bad_setting(setting, f"{text!r} must be a positive duration")
    return value


def seconds(text: str | float, setting: str, *, allow_zero: bool = False) -> float:
    """Seconds in ``text`` (``"500ms"`` -> 0.5, ``3`` -> 3.0)."""
    return duration_ms(text, setting, allow_zero=allow_zero) / 1e3


def optional_seconds(text: str | float | None, setting: str) -> float | None:
    return None if text is None else seconds(text, setting)
