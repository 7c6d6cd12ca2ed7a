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
    """A value given by the user is invalid (exit 2, like a usage error)."""

    exit_code = 2


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
