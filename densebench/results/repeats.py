"""A run's cells as its views show them: the worker processes of one cell merged.

A run with ``--repeats N`` stores each cell once per worker process (``Cell.repeat``), so a
crash or Ctrl-C keeps the processes that finished. ``merged(cells)`` gives one cell per key
whose statistics treat the processes as the unit of repetition
(``measure.stats.summarize_processes``): intervals that include the spread between
processes, and a flag when processes disagree beyond their own noise. Compare, show and
report all read this view.
"""

from __future__ import annotations

import dataclasses

from densebench.results.schema import Cell


def merged(cells: list[Cell]) -> list[Cell]:
    """One cell per key (in first-seen order); a single cell is returned as it is."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.key(), []).append(c)
    return [g[0] if len(g) == 1 else _merge(g) for g in groups.values()]


def _merge(group: list[Cell]) -> Cell:
    from densebench.measure.stats import summarize_processes

    ok = [c for c in group if c.ok and c.samples_ms]
    failed = [c for c in group if not c.ok]
    if not ok:
        return group[0]
    first = ok[0]
    warnings = list(first.warnings)
    if failed:
        warnings.append(f"{len(failed)} of {len(group)} worker processes failed: "
                        f"{failed[0].error}")
    loads = [c.host_load for c in ok if c.host_load]
    host_load = max(loads, key=lambda h: h.get("others_cores") or 0) if loads else None
    samples = [c.samples_ms for c in ok]
    return dataclasses.replace(
        first, repeat=-1, stats=summarize_processes(samples, first.batch_size),
        samples_ms=[x for s in samples for x in s], process_samples=samples,
        memory={k: max((c.memory.get(k) or 0) for c in ok) for k in first.memory},
        host_load=host_load, warnings=warnings)
