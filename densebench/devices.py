"""Device names: ``auto``, ``cpu``, ``cuda``, ``cuda:N``. Never a silent fallback."""

from __future__ import annotations

import torch

from densebench.errors import ConfigError, DeviceError


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible: the one question every device decision asks (the test
    suite's pretend-CUDA switch answers it, not torch, so torch's own code paths stay real)."""
    return torch.cuda.is_available()


def resolve_device(name: str | None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; a CUDA request without a GPU
    is an error, not a CPU run."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ConfigError(
                f"--device {name!r} is not a device name: use cpu, cuda or cuda:N"
            ) from e
        if not cuda_available():
            raise DeviceError(
                f"--device {name} asked for a GPU but this machine has none visible to PyTorch: "
                "use --device cpu (or auto)"
            )
        if dev.index is not None and dev.index >= max(torch.cuda.device_count(), 1):
            raise DeviceError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) here (cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1})"
            )
        return name
    raise ConfigError(f"--device {name!r} is not a device name: use auto, cpu, cuda or cuda:N")
