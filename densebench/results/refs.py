"""How a stored run is named: a path, an id, a unique id prefix, a name, or ``NAME~N``.

A name used again is not ambiguous the way an id prefix is: like a branch or an image tag,
it means the newest run that has it, and ``NAME~N`` the N-th before that one (``bench~1``
is the run before the latest ``bench``), as in git. ``ID~N`` counts back the same way from
that run among the runs of its name. Ids and id prefixes stay exact: a prefix that matches
several ids is refused with the candidates, and where a name is also an id prefix, the id
wins (``NAME~0`` then means the newest run of that name).

A damaged run keeps its place among the runs of its name (the name is read from its
run.json however damaged the rest is) and says what is wrong when named; an abandoned run
resolves, with a note that says so.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from densebench.errors import StoreError

RUN_FILE = "run.json"
_ID_STAMP = re.compile(r"(\d{8}-\d{6})")
_FIELDS = {"name": re.compile(r'"name"\s*:\s*"([A-Za-z0-9_][A-Za-z0-9_.-]{0,99})"'),
           "created": re.compile(r'"created"\s*:\s*"([^"]+)"'),
           "created_ns": re.compile(r'"created_ns"\s*:\s*(\d+)')}


@dataclass(frozen=True)
class RunDir:
    """A run directory as names see it: its id, name and when it was made, read from its
    run.json alone (a damaged file still gives its name where the text holds one)."""

    path: Path
    name: str | None
    created: tuple  # (nanoseconds, id): sorts oldest first

    @property
    def id(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Resolved:
    """Which run a reference meant: its directory, and the one line a command says about
    it on stderr (None where the reference was exact and unsurprising)."""

    path: Path
    note: str | None = None
    name: str | None = None  # the name the run answers to, and its place among them
    back: int | None = None  # 0: the newest run of that name


def peek(path: Path) -> RunDir:
    """Name and creation time of a run directory from its run.json, however damaged: a
    file cut short still has its header's first fields, which is where both are."""
    try:
        text = (path / RUN_FILE).read_text(errors="replace")
    except OSError:
        text = ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # not JSON (a crash while writing?): what the text says
        data = {k: m.group(1) for k, rx in _FIELDS.items() if (m := rx.search(text))}
    name = data.get("name") if isinstance(data.get("name"), str) else None
    return RunDir(path, name, (_created_ns(path, data), path.name))


def _created_ns(path: Path, data: dict) -> int:
    """When the run was made: its own nanosecond stamp, else its creation time, else the
    time in its id (local time, as ids are made), else the directory's."""
    try:
        return int(data["created_ns"])
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return int(_dt.datetime.fromisoformat(data["created"]).timestamp() * 1e9)
    except (KeyError, TypeError, ValueError):
        pass
    m = _ID_STAMP.match(path.name)
    try:
        when = _dt.datetime.strptime(m.group(1), "%Y%m%d-%H%M%S").timestamp() if m \
            else path.stat().st_mtime
    except (ValueError, OSError):
        when = 0.0
    return int(when * 1e9)


def named(dirs: list[RunDir], name: str) -> list[RunDir]:
    """The runs called ``name``, newest first (``NAME~0``, ``NAME~1``, ...)."""
    return sorted((d for d in dirs if d.name == name), key=lambda d: d.created, reverse=True)


def parse(ref: str) -> tuple[str, int | None]:
    """``NAME~N`` as (NAME, N); a reference without ``~`` as (ref, None)."""
    if "~" not in ref:
        return ref, None
    base, _, back = ref.partition("~")
    if not base or not back.isdigit():
        raise StoreError(f"run {ref!r}: write NAME~N with N a whole number of 0 or more "
                         "(bench~1 is the run before the latest bench)")
    return base, int(back)


def resolve(root: Path, dirs: list[RunDir], ref: str) -> Resolved:
    """Which of ``dirs`` (the run directories under ``root``) ``ref`` names."""
    base, back = parse(ref)
    by_id = {d.id: d for d in dirs}
    runs_named = named(dirs, base)
    if base in by_id:
        start = by_id[base]
        return _back_from(start, dirs, back, ref) if back else Resolved(start.path)
    prefixed = [d for d in dirs if d.id.startswith(base)]
    also = (f"; {len(runs_named)} run(s) are also named {base!r}: {base}~0 is the latest "
            "of them") if runs_named and back is None else ""
    if len(prefixed) > 1 and (back is None or not runs_named):
        ids = ", ".join(d.id for d in prefixed)
        raise StoreError(f"run id prefix {base!r} matches {len(prefixed)} runs ({ids}): give "
                         f"one of these ids{also}")
    if len(prefixed) == 1 and (back is None or not runs_named):
        start = prefixed[0]
        if back:
            return _back_from(start, dirs, back, ref)
        return Resolved(start.path, f"{base}: the id prefix of run {start.id}{also}" if also
                        else None)
    if runs_named:
        return _pick(runs_named, back or 0, ref)
    raise StoreError(f"no run {base!r} in {root} (nor such a path): see `densebench runs`")


def _back_from(start: RunDir, dirs: list[RunDir], back: int, ref: str) -> Resolved:
    """``ID~N``: N runs before ``start`` among the runs of its name."""
    if start.name is None:
        raise StoreError(f"run {ref!r}: run {start.id} has no name, so no run comes before "
                         "it: name runs with --name to count back")
    same = named(dirs, start.name)
    return _pick(same, same.index(start) + back, ref)


def _pick(same: list[RunDir], at: int, ref: str) -> Resolved:
    name = same[0].name
    if at >= len(same):
        have = f"{len(same)} run{'s are' if len(same) > 1 else ' is'} named {name!r}"
        span = f"{name}~0 to {name}~{len(same) - 1}" if len(same) > 1 else name
        raise StoreError(f"run {ref!r}: only {have} ({span}): `densebench runs {name}` "
                         "lists them")
    chosen = same[at]
    where = "the latest" if at == 0 else f"{at} before the latest"
    note = None
    if len(same) > 1 or "~" in ref:
        note = f"{ref}: {where} of {len(same)} run{'s' if len(same) > 1 else ''} named " \
               f"{name}, {chosen.id}"
    return Resolved(chosen.path, note, name, at)
