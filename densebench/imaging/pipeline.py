"""From JPEG bytes to top-5, every stage timed on every image.

``JpegPipeline`` serves one session: ``submit(items)`` starts a batch (a file is read, its
bytes decoded, the image resized, centre-cropped and normalised by the weights' own
transforms), in a pool of decode workers beside the model's threads when there is one, or
when the batch is finished otherwise. Decode workers are processes (``DecodePool``), one
intra-op thread each, as DataLoader's are: threads would share the model's GIL and its
OpenMP pool, and on a loaded host they ran slower than no workers at all.
``finish(pending)`` waits for its images, stacks them, copies them to the device, runs
the session, copies the logits back and takes the softmax and the top-5. Each image's
timestamps are kept (``StageTimes``): ``read``, ``decode``, ``preprocess`` (its own),
``queue`` (waiting: before a decode worker took it,
and after it was ready until its batch was copied, stacking included), and its batch's
``h2d``, ``compute``, ``d2h`` and ``postprocess``. The stages of an image are contiguous:
they add up to its latency, submitted to top-5.

``summarize_stages`` turns them into each stage's p50 and p99 per image, its share of the
work per batch, and the bottleneck with what to change.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from densebench.measure.stats import min_samples

STAGES = ("read", "decode", "preprocess", "queue", "h2d", "compute", "d2h", "postprocess")
IMAGE_STAGES = ("read", "decode", "preprocess")  # each image's own (in the decode workers)
BATCH_STAGES = ("h2d", "compute", "d2h", "postprocess")  # its batch's, shared
TOP_K = 5


def transform_for(loaded, image_size: int):
    """The weights' own transforms (torchvision's ``weights.transforms()``) at ``image_size``,
    for random weights too (the same recipe); the ImageNet recipe for models without them."""
    import torchvision

    from densebench.data import preprocessing
    from densebench.models import get_entry

    weights_enum = None
    entry = get_entry(loaded.name)
    if entry.torchvision_name:
        try:
            weights_enum = torchvision.models.get_model_weights(entry.torchvision_name).DEFAULT
        except (ValueError, KeyError):  # a torchvision model without registered weights
            weights_enum = None
    return preprocessing(weights_enum, image_size)


def tensor_path(files, transform) -> torch.Tensor:
    """The images as ``eval --data imagefolder:`` reads them (Pillow, then the transforms):
    the path the JPEG pipeline's logits are compared against."""
    from PIL import Image

    out = []
    for p in files:
        with Image.open(p) as im:
            out.append(transform(im.convert("RGB")))
    return torch.stack(out)


@dataclass
class Pending:
    """A batch started: its items, when each was submitted, and its decode futures."""

    items: list
    submitted: list[int]  # perf_counter_ns per image
    futures: list[Future] | None = None


@dataclass
class StageTimes:
    """Per image (ms): each stage and the latency; per batch: the batch's work (ms)."""

    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    latency: list[float] = field(default_factory=list)
    batches: int = 0

    def extend(self, other: StageTimes) -> None:
        for s in STAGES:
            self.stages[s] += other.stages[s]
        self.latency += other.latency
        self.batches += other.batches


def load_image(decoder, transform, device: str, item):
    """One image: (its input tensor, its read/decode/preprocess timestamps in ns, on the
    host's monotonic clock, the same in every process)."""
    perf = time.perf_counter_ns
    t0 = perf()
    data = item.read_bytes() if isinstance(item, Path) else item
    t1 = perf()
    image = decoder.decode(data, device)
    t2 = perf()
    x = transform(image)
    t3 = perf()
    return x, (t0, t1, t2, t3)


_IN_WORKER: tuple | None = None  # in a decode worker process: (decoder, transform, device)


def _start_worker(decoder_name: str, transform, device: str, parent: int) -> None:
    global _IN_WORKER
    from densebench.imaging.decoders import get_decoder
    from densebench.worker import die_with_parent

    die_with_parent(parent)
    torch.set_num_threads(1)
    _IN_WORKER = (get_decoder(decoder_name), transform, device)


