"""SHA-256 of files and of canonical JSON: the one copy used by the cache and the weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Digest of ``obj`` as sorted-key JSON: equal dicts give equal digests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
