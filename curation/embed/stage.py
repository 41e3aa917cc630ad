"""The embed stage as a callable class: one model load per worker (a Ray actor), then block after block.

A block is a list of image ids; the worker reads their bytes from the blob store, embeds them in batches of
`batch_size`, and writes the block's vectors and index (its completion marker). A corrupt image costs only its
own row (an error in the index), never the rest of its batch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from curation.config import EmbedStage
from curation.embed.registry import create_embedder
from curation.embed.vectors import write_block
from curation.ingest.raw import Block
from curation.store.blobs import BlobStore
from curation.store.objects import ObjectStore


@dataclass(frozen=True)
class EmbedSummary:
    block: int
    images: int
    embedded: int
    seconds: float


class EmbedBlocks:
    def __init__(self, stage: EmbedStage, blobs: BlobStore, vectors: ObjectStore, run_id: str):
        cpus = stage.cpus_per_actor
        os.environ.setdefault("OMP_NUM_THREADS", str(cpus))
        if stage.model != "builtin":
            import torch

            torch.set_num_threads(cpus)
        self.stage = stage
        self.blobs = blobs
        self.vectors = vectors
        self.run_id = run_id
        self.embedder = create_embedder(stage)

    def __call__(self, block: Block) -> EmbedSummary:
        started = time.perf_counter()
        image_ids = list(block.items)
        parts, errors = [], []
        for start in range(0, len(image_ids), self.stage.batch_size):
            batch = [self.blobs.get(image_id) for image_id in image_ids[start : start + self.stage.batch_size]]
            vectors, batch_errors = self.embedder.embed(batch)
            parts.append(vectors)
            errors.extend(batch_errors)
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), np.float32)
        embedded = write_block(self.vectors, self.embedder.model_id, self.embedder.dim, self.run_id, block.index,
                               image_ids, vectors, errors)  # fmt: skip
        return EmbedSummary(block.index, len(image_ids), embedded, time.perf_counter() - started)