def _load_in_worker(item):
    return load_image(*_IN_WORKER, item)


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class DecodePool:
    """``workers`` decode worker processes (spawned, so no OpenMP state is forked), each
    with one intra-op thread and the decoder and transforms; all started before anything
    is timed. A decoder that decodes onto the device shares the CUDA context, so it gets
    threads instead."""

    def __init__(self, workers: int, decoder, transform, device: str):
        self.workers = workers
        if decoder.ON_DEVICE:
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="densebench-decode")
            self._load = lambda item: load_image(decoder, transform, device, item)
            return
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(decoder.NAME, transform, device, os.getpid()))
        self._load = _load_in_worker
        started, deadline = set(), time.monotonic() + 120
        while len(started) < workers and time.monotonic() < deadline:
            started |= set(self._executor.map(_pid_after, [0.05] * workers))

    def submit(self, item) -> Future:
        return self._executor.submit(self._load, item)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class JpegPipeline:
    """One session's JPEG path. ``pool``: the decode workers (shared by every instance of
    a LoadGen run), or None to decode in the calling thread."""

    def __init__(self, session, decoder, transform, device: str,
                 pool: DecodePool | None = None):
        self.session = session
        self.decoder = decoder
        self.transform = transform
        self.device = device
        self.pool = pool
        self.times = StageTimes()
        self._lock = threading.Lock()

    def load(self, item) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        return load_image(self.decoder, self.transform, self.device, item)

    def submit(self, items: list, submitted: list[int] | None = None) -> Pending:
        now = time.perf_counter_ns()
        pending = Pending(list(items), submitted or [now] * len(items))
        if self.pool is not None:
            pending.futures = [self.pool.submit(it) for it in items]
        return pending

    def finish(self, pending: Pending) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits on the host, top-5 probabilities, top-5 classes) of a started batch."""
        perf = time.perf_counter_ns
        loaded = [f.result() for f in pending.futures] if pending.futures is not None \
            else [self.load(it) for it in pending.items]
        x = torch.stack([x for x, _ in loaded])
        s = self.session
        h0 = perf()
        xd = s.to_device(x)
        s.synchronize()
        h1 = perf()
        out = s(xd)
        s.synchronize()
        c1 = perf()
        logits = s.to_host(out)
        d1 = perf()
        probs, classes = torch.softmax(logits.float(), 1).topk(min(TOP_K, logits.shape[1]), 1)
        p1 = perf()
        batch = {"h2d": h1 - h0, "compute": c1 - h1, "d2h": d1 - c1, "postprocess": p1 - d1}
        rec = StageTimes(batches=1)
        for (_, (t0, t1, t2, t3)), sub in zip(loaded, pending.submitted, strict=True):
            own = {"read": t1 - t0, "decode": t2 - t1, "preprocess": t3 - t2,
                   "queue": (t0 - sub) + (h0 - t3), **batch}
            for stage, ns in own.items():
                rec.stages[stage].append(ns / 1e6)
            rec.latency.append((p1 - sub) / 1e6)
        with self._lock:
            self.times.extend(rec)
        return logits, probs, classes

    def run(self, items: list) -> torch.Tensor:
        return self.finish(self.submit(items))[0]


def decode_pool(workers: int, decoder, transform, device: str) -> DecodePool | None:
    return DecodePool(workers, decoder, transform, device) if workers > 0 else None


# ============================================================================ the summary


def summarize_stages(times: StageTimes, batch_size: int, workers: int, decoder: str,
                     source: dict) -> dict:
    """Each stage's p50 and p99 per image and its share of the work per batch (image
    stages summed over a batch's images, batch stages once; waiting is not work), the
    latency per image, and the bottleneck: with no decode workers every stage runs in
    turn, so the stage with the largest share; with N workers, the decode side's work per
    batch shared by N against the model side's, and the largest stage of the slower side."""
    n = len(times.latency)
    enough = {p: n >= min_samples(p) for p in (50, 99)}

    def pct(values, p):
        return round(float(np.percentile(values, p)), 4) if values and enough[p] else None

    per_batch = {}
    for s in IMAGE_STAGES:
        per_batch[s] = float(np.mean(times.stages[s])) * batch_size if n else 0.0
    for s in BATCH_STAGES:  # every image of a batch carries its batch's figure
        per_batch[s] = float(np.mean(times.stages[s])) if n else 0.0
    work = sum(per_batch.values()) or 1.0
    stages = {s: {"p50_ms": pct(times.stages[s], 50), "p99_ms": pct(times.stages[s], 99),
                  "mean_ms": round(float(np.mean(times.stages[s])), 4) if n else None,
                  **({"per_batch_ms": round(per_batch[s], 4),
                      "share": round(per_batch[s] / work, 4)} if s in per_batch else {})}
              for s in STAGES}
    decode_side = sum(per_batch[s] for s in IMAGE_STAGES)
    model_side = sum(per_batch[s] for s in BATCH_STAGES)
    if workers == 0:
        candidates = list(per_batch)
        side = "serial"
    elif decode_side / workers >= model_side:
        candidates, side = list(IMAGE_STAGES), "decode workers"
    else:
        candidates, side = list(BATCH_STAGES), "model"
    stage = max(candidates, key=lambda s: per_batch[s])
    return {
        "decoder": decoder, "decode_workers": workers, "images": n,
        "batches": times.batches, "source": source, "stages": stages,
        "latency": {"p50_ms": pct(times.latency, 50), "p99_ms": pct(times.latency, 99),
                    "mean_ms": round(float(np.mean(times.latency)), 4) if n else None},
        "work_per_batch_ms": round(work, 4),
        "decode_side_per_batch_ms": round(decode_side, 4),
        "model_side_per_batch_ms": round(model_side, 4),
        "bottleneck": {"stage": stage, "share": round(per_batch[stage] / work, 4),
                       "side": side},
        "advice": advice(stage, workers, decoder, source, decode_side, model_side),
    }


