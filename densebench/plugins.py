"""Where registries are filled: built-in parts and plugins, imported once per process.

Built-in backends, exporters (artifact formats), scenarios and executors are the modules
of their packages (a module whose name starts with ``_`` is shared code). Plugins are
imported after them, the same way in the CLI and in every worker process: the
``densebench.plugins`` entry-point group of installed packages, and ``DENSEBENCH_PLUGINS``
(module names or ``.py`` paths, comma-separated). A plugin registers with the same
decorators as the built-ins (``register_backend``, ``register_exporter``,
``register_variant``, ``register_scenario``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib import metadata
from pathlib import Path

from densebench.errors import ConfigError

PACKAGES = ("densebench.backends", "densebench.exporters", "densebench.scenarios",
            "densebench.executors")
_builtins_loaded = False
_imported: set[str] = set()


def load_plugins() -> None:
    """Import what is not imported yet (cheap after the first call)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for pkg_name in PACKAGES:
            pkg = importlib.import_module(pkg_name)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{pkg_name}.{info.name}")
        for ep in metadata.entry_points(group="densebench.plugins"):
            ep.load()
    for ref in plugin_refs():
        if ref not in _imported:
            _import(ref)
            _imported.add(ref)


def plugin_refs() -> list[str]:
    return [s.strip() for s in os.environ.get("DENSEBENCH_PLUGINS", "").split(",") if s.strip()]


def _import(ref: str) -> None:
    try:
        if ref.endswith(".py"):
            path = Path(ref).resolve()
            name = f"densebench_plugin_{path.stem}"
            if name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(ref)
    except (ImportError, OSError) as e:
        raise ConfigError(f"DENSEBENCH_PLUGINS names {ref!r}, which cannot be imported "
                          f"({type(e).__name__}: {e}); fix it or unset it") from e
