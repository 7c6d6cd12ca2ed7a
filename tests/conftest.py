"""Tests run in a temporary working directory with their own artifact cache and run store."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import densebench.devices
from densebench.artifacts import ArtifactCache
from densebench.exporters import ExportSpec, export_artifact

REPO = Path(__file__).resolve().parent.parent
TINY_SIZE = 32  # the smallest input densenet-tiny takes: fast
# the test runtime (known service time) and the pool-tiny model, registered as a plugin in
# this process and, through the environment, in every worker process
SLEEPY = REPO / "tests" / "plugins" / "sleepy.py"


_SESSION_DIR: Path | None = None


def pytest_configure(config):
    """Each test session gets its own Inductor cache, Ray temp directory and Ray token (set
    in the environment, so every worker process, ``ray start`` and Ray task the tests start
    uses them too): an earlier session's compiled kernels or a user's Ray cluster never decide
    a result. Ray's socket paths must fit 107 bytes, so the directory is short, in /tmp.

    ``DENSEBENCH_TEST_PRETEND_CUDA=1`` (off by default) makes densebench's own question "is
    a GPU visible?" (``densebench.devices.cuda_available``) answer yes, in the test process
    and, through the test plugin every densebench process here loads, in the CLI and worker
    processes the tests start: a run of the suite that way shows which tests would change
    meaning on a GPU host (``--device auto`` picking cuda). torch itself is left alone, so
    its exporters and the GPU tests' skip still see the real machine."""
    global _SESSION_DIR
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="dbtest", dir="/tmp"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_SESSION_DIR / "inductor")
    os.environ["RAY_TMPDIR"] = str(_SESSION_DIR)
    # Ray's clusters in the test process authenticate with a token, as Ray 2.60 starts
    # local clusters: this session's, not one Ray would write into ~/.ray (and a process
    # that once ran ray.init in token mode keeps that mode for its later clusters)
    token = _SESSION_DIR / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    # what the CLI prints does not depend on the terminal the suite was started from: a
    # narrow one (COLUMNS=80, as pytest-xdist's workers see) would wrap the lines tests read
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
    if os.environ.get("DENSEBENCH_TEST_PRETEND_CUDA") == "1":
        densebench.devices.cuda_available = lambda: True


def pytest_unconfigure(config):
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DENSEBENCH_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("DENSEBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("DENSEBENCH_DEBUG", raising=False)
    monkeypatch.setenv("DENSEBENCH_PLUGINS", str(SLEEPY))
    return tmp_path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> ArtifactCache:
    """One cache for tests that only read artifacts, so each is exported once per session."""
    return ArtifactCache(tmp_path_factory.mktemp("shared-artifacts"))


@pytest.fixture(scope="session")
def tiny_artifacts(shared_cache):
    """densenet-tiny at 32 px in every format and precision, dynamic batch."""
    arts = {}
    for fmt, prec in [("torchscript", "fp32"), ("onnx", "fp32"), ("onnx", "fp16"),
                      ("onnx", "int8"), ("checkpoint", "fp32"), ("checkpoint", "fp16"),
                      ("aoti", "fp32")]:
        spec = ExportSpec("densenet-tiny", fmt, prec, image_size=TINY_SIZE)
        arts[(fmt, prec)] = export_artifact(spec, shared_cache)[0]
    return arts


@pytest.fixture
def cli():
    from densebench.cli import app

    runner = CliRunner()

    def invoke(*args, **kw):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)

    return invoke


def run_cli_process(*args, env=None, unset=(), **kw) -> subprocess.Popen:
    """The real console entry point in a subprocess (for locking, signals, crashes), with
    ``env`` added to this process's environment and the variables ``unset`` names removed."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.Popen([sys.executable, "-m", "densebench", *map(str, args)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal, **kw)


def _as_from_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a suite started in the background by a
    non-interactive shell (`make test &`, a CI script) inherits SIGINT ignored, and its
    children would then ignore the SIGINT a test sends them (Python installs its
    KeyboardInterrupt handler only where SIGINT is not ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def blocked_at(variant: str, phase: str, tmp_path: Path) -> tuple[dict, Path]:
    """The environment that makes the test runtime block ``variant`` at ``phase`` (see
    ``block_here`` in tests/plugins/sleepy.py), and the file it writes when it is there."""
    ready = tmp_path / f"blocked-{variant}-{phase}"
    return {"SLEEPY_BLOCK": f"{variant}:{phase}:{ready}"}, ready


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``path`` exists; fails at once if ``proc`` ended first (it never got there)."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before {path.name}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} not reached in {timeout} s")
        time.sleep(0.1)


def plain_sleep_ms(ms: float, n: int = 20) -> float:
    """The median of ``n`` plain ``time.sleep(ms)`` calls timed here: what the host's load
    makes of that sleep right now, without densebench."""
    import statistics
    import time

    took = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        time.sleep(ms / 1e3)
        took.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(took)


@contextlib.contextmanager
def environment_kept():
    """The process environment as it was, after the block: ``ray.init`` in this process
    sets RAY_AUTH_MODE=token (and more) in it and leaves them set, which every later
    test's subprocesses would inherit."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
