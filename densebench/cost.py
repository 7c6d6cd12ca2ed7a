"""What serving costs: prices per host (``--price HOST=USD_PER_HOUR``, or a ``[prices]``
table in a sweep file, ``host = USD_PER_HOUR``), and the cost of a million images at a
measured rate. The search ranks hosts by it; a sweep's table shows it per host."""

from __future__ import annotations

import math
from pathlib import Path

import tomllib

from densebench.errors import ConfigError

EXAMPLE = "myhost=0.34"


def price_table(table, where: str) -> dict[str, float]:
    """A ``[prices]`` table: host name -> a positive number of USD per hour."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: prices must be a table ([prices], host = USD_PER_HOUR)",
                          setting="price")
    out = {}
    for host, usd in table.items():
        if isinstance(usd, bool) or not isinstance(usd, int | float) or \
                not (usd > 0 and math.isfinite(usd)):
            raise ConfigError(f"{where}: [prices] {host} = {usd!r} must be a positive number "
                              "of USD per hour", setting="price")
        out[str(host)] = float(usd)
    return out


def parse_prices(items: list[str]) -> dict[str, float]:
    """``--price`` values: ``HOST=USD_PER_HOUR`` pairs, or a TOML file (a sweep file) whose
    ``[prices]`` table gives them; a pair overrides the file."""
    out: dict[str, float] = {}
    for item in items:
        if "=" not in item and item.endswith(".toml"):
            path = Path(item)
            try:
                spec = tomllib.loads(path.read_text())
            except OSError as e:
                raise ConfigError(f"--price {item}: cannot read it ({e.strerror or e}); name a "
                                  "sweep file with a [prices] table", setting="price") from e
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"--price {item}: not TOML ({e})", setting="price") from e
            if "prices" not in spec:
                raise ConfigError(f"--price {item}: the file has no [prices] table "
                                  "(host = USD_PER_HOUR)", setting="price")
            out.update(price_table(spec["prices"], f"--price {item}"))
            continue
        host, _, usd = item.partition("=")
        try:
            value = float(usd)
        except ValueError:
            raise ConfigError(f"--price {item!r} is not HOST=USD_PER_HOUR (e.g. {EXAMPLE}) "
                              "or a sweep file with a [prices] table", setting="price") from None
        if not host.strip() or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--price {item!r} is not HOST=USD_PER_HOUR (e.g. {EXAMPLE}) "
                              "with a positive price", setting="price")
        out[host.strip()] = value
    return out


def price_for(prices: dict[str, float], host: dict) -> float | None:
    """A host's price: by its node name, else its hostname."""
    for name in (host.get("node"), host.get("hostname")):
        if name and name in prices:
            return prices[name]
    return None


def usd_per_million(usd_per_hour: float, images_per_s: float) -> float:
    """What a million images cost at ``images_per_s`` on a host at ``usd_per_hour``."""
    return usd_per_hour / (images_per_s * 3600) * 1e6
