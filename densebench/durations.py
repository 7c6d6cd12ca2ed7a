"""Durations as people write them: ``50ms``, ``2ms``, ``0.1s``, ``10s``, ``20m``, ``500us``.

A unit is required: ``50`` alone could mean seconds or milliseconds, so it is refused.
"""

from __future__ import annotations

import math
import re

from densebench.errors import bad_setting

_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "min": 60e3, "h": 3600e3}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zµ]+)\s*$", re.IGNORECASE)


def duration_ms(text: str | float, setting: str, *, allow_zero: bool = False) -> float:
    """Milliseconds in ``text`` (``"50ms"`` -> 50.0); errors name ``setting``."""
    m = _RE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise bad_setting(setting, f"{text!r} needs a number and a unit: 50ms, 0.1s, 10s, 20m")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise bad_setting(setting, f"{text!r} must be a positive duration")
    return value