def advice(stage: str, workers: int, decoder: str, source: dict, decode_side: float,
           model_side: float) -> list[str]:
    """What to change when ``stage`` is the bottleneck."""
    from densebench.processes import usable_cores

    tips = []
    if stage in IMAGE_STAGES:
        cores = usable_cores()
        need = int(np.ceil(decode_side / model_side)) if model_side > 0 else workers + 1
        more = max(workers + 1, min(need, cores))
        if more != workers:
            tips.append(f"more decode workers (--decode-workers {more}: decoding a batch "
                        f"takes {decode_side / max(model_side, 1e-9):.1f}x the model's time)")
        if stage in ("decode", "read"):
            other = "torchvision" if decoder == "pil" else "pil"
            tips.append(f"another decoder (--decoder {other})")
        size = source.get("synthetic_size")
        kb = source.get("mean_file_kb")
        tips.append("smaller source images" + (f" (these are {size[0]}x{size[1]})" if size
                                                else f" (these average {kb} KB)" if kb
                                                else ""))
    elif stage == "compute":
        tips.append("a faster variant or precision (the model itself is the bottleneck: "
                    "see the model-mode rows)")
    elif stage in ("h2d", "d2h"):
        tips.append("fewer copies: decode on the device (--decoder torchvision-cuda) or "
                    "a larger batch")
    elif stage == "postprocess":
        tips.append("a larger batch (softmax and top-5 cost little per image)")
    return tips


def bottleneck_line(label: str, pipeline: dict) -> str:
    """``decode: 61% of the work per batch`` with where it was measured and what to try."""
    b = pipeline["bottleneck"]
    st = pipeline["stages"][b["stage"]]
    lat = pipeline["latency"]
    workers = pipeline["decode_workers"]
    line = (f"{label} ({pipeline['decoder']} decoder, {workers} decode worker"
            f"{'' if workers == 1 else 's'}): bottleneck {b['stage']}: {b['share']:.0%} of "
            f"the work per batch ({st['per_batch_ms']:.3g} of "
            f"{pipeline['work_per_batch_ms']:.3g} ms)")
    if lat.get("p50_ms") is not None:
        line += f"; latency per image p50 {lat['p50_ms']:.3g} ms"
    if pipeline["advice"]:
        line += "; try " + "; ".join(pipeline["advice"])
    return line
