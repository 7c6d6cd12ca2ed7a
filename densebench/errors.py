"""Typed errors raised by the core; the CLI turns each into one line on stderr.

Every message names what was wrong and what to do about it, on one line.
"""

from __future__ import annotations


class DensebenchError(Exception):
    """Base of every error the CLI reports as one line (exit code ``exit_code``)."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(DensebenchError):
    """A value given by the user is invalid (exit 2, like a usage error).

    ``setting`` names the setting the message starts with (``threads``), so the CLI can
    show it as its flag (``--threads``) while a sweep file or Python code sees the name it
    used.
    """

    exit_code = 2

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


def bad_setting(setting: str, problem: str) -> ConfigError:
    """``bad_setting("threads", "must be at least 1, got 0")``: one message, named setting."""
    return ConfigError(f"{setting} {problem}", setting=setting)


MAX_THREADS = 1024  # beyond this, runtimes abort (cuDNN symbol loading, OpenMP) or hang


def check_threads(threads: int | None) -> None:
    """Thread counts: None (the runtime's default) or 1 to MAX_THREADS. More threads than
    logical cores is allowed but warned about (``threads_warning``)."""
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise bad_setting("threads", f"must be at least 1, got {threads}")
    if threads is not None and threads > MAX_THREADS:
        import os

        raise bad_setting("threads", f"{threads} is more than densebench allows "
                          f"({MAX_THREADS}); this machine has {os.cpu_count()} logical cores")


def threads_warning(threads: int | None) -> str | None:
    """A warning when ``threads`` oversubscribes the logical cores."""
    import os

    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        return (f"threads {threads} is more than the {cores} logical cores here: the runtime "
                "will oversubscribe them and the numbers measure contention")
    return None


class ModelError(ConfigError):
    """Unknown model, or an input size the model cannot take."""


class WeightsError(DensebenchError):
    """Weights that cannot be found, read, downloaded or loaded."""


class ArtifactError(DensebenchError):
    """The artifact cache cannot be used (unwritable, missing entry...)."""


class CorruptArtifactError(ArtifactError):
    """A cached file does not match the checksum in its manifest."""


class ExportError(DensebenchError):
    """An exporter failed to produce an artifact."""


class DeviceError(DensebenchError):
    """A device was requested that this machine does not have or cannot use."""


class VariantError(DensebenchError):
    """A variant that is unknown, or that the device cannot run."""


class StoreError(DensebenchError):
    """The run store cannot be read or written."""


class RunInterrupted(DensebenchError):
    """Ctrl-C (or SIGTERM, SIGHUP) during a run: finished cells are kept and the run is
    marked incomplete. Exits 128 + the signal's number, as a shell would."""

    exit_code = 130

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so they unwind like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def interrupted(e: KeyboardInterrupt, what: str) -> RunInterrupted:
    """The RunInterrupted for ``e`` (Ctrl-C or a Terminated signal); ``what`` says what was
    kept."""
    import signal

    signum = getattr(e, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    return RunInterrupted(f"interrupted ({name}): {what}", signum)


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (out-of-memory
    errors say so first, whatever raised them)."""
    text = str(e).strip().splitlines()
    low = str(e).lower()
    if isinstance(e, MemoryError) or "out of memory" in low or "can't allocate memory" in low:
        return f"out of memory: {text[0][:200] if text else type(e).__name__}"
    if isinstance(e, DensebenchError):
        return text[0][:300] if text else type(e).__name__
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
