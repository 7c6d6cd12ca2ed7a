"""What every command shares: the consoles, and progress reported through a callback."""

from __future__ import annotations

import contextlib
import json
import os
import sys

from rich.console import Console


def _console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(stderr=stderr, highlight=False, width=160)  # files and pipes: no squeezing
    return c


out = _console()
err = _console(stderr=True)


@contextlib.contextmanager
def status(message: str, quiet: bool = False):
    """A spinner on stderr whose text follows the core's progress callback."""
    if quiet or not err.is_terminal:
        yield lambda text: None
        return
    with err.status(message) as st:
        yield lambda text: st.update(f"{message}: {text}")


def load_run(store, ref: str):
    """The stored run ``ref`` names (id, prefix, name, ``NAME~N`` or path), saying on
    stderr which run a name meant."""
    rec = store.load(ref)
    if rec.resolved_note:
        err.print(rec.resolved_note, markup=False)
    return rec


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
