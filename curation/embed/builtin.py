"""The `builtin` embedder: a non-learned 16x16 colour thumbnail descriptor that needs no weights.

A fallback, not a semantic model: resized, re-encoded, lightly recoloured copies of an image land close together
(the per-channel mean and contrast are removed), which is enough for near-exact copy detection and for tests.
Crops, flips and rotations move it far; for those use a learned model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from curation.config import EmbedStage
from curation.decode.safe import open_rgb
from curation.embed.registry import Embedder, model_id_for, register_embedder

THUMB_SIDE = 16
PREPROCESS = {"kind": "thumbnail", "side": THUMB_SIDE, "mode": "RGB", "resample": "box", "normalise": "channel-zscore"}


class ThumbnailEmbedder(Embedder):
    dim = THUMB_SIDE * THUMB_SIDE * 3

    def __init__(self) -> None:
        weights = hashlib.sha256(b"builtin-thumbnail-v1").hexdigest()  # no weights: hash of the algorithm's version
        self.model_id = model_id_for("builtin:thumb16", weights, PREPROCESS)

    def embed(self, images: Sequence[bytes]) -> tuple[np.ndarray, list[str | None]]:
        vectors = np.zeros((len(images), self.dim), np.float32)
        errors: list[str | None] = [None] * len(images)
        for index, data in enumerate(images):
            try:
                vectors[index] = self._one(data)
            except Exception as error:  # noqa: BLE001 - one bad image must not lose the batch
                errors[index] = f"{type(error).__name__}: {error}"[:300]
        return vectors, errors

    def _one(self, data: bytes) -> np.ndarray:
        thumb = open_rgb(data, THUMB_SIDE * 4).resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
        pixels = np.asarray(thumb, np.float32).reshape(-1, 3)
        pixels = (pixels - pixels.mean(axis=0)) / (pixels.std(axis=0) + 1.0)
        vector = pixels.reshape(-1)
        norm = np.linalg.norm(vector)
        if norm == 0:  # a flat image: every copy of it is this same vector
            vector = np.full(self.dim, 1.0, np.float32)
            norm = np.linalg.norm(vector)
        return vector / norm


@register_embedder("builtin")
def _create(stage: EmbedStage, argument: str) -> Embedder:
    return ThumbnailEmbedder()
