"""Content-addressed artifact cache.

One directory per key under the cache root (``artifacts/`` in the working directory, or
``$DENSEBENCH_ARTIFACTS``). The key is the hash of the fields it is given: everything that
changes the artifact (``exporters.key_fields``: model, weights identity, classes, format,
precision, input shape and what the format's exporter adds). The cache knows no format by
name: it needs ``model``, ``format`` and ``precision`` (the entry's directory name) and
``versions`` (the manifest's) among the fields. Each entry holds its
files and a ``manifest.json`` with the key's fields, every file's checksum and size, export
time, versions and the artifact's max abs error against eager fp32 on a fixed input.

Entries are built in a temporary directory and renamed into place; a file lock per key
serialises concurrent builders; checksums are verified on load.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from densebench.checksums import sha256_file, sha256_json
from densebench.errors import ArtifactError, ConfigError, CorruptArtifactError
from densebench.processes import pid_alive

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
LAST_USED = ".last_used"

Progress = Callable[[str], None]


def default_root() -> Path:
    return Path(os.environ.get("DENSEBENCH_ARTIFACTS") or "artifacts")


@dataclass
class Artifact:
    """One cache entry: a directory with its files and manifest."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def key(self) -> str:
        return self.manifest["key"][:12]

    @property
    def fields(self) -> dict:
        return self.manifest["fields"]

    @property
    def main_file(self) -> Path:
        return self.path / self.manifest["main"]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def size_bytes(self) -> int:
        return sum(f["size"] for f in self.manifest["files"].values())

    @property
    def last_used(self) -> float:
        p = self.path / LAST_USED
        return p.stat().st_mtime if p.exists() else (self.path / MANIFEST).stat().st_mtime

    def verify(self) -> None:
        """Raise CorruptArtifactError when any file is missing or its checksum differs."""
        for name, meta in self.manifest["files"].items():
            p = self.path / name
            hint = (
                f"rebuild it with --force or remove it with `densebench artifacts rm {self.key}`"
            )
            if not p.is_file():
                raise CorruptArtifactError(f"artifact {self.key}: file {name} is missing; {hint}")
            if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
                raise CorruptArtifactError(
                    f"artifact {self.key}: {name} does not match its checksum (corrupted); {hint}"
                )

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / LAST_USED).touch()


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise CorruptArtifactError(
            f"artifact {path.name}: manifest unreadable ({e}); remove it with "
            f"`densebench artifacts rm {path.name}`"
        ) from e
    if m.get("schema") != MANIFEST_SCHEMA:
        raise CorruptArtifactError(
            f"artifact {path.name}: manifest schema {m.get('schema')!r} is not "
            f"{MANIFEST_SCHEMA}; remove it with `densebench artifacts rm {path.name}`"
        )
    if not isinstance(m.get("files"), dict):
        raise CorruptArtifactError(
            f"artifact {path.name}: manifest has no table of files; remove it with "
            f"`densebench artifacts rm {path.name}`")
    names = list(m["files"].keys()) + [m.get("main")]
    for name in names:
        if not _inside(path, name):
            raise CorruptArtifactError(
                f"artifact {path.name}: its manifest names {name!r}, which is not a file "
                f"inside the entry (corrupt or tampered); remove it with "
                f"`densebench artifacts rm {path.name}`"
            )
    return m


