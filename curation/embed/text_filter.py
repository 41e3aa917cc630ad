"""Text-guided filtering (`stages.filter`), the way LAION filtered with CLIP: the embedder's text tower scores each
kept image against unwanted prompts ("a screenshot of text") and against its own caption, and images past a
rule are dropped with the prompt or the score as the reason's detail.

It runs in the driver on the image vectors the embed stage stored (no image is decoded again); only texts are
embedded, in batches. An image with several captions (several provenance rows) is kept when any of them
describes it; an image without a caption is not judged by the caption rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from curation.config import EmbedStage, FilterStage
from curation.core.progress import Progress
from curation.embed.registry import create_embedder
from curation.embed.vectors import load_matrix
from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.types import Reason

ROWS_PER_PASS = 65_536  # image vectors scored against the prompts at a time


def filter_images(rules: FilterStage, embed: EmbedStage, home: Home, catalog: Catalog, kept: pa.Table,
                  model_id: str, progress: Progress | None = None,
                  ) -> tuple[dict[str, Any], dict[str, tuple[Reason, str]]]:  # fmt: skip
    """(stats, {image id: (reason, detail)}) for the kept inputs' images."""
    captions: dict[str, set[str]] = {}
    for image_id, caption in zip(kept["image_id"].to_pylist(), kept["caption"].to_pylist()):
        captions.setdefault(image_id, set())
        if caption and caption.strip():
            captions[image_id].add(caption.strip())
    image_ids = sorted(captions)
    if not image_ids:
        return {"images": 0, "prompt_match": 0, "caption_mismatch": 0, "captioned_images": 0}, {}
    vectors = load_matrix(catalog, home.vectors, model_id, image_ids)
    embedder = create_embedder(embed.model_copy(update={"compile": False}))
    verdicts: dict[str, tuple[Reason, str]] = {}
    if rules.prompts:
        prompts = embedder.embed_text([rule.text for rule in rules.prompts])
        limits = np.array([rule.max_similarity for rule in rules.prompts], np.float32)
        for start in range(0, len(image_ids), ROWS_PER_PASS):
            scores = np.asarray(vectors[start : start + ROWS_PER_PASS], np.float32) @ prompts.T
            for row, rule in zip(*np.nonzero(scores >= limits)):
                image_id = image_ids[start + row]
                if image_id not in verdicts:  # the first prompt it matches, in the spec's order
                    detail = f"cosine {scores[row, rule]:.3f} to {rules.prompts[rule].text!r} >= {limits[rule]:.3f}"
                    verdicts[image_id] = (Reason.PROMPT_MATCH, detail)
    captioned = [i for i, image_id in enumerate(image_ids) if captions[image_id] and image_id not in verdicts]
    if rules.min_caption_similarity is not None and captioned:
        pairs = [(i, text) for i in captioned for text in sorted(captions[image_ids[i]])]
        best = np.full(len(image_ids), -np.inf, np.float32)
        with (progress or Progress()).bar("filter captions", total=len(pairs), unit="text") as bar:
            for start in range(0, len(pairs), rules.batch_size):
                batch = pairs[start : start + rules.batch_size]
                texts = embedder.embed_text([text for _, text in batch])
                rows = np.array([i for i, _ in batch])
                scores = np.einsum("ij,ij->i", np.asarray(vectors[rows], np.float32), texts)
                np.maximum.at(best, rows, scores)
                bar.update(len(batch))
        floor = rules.min_caption_similarity
        for i in captioned:
            if best[i] < floor:
                detail = f"best caption cosine {best[i]:.3f} < min_caption_similarity {floor}"
                verdicts[image_ids[i]] = (Reason.CAPTION_MISMATCH, detail)
    reasons = [reason for reason, _ in verdicts.values()]
    stats = {"images": len(image_ids), "prompt_match": reasons.count(Reason.PROMPT_MATCH),
             "caption_mismatch": reasons.count(Reason.CAPTION_MISMATCH),
             "captioned_images": sum(1 for texts in captions.values() if texts)}  # fmt: skip
    return stats, verdicts
