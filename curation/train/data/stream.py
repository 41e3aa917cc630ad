"""An infinite, resumable, exactly reproducible stream of batches over a published version.

Every (rank, dataloader worker) pair is one *stream*: stream s of S reads the shards `order[s::S]` of pass p
(`order` a permutation seeded by (seed, p); with fewer shards than streams, every stream reads all shards and
keeps every S-th sample), shuffles them through a buffer, and assembles batches. An epoch is a fixed number of
steps; passes over the data follow each other without end. Everything is seeded by (seed, pass, stream), so a
stream's position is just (pass, batch index): a resumed run replays the current pass's metadata up to it
without decoding, and continues with the very batches an uninterrupted run would have seen.

Batches never hold the same image twice (KoLeo's nearest-neighbour distance would be zero), and a configurable
share of them is homogeneous: drawn from one composition part only (DINOv3 draws 10% of batches from ImageNet).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from curation.decode.safe import open_rgb
from curation.errors import TrainError
from curation.store.objects import ObjectStore
from curation.train.data.shards import Sample, ShardInfo, read_shard


@dataclass(frozen=True)
class StreamSettings:
    batch_size: int  # per rank
    load_size: int  # decoded images are resized (shortest side) and centre-cropped to this square
    seed: int = 0
    shuffle_buffer: int = 1000
    homogeneous_share: float = 0.1


def assemble_batches(samples: Iterable[Sample], rng: np.random.Generator, batch_size: int, buffer_size: int,
                     homogeneous_share: float) -> Iterator[list[Sample]]:  # fmt: skip
    """Batches of distinct images drawn at random from a shuffle buffer; a homogeneous batch takes one part only
    (when the buffer holds too few images of that part, the batch is mixed). Leftovers at the end are dropped."""
    source = iter(samples)
    buffer: list[Sample] = []
    exhausted = False
    want = max(buffer_size, 2 * batch_size)
    while True:
        while len(buffer) < want and not exhausted:
            sample = next(source, None)
            if sample is None:
                exhausted = True
            else:
                buffer.append(sample)
        if not buffer:
            return
        candidates = np.arange(len(buffer))
        if rng.random() < homogeneous_share:
            part = buffer[int(rng.integers(len(buffer)))].part
            same_part = np.array([i for i, sample in enumerate(buffer) if sample.part == part])
            if len({buffer[i].image_id for i in same_part}) >= batch_size:
                candidates = same_part
        chosen: list[int] = []
        seen: set[str] = set()
        for index in rng.permutation(candidates):
            if buffer[index].image_id not in seen:
                chosen.append(int(index))
                seen.add(buffer[index].image_id)
                if len(chosen) == batch_size:
                    break
        if len(chosen) < batch_size:
            if exhausted:
                return
            want += batch_size  # too many repeats in the buffer: read further before trying again
            continue
        yield [buffer[index] for index in chosen]
        for index in sorted(chosen, reverse=True):
            buffer[index] = buffer[-1]
            buffer.pop()


def decode_square(data: bytes, side: int) -> torch.Tensor:
    """uint8 [3, side, side]: shortest side resized to `side`, centre crop (crops are cut from this square)."""
    image = open_rgb(data, side)
    scale = side / min(image.size)
    image = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))),
                         Image.Resampling.BICUBIC)  # fmt: skip
    left, top = (image.width - side) // 2, (image.height - side) // 2
    pixels = np.asarray(image.crop((left, top, left + side, top + side)), np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


class BatchStream(IterableDataset):
    """Yields {"images": uint8 [B, 3, S, S], "image_ids", "parts", "position": (stream, pass, index)}.

    `start` maps a stream id to the (pass, index) of its next batch. `rotation` shifts which dataloader
    worker plays which stream, so that after a resume at step n the first batch comes from stream n % workers,
    as it would have without the interruption (the DataLoader takes workers round-robin from worker 0).
    """

    def __init__(self, root: ObjectStore, shards: list[ShardInfo], settings: StreamSettings, *, rank: int = 0,
                 world_size: int = 1, workers: int = 0, start: dict[int, tuple[int, int]] | None = None,
                 rotation: int = 0):  # fmt: skip
        super().__init__()
        if not shards:
            raise TrainError("the version has no shards to train on")
        self.root, self.shards, self.settings = root, shards, settings
        self.rank, self.world_size, self.workers = rank, world_size, max(1, workers)
        self.start, self.rotation = start or {}, rotation

    def own_streams(self) -> range:
        """The ids of this rank's streams, one per dataloader worker."""
        return range(self.rank * self.workers, (self.rank + 1) * self.workers)

    def stream_id(self) -> int:
        info = get_worker_info()
        return self.own_streams()[((info.id if info else 0) + self.rotation) % self.workers]

    def samples(self, pass_number: int, stream: int) -> Iterator[Sample]:
        streams = self.world_size * self.workers
        order = np.random.default_rng([self.settings.seed, pass_number]).permutation(len(self.shards))
        shares = self._whole_shards(order, streams)
        if shares is not None:
            for index in shares[stream]:
                yield from read_shard(self.root, self.shards[index])
            return
        counter = 0
        for index in order:
            for sample in read_shard(self.root, self.shards[index]):
                if counter % streams == stream:
                    yield sample
                counter += 1

    def _whole_shards(self, order: np.ndarray, streams: int) -> list[list[int]] | None:
        """Each stream's whole shards for a pass: in the pass's shuffled order, each shard to the stream holding the
        fewest images so far, so shares differ by at most one shard's images (counting shards instead left a
        stream with only the small last shard). None when a share would hold less than a batch: then every stream
        reads every shard and keeps every streams-th sample. The same on every rank and worker."""
        if len(self.shards) < streams:
            return None
        loads, shares = [0] * streams, [[] for _ in range(streams)]
        for index in order.tolist():
            target = min(range(streams), key=lambda candidate: (loads[candidate], candidate))
            shares[target].append(index)
            loads[target] += self.shards[index].samples
        return shares if min(loads) >= self.settings.batch_size else None

    def batches(self, pass_number: int, stream: int) -> Iterator[list[Sample]]:
        rng = np.random.default_rng([self.settings.seed, pass_number, stream, 1])
        return assemble_batches(self.samples(pass_number, stream), rng, self.settings.batch_size,
                                self.settings.shuffle_buffer, self.settings.homogeneous_share)  # fmt: skip

    def __iter__(self) -> Iterator[dict]:
        stream = self.stream_id()
        pass_number, skip = self.start.get(stream, (0, 0))
        while True:
            made = 0
            for index, batch in enumerate(self.batches(pass_number, stream)):
                made += 1
                if index >= skip:
                    yield self.decode(batch, (stream, pass_number, index))
            if made == 0:
                raise TrainError(f"stream {stream} holds fewer than batch_size={self.settings.batch_size} distinct "
                                 "images; lower the batch size or the number of ranks/workers")  # fmt: skip
            pass_number, skip = pass_number + 1, 0

    def decode(self, batch: list[Sample], position: tuple[int, int, int]) -> dict:
        images = []
        for sample in batch:
            try:
                images.append(decode_square(sample.data, self.settings.load_size))
            except Exception as error:  # noqa: BLE001 - the published image must decode; say which one did not
                raise TrainError(f"image {sample.image_id} in the version does not decode: {error}") from None
        return {"images": torch.stack(images), "image_ids": [s.image_id for s in batch],
                "parts": [s.part for s in batch], "position": position}  # fmt: skip
