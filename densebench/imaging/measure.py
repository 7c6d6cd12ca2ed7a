"""The ``e2e-jpeg`` mode of the closed loop: batches of JPEG files to top-5, back to back.

Per cell: the run's source (``settings["input"]``), less the files the decoder cannot
decode (counted and reported); the weights' transforms; a pool of
``cell.axes["decode_workers"]`` decode workers (0: each batch decoded in turn before it
runs; N: the next batch is decoded while the current one runs).
Warm-up and the stop rule as in the other modes; a sample is the time from one batch's
top-5 to the next (so throughput counts what the whole path delivers), and every image's
stages are kept. Then parity against fp32 eager on the tensor path (Pillow and the same
transforms, as ``eval`` reads images) on the same images, the decoder's own share of it,
and top-1/top-5 where the folder is labelled.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

import torch

from densebench.imaging import sources
from densebench.imaging.decoders import get_decoder
from densebench.imaging.pipeline import (
    JpegPipeline,
    StageTimes,
    decode_pool,
    summarize_stages,
    tensor_path,
    transform_for,
)
from densebench.measure.engine import StopRule, Warmup
from densebench.measure.stats import summarize
from densebench.parity import parity_stats

PARITY_IMAGES = 16  # the first images of the source: parity with the tensor path
AHEAD = 1  # batches decoded ahead, while the model runs the current one


def source_for(settings: dict, prepared):
    """The run's source, its unreadable files left out; (source, unreadable, decoder)."""
    decoder = get_decoder(settings.get("decoder") or "pil")
    why = decoder.supported(prepared.device)
    if why is not None:
        raise ValueError(f"decoder {decoder.NAME} {why}")
    source = sources.resolve(settings["input"])
    bad = sources.unreadable(source, decoder, prepared.device)
    return sources.without(source, bad), bad, decoder


def measure_jpeg(prepared, planned, settings: dict, report) -> dict:
    """One e2e-jpeg cell's measured fields (``Cell`` fields by name)."""
    source, bad, decoder = source_for(settings, prepared)
    bs, workers = planned.batch_size, int(planned.axes.get("decode_workers", 0))
    transform = transform_for(prepared.loaded, prepared.image_size)
    pool = decode_pool(workers, decoder, transform, prepared.device)
    pipe = JpegPipeline(prepared.session, decoder, transform, prepared.device, pool)
    files = itertools.cycle(source.files)

    def next_batch():
        return [next(files) for _ in range(bs)]

    try:
        n_warm, first_s = _warm_up(pipe, next_batch, Warmup.parse(settings["warmup"]))
        pipe.times = StageTimes()  # only the timed batches count
        samples = _timed(pipe, next_batch, StopRule(
            settings["min_iters"], settings["min_time"], settings["iters"],
            settings["max_time"]), workers, report)
        pipeline = summarize_stages(pipe.times, bs, workers, decoder.NAME,
                                    source.describe())
        pipeline["unreadable"] = sources.unreadable_record(bad)
        parity, pipeline["decoder_parity"] = jpeg_parity(prepared, pipe, source, transform)
        accuracy = jpeg_accuracy(pipe, source, bs, prepared.loaded.num_classes)
    finally:
        if pool is not None:
            pool.shutdown()
    return {"stats": summarize(samples, bs), "samples_ms": samples, "parity": parity,
            "accuracy": accuracy, "pipeline": pipeline,
            "warmup_iters": n_warm, "first_iteration_s": round(first_s, 4),
            "timer": "perf_counter_ns"}


def _warm_up(pipe: JpegPipeline, next_batch, warmup: Warmup) -> tuple[int, float]:
    t0 = time.perf_counter()
    pipe.run(next_batch())
    first = time.perf_counter() - t0
    n = 1
    end = time.perf_counter() + (warmup.seconds or 0)
    while (n < (warmup.count or 0)) if warmup.seconds is None else time.perf_counter() < end:
        pipe.run(next_batch())
        n += 1
    return n, first


def _timed(pipe: JpegPipeline, next_batch, stop: StopRule, workers: int, report,
           report_every_s: float = 0.25) -> list[float]:
    """Batches until ``stop`` says done; each sample is the ms from one batch's top-5 to
    the next's. With decode workers, the next ``AHEAD`` batches are submitted first."""
    perf = time.perf_counter_ns
    ahead: deque = deque()
    samples: list[float] = []
    start = last = perf()
    next_report = start + int(report_every_s * 1e9)
    try:
        while True:
            while workers and len(ahead) < AHEAD:
                ahead.append(pipe.submit(next_batch()))
            pending = ahead.popleft() if workers else pipe.submit(next_batch())
            if workers:  # the one after it starts decoding while this one runs
                ahead.append(pipe.submit(next_batch()))
            pipe.finish(pending)
            now = perf()
            samples.append((now - last) / 1e6)
            last = now
            if report and now >= next_report:
                report(len(samples), (now - start) / 1e9)
                next_report = now + int(report_every_s * 1e9)
            if stop.done(len(samples), (now - start) / 1e9):
                return samples
    finally:
        for p in ahead:  # started, never finished: not timed
            for f in p.futures or []:
                f.cancel()


def jpeg_parity(prepared, pipe: JpegPipeline, source, transform) -> tuple[dict, dict]:
    """Parity on the JPEG path, same images, in two parts: the variant's (the path's
    logits against fp32 eager on this decoder's inputs: what its precision's threshold
    judges), and the decoder's (eager on this decoder's inputs against eager on the tensor
    path's, Pillow and the same transforms: zero for Pillow, rounding for another), with
    the whole path against the tensor path beside it."""
    files = list(source.files[:PARITY_IMAGES])
    x_tensor = tensor_path(files, transform)
    got = pipe.run(files)
    x_dec = torch.stack([pipe.load(p)[0] for p in files]).cpu()
    ref_dec, ref_tensor = prepared.reference(x_dec), prepared.reference(x_tensor)
    decoder = parity_stats(ref_dec, ref_tensor)
    decoder["max_abs_input_difference"] = float((x_dec - x_tensor).abs().max())
    decoder["path_against_tensor_path"] = parity_stats(got, ref_tensor)
    return parity_stats(got, ref_dec), decoder


def jpeg_accuracy(pipe: JpegPipeline, source, batch_size: int, num_classes: int
                  ) -> dict | None:
    """Top-1 and top-5 of the JPEG path over every image of a labelled folder whose
    classes are the model's (another count of classes would make them mean nothing)."""
    if source.labels is None or len(source.classes) != num_classes:
        return None
    top1 = top5 = 0
    for i in range(0, len(source), batch_size):
        files = list(source.files[i:i + batch_size])
        labels = torch.tensor(source.labels[i:i + batch_size])
        _, _, classes = pipe.finish(pipe.submit(files))
        top1 += int((classes[:, 0] == labels).sum())
        top5 += int((classes == labels[:, None]).any(1).sum())
    n = len(source)
    return {"top1": top1 / n, "top5": top5 / n, "images": n, "source": source.spec,
            "path": "e2e-jpeg"}
