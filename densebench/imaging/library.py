"""LoadGen's sample library on the JPEG path: the files' bytes in memory, decoded by the
system under test, so LoadGen's latency includes what a user's server does.

``JpegLibrary.infer(session, indices, issued)`` answers a batch the way
``SampleLibrary.infer`` does, through one ``JpegPipeline`` per session (every instance's
pipeline shares the cell's pool of decode workers), and keeps every image's stages from
the moment LoadGen issued it. The reference logits are fp32 eager's on the decoder's own
inputs, so accuracy mode judges the variant; labels come from a labelled folder.
"""

from __future__ import annotations

import torch

from densebench.imaging import sources
from densebench.imaging.decoders import get_decoder
from densebench.imaging.pipeline import (
    JpegPipeline,
    StageTimes,
    decode_pool,
    summarize_stages,
    transform_for,
)


class JpegLibrary:
    """JPEG bytes by LoadGen sample index, with labels and reference logits."""

    def __init__(self, prepared, settings: dict, samples: int):
        decoder = get_decoder(settings.get("decoder") or "pil")
        source = sources.resolve(settings["input"])
        bad = sources.unreadable(source, decoder, prepared.device)
        source = sources.without(source, bad)
        n = min(samples, len(source))
        self.source, self.unreadable = source, bad
        self.decoder, self.device = decoder, prepared.device
        self.transform = transform_for(prepared.loaded, prepared.image_size)
        self.jpeg = [p.read_bytes() for p in source.files[:n]]
        self.count = n
        self.labels = None if source.labels is None or \
            len(source.classes) != prepared.loaded.num_classes else \
            torch.tensor(source.labels[:n])
        self.workers = 0
        self._pool = None
        self._pipes: dict[int, JpegPipeline] = {}
        loader = JpegPipeline(None, decoder, self.transform, self.device)
        refs = []
        for i in range(0, n, 32):  # eager fp32 on this decoder's inputs, kept by the cache
            x = torch.stack([loader.load(b)[0] for b in self.jpeg[i:i + 32]]).cpu()
            refs.append(prepared.reference(x))
        self.reference = torch.cat(refs)

    def use_workers(self, workers: int) -> None:
        """The next cell's pool of decode workers (0: each instance decodes its batch)."""
        self.close()
        self.workers = workers
        self._pool = decode_pool(workers, self.decoder, self.transform, self.device)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._pool = None
        self._pipes.clear()

    def _pipe(self, session) -> JpegPipeline:
        pipe = self._pipes.get(id(session))
        if pipe is None:
            pipe = self._pipes[id(session)] = JpegPipeline(
                session, self.decoder, self.transform, self.device, self._pool)
        return pipe

    def infer(self, session, indices: list[int], issued: list[int] | None = None
              ) -> torch.Tensor:
        pipe = self._pipe(session)
        return pipe.finish(pipe.submit([self.jpeg[i] for i in indices], issued))[0]

    def reset_times(self) -> None:
        for pipe in self._pipes.values():
            pipe.times = StageTimes()

    def stage_summary(self, batch_sizes: dict) -> dict:
        """Every instance's stages together; the work per batch at the mean batch formed."""
        times = StageTimes()
        for pipe in self._pipes.values():
            times.extend(pipe.times)
        formed = sum(int(b) * n for b, n in batch_sizes.items())
        mean_batch = formed / max(1, sum(batch_sizes.values()))
        out = summarize_stages(times, mean_batch or 1, self.workers, self.decoder.NAME,
                               self.source.describe())
        out["unreadable"] = sources.unreadable_record(self.unreadable)
        out["mean_batch"] = round(mean_batch, 3)
        return out
