"""densebench: which way of running DenseNet (or any torchvision CNN) is fastest here.

The Python API (``benchmark``, ``load_run``, ``list_runs``, ``compare_runs``,
``RunConfig``) lives in ``densebench.api`` and is imported on first use, so
``import densebench`` stays cheap.
"""

__version__ = "0.2.0"

_API = ("RunConfig", "benchmark", "compare_runs", "list_runs", "load_run")


def __getattr__(name):
    if name in _API:
        from densebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'densebench' has no attribute {name!r}")
