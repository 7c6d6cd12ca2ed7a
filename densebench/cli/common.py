"""What every command shares: the consoles, and progress reported through a callback."""

from __future__ import annotations

import contextlib
import json
import sys

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def status(message: str, quiet: bool = False):
    """A spinner on stderr whose text follows the core's progress callback."""
    if quiet or not err.is_terminal:
        yield lambda text: None
        return
    with err.status(message) as st:
        yield lambda text: st.update(f"{message}: {text}")


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
