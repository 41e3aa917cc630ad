"""The driver's side of the embed stage: learn the model id, plan blocks of not-yet-embedded images, run them on
the executor's actor pool, then commit vectors and failures to the catalog (the one writer).

Cache: an image that already has a vector for this exact model id (weights + preprocessing) is not embedded
again, in this run or any later one, whatever pool it came from. Resume: the plan is written once per run and a
block is done when its index file exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.config import EmbedStage, PipelineSpec
from curation.core.progress import Progress
from curation.embed.registry import create_embedder
from curation.embed.stage import EmbedBlocks, EmbedSummary
from curation.embed.vectors import block_keys, forget_damaged, model_key, read_block_index
from curation.errors import RunError
from curation.ingest.raw import Block, chunk
from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.types import Reason


def describe_model(stage: EmbedStage) -> dict[str, Any]:
    """Model id and dimension, from a CPU instance in the driver (the id does not depend on the device)."""
    embedder = create_embedder(stage.model_copy(update={"device": "cpu", "compile": False}))
    return {"model_id": embedder.model_id, "dim": embedder.dim}


def _actor_shape(stage: EmbedStage, cpus: float, gpus: float) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor): one actor per GPU share, else one per cpus_per_actor CPUs."""
    use_gpus = gpus > 0 and stage.device != "cpu"
    gpus_each = stage.gpus_per_actor if use_gpus else 0.0
    default = int(gpus / gpus_each) if use_gpus else max(1, int(cpus // stage.cpus_per_actor))
    return stage.actors or default, float(stage.cpus_per_actor), gpus_each


def run_embed_stage(spec: PipelineSpec, home: Home, catalog: Catalog, run_id: str, kept: pa.Table,
                    executor: Callable[[], Any], progress: Progress):  # fmt: skip
    """Embed the run's kept images. Returns (stats, {model_id, dim}, {image id: (Reason, detail)}) where the
    verdicts drop the images the embedder could not process."""
    stats, model, failures = embed_images(spec.stages.embed, home, catalog, run_id, kept["image_id"].to_pylist(),
                                          home.blobs(spec), executor, progress)  # fmt: skip
    return stats, model, {image_id: (Reason.EMBED_FAILED, error) for image_id, error in failures.items()}


def embed_images(stage: EmbedStage, home: Home, catalog: Catalog, plan_id: str, image_ids: list[str],
                 blobs, executor: Callable[[], Any], progress: Progress | None, label: str = "embed"):  # fmt: skip
    """Vectors for `image_ids` under `stage`'s model, embedding only those the cache lacks. Resumable per
    `plan_id` (a run id). Returns (stats, {model_id, dim}, {image_id: error} for failures)."""
    model = describe_model(stage)
    model_id = model["model_id"]
    # per model: a resumed run whose embedder's files changed meanwhile (another model id) plans afresh against
    # that model's cache, rather than finishing blocks planned against the old one's
    plan_key = f"{plan_id}/embed-plan-{model_key(model_id)}.json"
    vectors = home.vectors
    forgotten = forget_damaged(catalog, vectors, model_id)  # a truncated cache file is embedded again
    if home.runs.exists(plan_key):
        blocks = [Block.from_json(item) for item in json.loads(home.runs.get(plan_key))]
        planned = {image_id for block in blocks for image_id in block.items}
        again = sorted(forgotten & set(image_ids) - planned)  # the plan counted them as cached
        blocks += [Block(len(blocks) + i, "embed", "embed", tuple(ids)) for i, ids in
                   enumerate(chunk(again, stage.block_size))]  # fmt: skip
    else:
        wanted = sorted(set(image_ids) - catalog.embedded_ids(model_id))
        blocks = [Block(i, "embed", "embed", tuple(ids)) for i, ids in enumerate(chunk(wanted, stage.block_size))]
    home.runs.put(plan_key, json.dumps([block.to_json() for block in blocks]).encode())
    pending = [block for block in blocks if not vectors.exists(block_keys(model_id, plan_id, block.index)[1])]

    started = time.perf_counter()
    images = embedded = 0
    if pending:
        runner = executor()
        actors, cpus_each, gpus_each = _actor_shape(stage, *runner.resources())
        total = sum(len(block.items) for block in blocks)
        remaining = sum(len(block.items) for block in pending)
        bar = (progress or Progress()).bar(label, total=total, initial=total - remaining, unit="img")
        with catalog.released(), bar:
            summary: EmbedSummary
            for summary in runner.map_actors(EmbedBlocks, pending, stage, blobs, vectors, plan_id,
                                             actors=actors, num_cpus=cpus_each, num_gpus=gpus_each):  # fmt: skip
                images += summary.images
                embedded += summary.embedded
                bar.update(summary.images, img_s=round(images / max(time.perf_counter() - started, 1e-9)))
    seconds = time.perf_counter() - started
    missing = [block.index for block in pending if not vectors.exists(block_keys(model_id, plan_id, block.index)[1])]
    if missing:
        raise RunError(f"run {plan_id}: embed block(s) {missing[:5]} produced no output; run again to resume")

    failures = commit_blocks(catalog, vectors, model_id, plan_id, blocks)
    stats = {
        **model,
        "blocks": len(pending),
        "resumed_blocks": len(blocks) - len(pending),
        "cached_images": len(set(image_ids)) - sum(len(block.items) for block in blocks),
        "images": images,
        "embedded": embedded,
        "failed": len(failures),
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1) if images and seconds > 0 else 0.0,
    }
    return stats, model, failures


def commit_blocks(catalog: Catalog, vectors, model_id: str, run_id: str, blocks: list[Block]) -> dict[str, str]:
    """Record every block's vectors in the catalog; returns {image_id: error} for the images that failed."""
    failures: dict[str, str] = {}
    tables = []
    for block in blocks:
        index = read_block_index(vectors, model_id, run_id, block.index)
        ok = index.filter(pc.greater_equal(index["row"], 0))
        npy_key = block_keys(model_id, run_id, block.index)[0]
        tables.append(pa.table({"image_id": ok["image_id"], "file": pa.array([npy_key] * ok.num_rows, pa.string()),
                                "row": ok["row"]}))  # fmt: skip
        failed = index.filter(pc.less(index["row"], 0))
        failures.update(zip(failed["image_id"].to_pylist(), failed["error"].to_pylist()))
    if tables:
        catalog.commit_embeddings(model_id, run_id, pa.concat_tables(tables))
    return failures
