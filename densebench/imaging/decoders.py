"""JPEG decoders as a registry: ``pil`` (Pillow), ``torchvision`` (``torchvision.io.decode_jpeg``
on the CPU, libjpeg-turbo) and ``torchvision-cuda`` (nvJPEG, on the GPU).

A decoder turns a file's bytes into an RGB image the weights' transforms take: a PIL image,
or a uint8 tensor (3, H, W), on the CPU or on the device. Plugins register their own with
``@register_decoder``, as the test runtime's deliberately slow one does.
"""

from __future__ import annotations

import io
from typing import ClassVar

from densebench.errors import ConfigError


class Decoder:
    NAME: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    ON_DEVICE: ClassVar[bool] = False  # decodes straight onto the device (no copy after)

    def supported(self, device: str) -> str | None:
        """None, or why this decoder cannot run for ``device``."""
        return None

    def decode(self, data: bytes, device: str):
        raise NotImplementedError


_REGISTRY: dict[str, Decoder] = {}


def register_decoder(cls: type[Decoder]) -> type[Decoder]:
    if not cls.NAME:
        raise TypeError(f"{cls.__name__} has no NAME")
    _REGISTRY[cls.NAME] = cls()
    return cls


def decoders() -> dict[str, Decoder]:
    from densebench.plugins import load_plugins

    load_plugins()
    return dict(_REGISTRY)


def get_decoder(name: str) -> Decoder:
    known = decoders()
    if name not in known:
        raise ConfigError(f"decoder {name!r} is unknown: choose from {', '.join(known)}",
                          setting="decoder")
    return known[name]


@register_decoder
class PillowDecoder(Decoder):
    NAME = "pil"
    DESCRIPTION = "Pillow (libjpeg-turbo), to a PIL image"

    def decode(self, data: bytes, device: str):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")  # decodes here (Image.open only reads the header)


@register_decoder
class TorchvisionDecoder(Decoder):
    NAME = "torchvision"
    DESCRIPTION = "torchvision.io.decode_jpeg on the CPU, to a uint8 tensor"

    def decode(self, data: bytes, device: str):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                           mode=ImageReadMode.RGB)


@register_decoder
class TorchvisionCudaDecoder(Decoder):
    NAME = "torchvision-cuda"
    DESCRIPTION = "torchvision.io.decode_jpeg(device='cuda'): nvJPEG, on the GPU"
    ON_DEVICE = True

    def supported(self, device: str) -> str | None:
        if not device.startswith("cuda"):
            return f"decodes on a CUDA GPU, and the run's device is {device}"
        return None

    def decode(self, data: bytes, device: str):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                           mode=ImageReadMode.RGB, device=device)
