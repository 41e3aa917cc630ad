"""Search a published version by example, as clip-retrieval does for LAION: the k samples nearest to an image
(or, with a CLIP-like embedder, to a caption).

The version's own embedder and its stored vectors answer: the query is embedded (an image someone holds) or looked
up (a sample's id), the version's samples are one memory-mapped float16 matrix (`load_matrix`), scanned in chunks
for the exact top k by cosine (one query needs no index; memory stays bounded). Read-only: a version published
without an embed stage has no vectors, and the search says so instead of embedding the whole version behind a
query.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from curation.api import open_version
from curation.audit.apply import embed_stage_of
from curation.audit.queries import QueryError
from curation.config import DecodeStage, EmbedStage
from curation.decode.safe import inspect_image
from curation.embed.registry import Embedder, NoTextEncoder, create_embedder
from curation.embed.vectors import load_matrix
from curation.select.retrieval import streamed_top_k
from curation.store.catalog import Catalog
from curation.store.home import Home

MAX_K = 1000  # a query returns at most this many neighbours


@functools.lru_cache(maxsize=4)
def query_embedder(stage: EmbedStage, model_id: str) -> Embedder:
    """The embedder that made vectors `model_id`, loaded once for all of a process's queries (the service answers
    many). Refused when the stage's files now make another model (weights re-exported in place): its vectors would
    not be comparable, and the answers silently wrong."""
    embedder = create_embedder(stage)
    if embedder.model_id != model_id:
        raise QueryError(f"the version's vectors are {model_id}, but {stage.model} now loads {embedder.model_id} "
                         "(its weights changed since): queries cannot be embedded comparably; search by a sample's "
                         "image id instead")  # fmt: skip
    return embedder


def similar_samples(home: str | Path, ref: str, *, image: bytes | None = None, image_id: str | None = None,
                    text: str | None = None, k: int = 10) -> dict[str, Any]:  # fmt: skip
    """The `k` samples of `ref` nearest to `image` (bytes), to the sample `image_id` (which is left out), or to a
    caption `text` (embedders with a text tower: open_clip)."""
    if sum(query is not None for query in (image, image_id, text)) != 1:
        raise QueryError("search by an image, a sample's image id or a text: give exactly one")
    if text is not None and not text.strip():
        raise QueryError("the text query is empty")
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, not {k}")
    version = open_version(ref, home=home)
    embed_step = next((step for step in version.manifest["lineage"] if step["stage"] == "embed"), None)
    if embed_step is None:
        raise QueryError(f"{version.ref} was published without stages.embed: its samples have no vectors to search")
    samples = version.samples()
    image_ids = samples["image_id"].to_pylist()
    home = Home(home)
    with Catalog.open(home.catalog_path, read_only=True, wait_s=30) as catalog:
        try:
            matrix = load_matrix(catalog, home.vectors, embed_step["model_id"], image_ids)
        except KeyError as error:  # the home's vector cache lost some of the version's vectors
            raise QueryError(f"{version.ref}: {error.args[0]}") from None
    if image is not None:
        decoded = inspect_image(image, DecodeStage(min_side=1))  # bombs, truncation, non-images: refused here
        if not decoded.ok:
            raise QueryError(f"the query is not a usable image ({decoded.reason}: {decoded.detail})")
        embedder = query_embedder(embed_stage_of(version.manifest["lineage"]), embed_step["model_id"])
        vectors, errors = embedder.embed([image])
        if errors[0]:
            raise QueryError(f"the query image cannot be embedded: {errors[0]}")
        query, exclude = vectors[0], None
    elif text is not None:
        try:
            embedder = query_embedder(embed_stage_of(version.manifest["lineage"]), embed_step["model_id"])
            query, exclude = embedder.embed_text([text])[0], None
        except NoTextEncoder:
            raise QueryError(f"{version.ref} was embedded with {embed_step['model_id']}, which has no text encoder: "
                             "search it by an image") from None  # fmt: skip
    else:
        image_id = image_id.strip().lower()  # a SHA-256 as people paste it
        if image_id not in image_ids:
            raise QueryError(f"{image_id} is not a sample of {version.ref}")
        exclude = image_ids.index(image_id)
        query = np.asarray(matrix[exclude], np.float32)
    found = nearest_rows(matrix, query, k, exclude)
    rows = samples.take([position for position, _ in found]).to_pylist()  # only the winners become Python rows
    neighbours = []
    for sample, (_position, similarity) in zip(rows, found):
        first = sample["provenance"][0] if sample["provenance"] else {}
        neighbours.append({"rank": len(neighbours) + 1, "image_id": sample["image_id"],
                           "similarity": round(similarity, 6), "part": sample["part"],
                           "source": first.get("source"), "uri": first.get("uri"), "license": sample["license"],
                           "shard": sample["shard"]})  # fmt: skip
    query_id = image_id or (hashlib.sha256(image).hexdigest() if image is not None else None)
    return {"ref": version.ref, "model_id": embed_step["model_id"], "query_image_id": query_id, "query_text": text,
            "neighbours": neighbours}  # fmt: skip


def nearest_rows(matrix: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> list[tuple[int, float]]:
    """(row, cosine) of the k rows of a unit-vector matrix nearest to `query`, best first (ties: lower row), leaving
    out row `exclude`: the retrieval's chunked scan, so memory stays bounded whatever the matrix's size."""
    wanted = min(len(matrix), k + (exclude is not None))
    if not wanted:
        return []
    scores, rows = streamed_top_k(np.asarray(query, np.float32)[None], matrix, None, wanted)
    found = sorted(((int(row), float(score)) for score, row in zip(scores[0], rows[0]) if row >= 0 and row != exclude),
                   key=lambda hit: (-hit[1], hit[0]))  # fmt: skip
    return found[:k]
