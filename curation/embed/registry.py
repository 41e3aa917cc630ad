"""Embedder registry: one spec key (`stages.embed.model`) picks the model; an unknown name fails at once.

Every embedder has a stable `model_id` = name + SHA-256 of its weights + SHA-256 of its preprocessing, stored with
every vector and in the manifest's lineage, so vectors from different weights or preprocessing never mix.

    >>> from curation.config import EmbedStage
    >>> embedder = create_embedder(EmbedStage(model="builtin"))
    >>> embedder.dim
    768
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curation.config import EmbedStage
from curation.errors import CurationError, SpecError

_FACTORIES: dict[str, Callable[[EmbedStage, str], Embedder]] = {}


class Embedder(ABC):
    """Bytes in, L2-normalised float32 vectors out. Failed rows are zero vectors with an error message."""

    dim: int
    model_id: str

    @abstractmethod
    def embed(self, images: Sequence[bytes]) -> tuple[np.ndarray, list[str | None]]:
        """Returns ([len(images), dim] float32 unit vectors, per-image error or None)."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] unit vectors in the image vectors' space, for models with a text tower (open_clip)."""
        raise NoTextEncoder(f"{self.model_id} embeds images only; search it by an image")


class NoTextEncoder(CurationError):
    """A text query was put to an embedder that has no text tower."""


# How bytes become RGB before any model-specific step (curation.decode.safe.open_rgb): part of every model id.
DECODE = {"orientation": "exif", "alpha": "composite-on-white", "frame": "first"}


def model_id_for(name: str, weights_sha256: str, preprocess: dict[str, Any], arch: dict[str, Any] | None = None) -> str:
    """name@w<weights>-p<everything else that shapes the vectors>: preprocessing, decoding and, for a bundled
    backbone, its architecture settings (heads, RoPE base: the same weights can load into another model)."""
    described = {**preprocess, "decode": DECODE, **({"arch": arch} if arch else {})}
    preprocess_sha = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    return f"{name}@w{weights_sha256[:16]}-p{preprocess_sha[:12]}"


def register_embedder(prefix: str):
    """Decorator: `@register_embedder("timm")` makes `model: timm:<name>` build through the decorated factory."""

    def decorate(factory: Callable[[EmbedStage, str], Embedder]):
        _FACTORIES[prefix] = factory
        return factory

    return decorate


def list_embedders() -> list[str]:
    _load_plugins()
    return sorted(_FACTORIES)


def create_embedder(stage: EmbedStage) -> Embedder:
    _load_plugins()
    prefix, _, argument = stage.model.partition(":")
    if prefix not in _FACTORIES:
        raise SpecError(f"stages.embed.model: unknown embedder {stage.model!r}; known: {', '.join(sorted(_FACTORIES))}")
    if prefix != "builtin" and not argument:
        raise SpecError(f"stages.embed.model: {prefix!r} needs a model name, e.g. '{prefix}:<name>'")
    return _FACTORIES[prefix](stage, argument)


def _load_plugins() -> None:
    """Register the built-in families. Torch-based ones import torch lazily, inside their factories."""
    from curation.embed import backbone, builtin, torch_models  # noqa: F401
