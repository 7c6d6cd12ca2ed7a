"""The environment fingerprint stamped on every result, and the identity of the host that
measured a cell (so runs from several machines can be merged and compared)."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from densebench.processes import usable_cores

CPU_FLAGS_OF_INTEREST = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_vp2intersect",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "sve", "bf16", "i8mm",
)


def _psutil():
    """psutil where installed (it is a dependency; a bare GPU image may lack it)."""
    try:
        import psutil

        return psutil
    except ImportError:
        return None


def process_cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    t = os.times()
    return t.user + t.system


BUSY_OTHERS_CORES = 0.25  # other processes' average use, in cores, that makes a host busy
BUSY_STEAL = 0.10  # share of CPU time the hypervisor gave to other guests


class HostLoad:
    """What the rest of the machine did while a cell was measured: the CPU time other
    processes used (the host's busy time less this process's own), hypervisor steal, and
    the load average. ``busy`` when others used a quarter of a core or more on average,
    or steal took a tenth of the time: the cell then measured contention too."""

    def __init__(self):
        self.ps = _psutil()
        self.t0 = self.own0 = self.cpu0 = None

    @staticmethod
    def _busy(times) -> tuple[float, float]:
        idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
        total = sum(times)
        steal = getattr(times, "steal", 0.0)
        return total - idle - steal, steal

    def start(self) -> HostLoad:
        import time

        if self.ps is not None:
            self.cpu0 = self.ps.cpu_times()
        self.own0 = process_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict | None:
        import time

        if self.ps is None or self.cpu0 is None:
            return None
        wall = time.perf_counter() - self.t0
        own = process_cpu_seconds() - self.own0
        cpu1 = self.ps.cpu_times()
        busy0, steal0 = self._busy(self.cpu0)
        busy1, steal1 = self._busy(cpu1)
        total = sum(cpu1) - sum(self.cpu0)
        others = max(0.0, (busy1 - busy0) - own) / wall if wall > 0 else 0.0
        steal = (steal1 - steal0) / total if total > 0 else 0.0
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = None
        return {"others_cores": round(others, 3), "steal_share": round(steal, 4),
                "loadavg_1m": load1, "cores": os.cpu_count(),
                "busy": others >= BUSY_OTHERS_CORES or steal >= BUSY_STEAL}


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    ps = _psutil()
    model, flags = platform.processor() or platform.machine(), set()
    numbers: dict[str, int | None] = {"family": None, "model_number": None, "stepping": None}
    names = {"cpu family": "family", "model": "model_number", "stepping": "stepping"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif key in names and numbers[names[key]] is None and value.strip().isdigit():
                numbers[names[key]] = int(value)  # the first core's: x86 family/model
    except OSError:
        pass
    freq = ps.cpu_freq() if ps else None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = ps.virtual_memory().total if ps else 0
    return {
        "model": model,
        **numbers,  # what tells two CPUs of one marketing name apart (Zen 3 is family 25)
        "arch": platform.machine(),
        "flags": sorted(f for f in CPU_FLAGS_OF_INTEREST if f in flags),
        "logical_cores": os.cpu_count(),
        "physical_cores": ps.cpu_count(logical=False) if ps else None,
        "affinity_cores": usable_cores() if hasattr(os, "sched_getaffinity") else None,
        "max_mhz": round(freq.max, 0) if freq and freq.max else None,
        "memory_gb": round(mem / 2**30, 1),
    }


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """A stable id of this machine: systemd's machine-id where there is one, else a digest
    of the hostname and the first network interface's MAC address."""
    for f in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    import hashlib
    import uuid

    return hashlib.sha256(f"{platform.node()}:{uuid.getnode()}".encode()).hexdigest()[:32]


def host_identity() -> dict:
    """Who measured: hostname, machine id and CPU model (stamped on every cell), and the
    cluster node's name where several nodes share this machine (``$DENSEBENCH_NODE``, set
    by the Ray executor), so that their cells stay apart."""
    host = {"hostname": platform.node(), "machine_id": machine_id(),
            "cpu_model": cpu_info()["model"]}
    if os.environ.get("DENSEBENCH_NODE"):
        host["node"] = os.environ["DENSEBENCH_NODE"]
    return host


def cpu_supports_bf16() -> bool:
    """Native bf16 compute on this CPU (AVX-512 BF16, AMX, or Arm BF16)."""
    flags = set(cpu_info()["flags"])
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) or None


def gpu_info() -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        return []
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({
            "index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
            "memory_gb": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count, "driver": driver,
        })
    return gpus


def fingerprint() -> dict:
    """Everything that can change a number: hardware, libraries, threads, precision settings."""
    import torch

    from densebench import __version__

    libs = {
        "python": platform.python_version(),
        "densebench": __version__,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "numpy": _version("numpy"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    from densebench.backends import library_versions

    libs.update(library_versions())
    try:
        cpu_capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        cpu_capability = None
    return {
        "hostname": platform.node(),
        "machine_id": machine_id(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "libraries": libs,
        "git_commit": git_commit(),
        "settings": {
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "cpu_capability": cpu_capability,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "env": {k: os.environ[k] for k in (
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                "ONEDNN_MAX_CPU_ISA", "TORCHINDUCTOR_FREEZING",
            ) if k in os.environ},
        },
    }
