"""The timed loop: warm-up with the timed shapes, a stop rule, the right clock.

CPU work is timed with ``time.perf_counter_ns``; CUDA work with CUDA events around each
iteration, synchronised before the elapsed time is read (``end-to-end`` mode on CUDA
synchronises and reads the host clock, since it ends with a copy to the host).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from densebench.errors import bad_setting

MODES = ("model", "e2e", "e2e-jpeg")  # e2e-jpeg: JPEG bytes to top-5 (densebench.imaging)
DEFAULT_MODES = ("model", "e2e")  # e2e-jpeg needs its images: asked for by name
MAX_WARMUP_S = 3600.0  # an hour of warm-up is a typo, not a plan
MAX_WARMUP_ITERS = 1_000_000


@dataclass(frozen=True)
class StopRule:
    """At least ``min_iters`` and at least ``min_time`` seconds, or exactly ``iters``."""

    min_iters: int = 10
    min_time: float = 3.0
    iters: int | None = None
    max_time: float | None = None  # a cap on one cell, whatever min_iters says

    def __post_init__(self):
        if self.iters is not None and self.iters < 1:
            raise bad_setting("iters", f"must be at least 1, got {self.iters}")
        if self.min_iters < 1:
            raise bad_setting("min_iters", f"must be at least 1, got {self.min_iters}")
        if not 0 <= self.min_time <= MAX_WARMUP_S * 24:  # also refuses nan and inf
            raise bad_setting("min_time", f"must be between 0 and {MAX_WARMUP_S * 24:g} s, "
                              f"got {self.min_time}")
        if self.max_time is not None and not self.max_time > 0:
            raise bad_setting("max_time", f"must be positive, got {self.max_time}")

    def done(self, n: int, elapsed_s: float) -> bool:
        if self.iters is not None:
            return n >= self.iters
        if self.max_time is not None and elapsed_s >= self.max_time and n >= 1:
            return True
        return n >= self.min_iters and elapsed_s >= self.min_time


@dataclass(frozen=True)
class Warmup:
    """``count`` iterations, or iterations for ``seconds`` (at least one either way)."""

    count: int | None = 3
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | int | float) -> Warmup:
        t = str(text).strip().lower()
        try:
            if t.endswith("s"):
                sec = float(t[:-1])
                if not 0 <= sec <= MAX_WARMUP_S:  # also refuses nan and inf
                    raise ValueError
                return cls(count=None, seconds=sec)
            n = int(t)
            if not 0 <= n <= MAX_WARMUP_ITERS:
                raise ValueError
            return cls(count=n)
        except ValueError:
            raise bad_setting(
                "warmup", f"{text!r}: give a count (0 to {MAX_WARMUP_ITERS}) or seconds "
                f"(0s to {MAX_WARMUP_S:g}s)"
            ) from None

    def describe(self) -> str:
        return f"{self.seconds:g}s" if self.seconds is not None else str(self.count)


def time_calls(fn: Callable, x, *, timer: str, device: str, stop: StopRule,
               report: Callable[[int, float], None] | None = None,
               report_every_s: float = 0.25) -> list[float]:
    """Call ``fn(x)`` until ``stop`` says done; return per-call latencies in ms."""
    samples: list[float] = []
    perf = time.perf_counter_ns
    t_start = perf()
    next_report = t_start + int(report_every_s * 1e9)
    if timer == "cuda":
        import torch

        start_ev = torch.cuda.Event(enable_timing=True)
        end_ev = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        while True:
            start_ev.record()
            fn(x)
            end_ev.record()
            end_ev.synchronize()
            samples.append(start_ev.elapsed_time(end_ev))
            now = perf()
            if report and now >= next_report:
                report(len(samples), (now - t_start) / 1e9)
                next_report = now + int(report_every_s * 1e9)
            if stop.done(len(samples), (now - t_start) / 1e9):
                return samples
    sync = None
    if device.startswith("cuda"):
        import torch

        def sync():
            torch.cuda.synchronize(device)

        sync()
    append = samples.append
    while True:
        t0 = perf()
        fn(x)
        if sync is not None:
            sync()
        t1 = perf()
        append((t1 - t0) / 1e6)
        if report and t1 >= next_report:
            report(len(samples), (t1 - t_start) / 1e9)
            next_report = t1 + int(report_every_s * 1e9)
        if stop.done(len(samples), (t1 - t_start) / 1e9):
            return samples


def warm_up(fn: Callable, x, warmup: Warmup, sync: Callable[[], None]) -> tuple[int, float]:
    """Run the warm-up; return (iterations, first call's seconds: compile/first inference)."""
    t0 = time.perf_counter()
    fn(x)
    sync()
    first = time.perf_counter() - t0
    n = 1
    if warmup.seconds is not None:
        end = time.perf_counter() + warmup.seconds
        while time.perf_counter() < end:
            fn(x)
            n += 1
        sync()
    else:
        for _ in range(max(0, (warmup.count or 0) - 1)):
            fn(x)
            n += 1
        sync()
    return n, first
