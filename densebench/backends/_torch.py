"""What the PyTorch runtimes share: one session class (memory format, autocast, inference
mode), the device rules for autocast, and torch.profiler."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from densebench.backends import Backend, ProfileTrace, Session

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TorchSession(Session):
    fn: object = None
    memory_format: torch.memory_format = torch.contiguous_format
    autocast: str | None = None

    def __post_init__(self):
        # built once: the timed loop only enters the contexts
        self._device_type = torch.device(self.device).type
        self._dtype = _AUTOCAST[self.autocast] if self.autocast else None

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=False)
        if self.memory_format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self._dtype is None:
                return self.fn(x)
            with torch.autocast(self._device_type, dtype=self._dtype):
                return self.fn(x)

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().cpu()


class TorchBackend(Backend):
    """A PyTorch runtime. Variant options: ``channels_last`` (bool), ``autocast`` (fp16|bf16)."""

    PROFILER = "torch.profiler"

    def supported(self, variant, device: str) -> str | None:
        from densebench.environment import cpu_supports_bf16

        autocast = variant.options.get("autocast")
        cuda = device.startswith("cuda")
        if autocast == "fp16" and not cuda:
            return f"{variant.name} needs a CUDA GPU (fp16 autocast is a GPU path)"
        if autocast == "bf16" and not cuda and not cpu_supports_bf16():
            return (f"{variant.name} needs a CUDA GPU or a CPU with native bf16 "
                    "(AVX-512 BF16, AMX or Arm BF16); this CPU has none")
        if autocast == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            return f"{variant.name}: this GPU has no bf16 support"
        return None

    def versions(self) -> dict[str, str | None]:
        return {"torch": torch.__version__}

    def session(self, variant, device: str, fn, options: dict | None = None) -> TorchSession:
        """A session around ``fn`` with the variant's memory format and autocast."""
        channels_last = bool(variant.options.get("channels_last"))
        autocast = variant.options.get("autocast")
        opts = {"channels_last": channels_last, "autocast": autocast, **(options or {})}
        return TorchSession(
            label=variant.label, device=device,
            timer="cuda" if torch.device(device).type == "cuda" else "host", options=opts,
            fn=fn, memory_format=torch.channels_last if channels_last
            else torch.contiguous_format, autocast=autocast)

    def module(self, variant, loaded, device: str) -> torch.nn.Module:
        """A private copy of the model on ``device``, in the variant's memory format."""
        import copy

        module = copy.deepcopy(loaded.module).eval().to(device)
        if variant.options.get("channels_last"):
            module = module.to(memory_format=torch.channels_last)
        return module

    def profile(self, session: Session, x, iters: int, out_dir: Path, tb_dir: Path
                ) -> ProfileTrace:
        from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

        cuda = session.device.startswith("cuda")
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts, record_shapes=True, profile_memory=True) as prof:
            for _ in range(iters):
                session(x)
            session.synchronize()
        trace = ProfileTrace(table=table_from_torch(prof, session.device))
        # the PyTorch profiler plugin reads <logdir>/<worker>.<time>.pt.trace.json; the same
        # trace opens in Perfetto / chrome://tracing
        worker = session.label.replace(":", "_")
        tensorboard_trace_handler(str(tb_dir), worker_name=worker)(prof)
        shutil.copyfile(next(tb_dir.glob("*.pt.trace.json")), out_dir / "trace.json")
        trace.files["trace"] = "trace.json"
        trace.files["tensorboard"] = str(tb_dir)
        if cuda:
            kern = [e for e in prof.events()
                    if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
            durs = [getattr(e, "device_time", 0.0) or 0.0 for e in kern]
            trace.breakdown["kernels_per_iter"] = len(kern) / iters
            trace.breakdown["median_kernel_us"] = statistics.median(durs) if durs else None
            trace.breakdown["device_time_s"] = sum(durs) / 1e6
        return trace

    def layout_hint(self, variant, share: float, names: str) -> str | None:
        if variant.options.get("channels_last"):
            return None
        return (f"layout conversions take {share:.0%} of the time ({names}): try channels-last "
                "(variant channels-last, amp-bf16 or compile)")


def table_from_torch(prof, device: str) -> list[dict]:
    rows = []
    cuda = device.startswith("cuda")
    for e in prof.key_averages():
        self_dev = getattr(e, "self_device_time_total", None)
        if self_dev is None:
            self_dev = getattr(e, "self_cuda_time_total", 0)
        rows.append({"name": e.key, "calls": e.count,
                     "self_cpu_us": float(e.self_cpu_time_total),
                     "total_cpu_us": float(e.cpu_time_total),
                     "self_device_us": float(self_dev or 0),
                     "self_cpu_memory_bytes": int(getattr(e, "self_cpu_memory_usage", 0) or 0)})
    key = "self_device_us" if cuda and sum(r["self_device_us"] for r in rows) > 0 else \
        "self_cpu_us"
    total = sum(r[key] for r in rows) or 1.0
    for r in rows:
        r["share"] = r[key] / total
    rows.sort(key=lambda r: -r[key])
    return rows