def _inside(entry: Path, name) -> bool:
    """``name`` is a relative path that resolves inside ``entry`` (no ``..``, no absolute
    path, no symlink out)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        return False
    root = entry.resolve()
    try:
        (entry / name).resolve().relative_to(root)
    except ValueError:
        return False
    return True


class ArtifactCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()

    @property
    def references(self) -> Path:
        """Where eager fp32 logits are kept for parity checks (``parity.kept_reference``)."""
        return self.root / ".references"

    # ------------------------------------------------------------------ layout
    def _entry_dir(self, fields: dict) -> Path:
        d = sha256_json(fields)
        return self.root / f"{fields['model']}-{fields['format']}-{fields['precision']}-{d[:12]}"

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / ".locks").mkdir(exist_ok=True)
            (self.root / ".tmp").mkdir(exist_ok=True)
            probe = self.root / ".tmp" / f"probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise ArtifactError(
                f"artifact cache {self.root} is not writable ({e.strerror or e}); set "
                "DENSEBENCH_ARTIFACTS to a writable directory"
            ) from e

    # ------------------------------------------------------------------ read
    def entries(self) -> list[Artifact]:
        """Every complete entry (temporary build directories are not entries)."""
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not (d / MANIFEST).is_file():
                continue
            try:
                out.append(Artifact(d, _read_manifest(d)))
            except CorruptArtifactError as e:  # listed, with what is wrong
                out.append(Artifact(d, {"key": d.name, "fields": {}, "files": {},
                                        "corrupt": str(e), "main": ""}))
        return out

    def find(self, key: str) -> Artifact:
        """An entry by its key (a prefix of at least 4 characters) or directory name."""
        if len(key) < 4:
            raise ConfigError(f"artifact key {key!r} is too short: give at least 4 characters")
        matches = [a for a in self.entries() if a.path.name == key]
        if not matches:
            matches = [a for a in self.entries()
                       if a.manifest["key"].startswith(key) or a.path.name.startswith(key)]
        if not matches:
            raise ArtifactError(f"no artifact {key!r} in {self.root}: see `densebench artifacts`")
        if len(matches) > 1:
            raise ArtifactError(
                f"artifact key {key!r} is ambiguous ({len(matches)} entries): give more characters"
            )
        return matches[0]

    def lookup(self, fields: dict, verify: bool = True) -> Artifact | None:
        d = self._entry_dir(fields)
        if not (d / MANIFEST).is_file():
            return None
        art = Artifact(d, _read_manifest(d))
        if verify:
            art.verify()
        return art

    # ------------------------------------------------------------------ write
    def build(
        self, fields: dict, builder: Callable[[Path], dict], *, force: bool = False,
        progress: Progress | None = None,
    ) -> tuple[Artifact, bool]:
        """Return ``(artifact, cached)``: the entry for ``fields``, built by ``builder`` if absent.

        ``builder(tmp_dir)`` writes the files into ``tmp_dir`` and returns the manifest's
        extra fields, with ``main`` naming the main file. It runs under the key's lock, in a
        temporary directory renamed into place only when complete.
        """
        if not force:
            found = self.lookup(fields)
            if found is not None:
                found.touch()
                return found, True
        self._ensure_root()
        from filelock import FileLock, Timeout

        d = sha256_json(fields)
        final = self._entry_dir(fields)
        lock = FileLock(str(self.root / ".locks" / f"{d[:32]}.lock"))
        try:
            held = lock.acquire(timeout=0)
        except Timeout:
            if progress:
                progress("waiting for another process building this artifact (cache lock)")
            held = lock.acquire()
        with held:
            if not force:  # another process may have built it while we waited
                found = self.lookup(fields)
                if found is not None:
                    found.touch()
                    return found, True
            self._sweep_tmp()
            tmp = self.root / ".tmp" / f"{d[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                t0 = time.perf_counter()
                extra = builder(tmp)
                seconds = time.perf_counter() - t0
                files = {}
                for p in sorted(tmp.rglob("*")):
                    if p.is_file():
                        rel = p.relative_to(tmp).as_posix()
                        files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
                manifest = {
                    **extra,  # an exporter's notes never replace the fields below
                    "schema": MANIFEST_SCHEMA,
                    "key": d,
                    "fields": fields,
                    "files": files,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "export_seconds": round(seconds, 3),
                    "versions": fields["versions"],
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
                (tmp / LAST_USED).touch()
                trash = None
                if final.exists():
                    trash = self.root / ".tmp" / f"old-{final.name}-{uuid.uuid4().hex[:8]}"
                    os.replace(final, trash)
                os.replace(tmp, final)
                if trash is not None:
                    shutil.rmtree(trash, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return Artifact(final, manifest), False

    def _sweep_tmp(self) -> None:
        """Remove temporary directories left by builders that died (their pid is gone)."""
        for p in (self.root / ".tmp").iterdir():
            parts = p.name.split("-")
            if p.name.startswith("old-"):
                shutil.rmtree(p, ignore_errors=True)
            elif len(parts) == 3 and parts[1].isdigit() and not pid_alive(int(parts[1])):
                shutil.rmtree(p, ignore_errors=True)

    def remove(self, art: Artifact) -> None:
        self._ensure_root()
        trash = self.root / ".tmp" / f"old-{art.path.name}-{uuid.uuid4().hex[:8]}"
        os.replace(art.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def remove_references(self) -> int:
        """Remove every kept reference (they are computed again when next needed); how
        many there were."""
        kept = list(self.references.glob("*.pt")) if self.references.is_dir() else []
        for f in kept:
            f.unlink(missing_ok=True)
        return len(kept)


def artifact_row(a: Artifact) -> dict:
    f = a.fields
    return {
        "key": a.key,
        "model": f.get("model"),
        "format": f.get("format"),
        "precision": f.get("precision"),
        "shape": "x".join(str(s) for s in f.get("input_shape", [])),
        "weights": f.get("weights"),
        "size_mb": round(a.size_bytes / 1e6, 2),
        "created": a.manifest.get("created"),
        "last_used": _dt.datetime.fromtimestamp(a.last_used, _dt.timezone.utc).isoformat(
            timespec="seconds") if a.path.exists() else None,
        "path": str(a.path),
        "corrupt": bool(a.manifest.get("corrupt")),
    }


__all__ = ["Artifact", "ArtifactCache", "artifact_row"]
