"""The driver's side of dedup and decontamination: gather hashes and vectors, build edges, group, record.

Dedup keeps one representative per group and drops the rest (`near_duplicate` or `perceptual_duplicate`, the
detail naming the representative, group, method, similarity and threshold). Decontamination, on the pool before
dedup, drops every pool image whose component (pool-evaluation edges at its threshold, pool-pool edges at the
copy threshold, dedup's groups) holds an evaluation image (`contamination`, the detail naming that image).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.config import DedupStage, PipelineSpec
from curation.core.progress import Progress
from curation.dedup.graph import HIGHEST_THRESHOLD, cross_edges, knn_edges
from curation.dedup.groups import Edges, Member, components, group_duplicates
from curation.dedup.perceptual import perceptual_edges, phash
from curation.embed.driver import embed_images
from curation.embed.vectors import load_matrix
from curation.ingest import Block, plan_blocks
from curation.ingest.raw import chunk
from curation.ingest.stage import block_output_key, ingest_block
from curation.publish.release import resolve
from curation.store.blobs import BlobStore
from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.store.objects import read_parquet
from curation.types import KEPT, Reason

LOG = logging.getLogger(__name__)
CHAIN_WARNING_MIN = 100  # a duplicate group at least this large (and CHAIN_WARNING_SHARE of the pool) is suspect
CHAIN_WARNING_SHARE = 0.01


def phash_block(block: Block, blobs: BlobStore) -> list[tuple[str, int | None]]:
    """Perceptual hashes of a block of image ids (a Ray task). Only a decode failure is an image without a hash
    (cached as such); a failing read of the store raises, so the task is retried and nothing false is cached."""
    result = []
    for image_id in block.items:
        data = blobs.get(image_id)
        try:
            result.append((image_id, phash(data)))
        except Exception:  # noqa: BLE001 - an image ingest accepted but pHash cannot decode: no perceptual edges
            result.append((image_id, None))
    return result


def phashes_for(catalog: Catalog, blobs: BlobStore, image_ids: list[str], executor: Callable[[], Any]) -> list[int]:
    """Hashes in `image_ids` order, computed once per image (cached in the catalog)."""
    known = catalog.phashes(image_ids)
    missing = [image_id for image_id in image_ids if image_id not in known]
    if missing:
        blocks = [Block(i, "phash", "phash", tuple(ids)) for i, ids in enumerate(chunk(missing, 512))]
        computed = [pair for result in executor().map(phash_block, blocks, blobs) for pair in result]
        catalog.record_phashes(computed)
        known.update({image_id: value for image_id, value in computed})
    return [known[image_id] if known[image_id] is not None else -1 for image_id in image_ids]


def _pixels(kept: pa.Table) -> tuple[list[str], list[int]]:
    by_image: dict[str, int] = {}
    for image_id, width, height in zip(kept["image_id"].to_pylist(), kept["width"].to_pylist(),
                                       kept["height"].to_pylist()):  # fmt: skip
        by_image.setdefault(image_id, int(width or 0) * int(height or 0))
    image_ids = sorted(by_image)
    return image_ids, [by_image[image_id] for image_id in image_ids]


def _curated_images(spec: PipelineSpec, kept: pa.Table) -> frozenset[str]:
    """Images from curated sources (composition's `source` parts and retrieval seeds): they represent their
    duplicate groups, so a curated image is never dropped for a web copy of it."""
    select = spec.stages.select
    names = {name for part in select.parts if part.kind == "source" for name in part.sources}
    names |= {name for part in select.parts if part.kind == "retrieval" for name in part.seeds}
    if not names:
        return frozenset()
    curated = kept.filter(pc.is_in(kept["source"], pa.array(sorted(names))))
    return frozenset(curated["image_id"].to_pylist())


def _published_images(catalog: Catalog, refs: tuple[str, ...]) -> dict[str, int]:
    """{image id: pixel count} of every image in the given versions."""
    found: dict[str, int] = {}
    for ref in refs:
        row = resolve(catalog, ref)
        for image_id, width, height in catalog.db.execute(
            "SELECT s.image_id, i.width, i.height FROM version_samples s JOIN images i USING (image_id) "
            "WHERE s.name = ? AND s.version = ?",
            [row["name"], row["version"]],
        ).fetchall():
            found[image_id] = int(width or 0) * int(height or 0)
    return found


def run_dedup(spec: PipelineSpec, home: Home, catalog: Catalog, run_id: str, kept: pa.Table, model_id: str | None,
              executor: Callable[[], Any], progress: Progress | None = None) -> tuple[dict, dict]:  # fmt: skip
    """Returns (stats, {dropped image id: (Reason, detail)})."""
    settings = spec.stages.dedup
    image_ids, pixels = _pixels(kept)
    # Incremental: the past always wins representation, also where it reappears in this pool; what is not in the
    # pool takes part in the graph as extra nodes, never to be published again here.
    published = _published_images(catalog, settings.against)
    extra = sorted(set(published) - set(image_ids))
    if extra:
        sizes = {**dict(zip(image_ids, pixels)), **published}
        image_ids = sorted([*image_ids, *extra])
        pixels = [sizes[image_id] for image_id in image_ids]
        if settings.copy_detection:
            embed_images(spec.stages.embed, home, catalog, f"{run_id}-published", extra, home.blobs(spec),
                         executor, None)  # fmt: skip
    edges = []
    hashes: list[int] = []
    graph_timings: dict[str, float] = {}
    if settings.perceptual and image_ids:
        hashes = phashes_for(catalog, home.blobs(spec), image_ids, executor)
        i, j, distance = perceptual_edges(hashes, settings.phash_max_distance)  # images without a hash: none
        edges.append(Edges("perceptual", i, j, 1 - distance / 64, 1 - settings.phash_max_distance / 64))
    if settings.copy_detection and image_ids:
        vectors = load_matrix(catalog, home.vectors, model_id, image_ids)  # memory-mapped float16: no pool copy
        i, j, similarity = knn_edges(vectors, settings.threshold, settings, timings=graph_timings, progress=progress,
                                     runner=executor() if settings.distributed else None)  # fmt: skip
        edges.append(Edges("copy_detection", i, j, similarity, min(settings.threshold, HIGHEST_THRESHOLD)))
    curated = _curated_images(spec, kept)
    outside = frozenset(extra)
    tiers = (frozenset(published) - outside, outside, curated)  # the past wins, first where it is crawled again
    members = [m for m in group_duplicates(image_ids, pixels, edges, tiers) if m.image_id not in outside]
    catalog.record_duplicates(run_id, "dedup", members, model_id)
    group_sizes = Counter(member.group_id for member in members)
    largest = max(group_sizes.values()) + 1 if group_sizes else 0  # + the kept representative
    stats = {
        "images": len(image_ids),
        "perceptual_edges": int(sum(len(e.i) for e in edges if e.method == "perceptual")),
        "copy_edges": int(sum(len(e.i) for e in edges if e.method == "copy_detection")),
        "published_images": len(published),
        "published_in_pool": len(published) - len(extra),
        "phash_unusable": sum(value < 0 for value in hashes),  # images pHash could not decode: no perceptual edges
        "groups": len(group_sizes),
        "largest_group": largest,
        "dropped_images": len(members),
        **{f"copy_graph_{key}": round(value, 3) for key, value in graph_timings.items()},  # where the time went
    }
    warning = chaining_warning(largest, len(image_ids))
    if warning:
        stats["warning"] = warning
        LOG.warning(warning)
    return stats, dedup_verdicts(members, frozenset(published))


def chaining_warning(largest_group: int, images: int, what: str = "dedup: the largest duplicate group") -> str | None:
    """Copies of one image rarely number in the hundreds; a group that large is a chain of look-alikes that the
    descriptor cannot tell apart (A~B~C~... through the transitive closure), and it silently empties the pool."""
    if largest_group < max(CHAIN_WARNING_MIN, CHAIN_WARNING_SHARE * images):
        return None
    return (
        f"{what} holds {largest_group} of {images} images: likely a chain of look-alike images, not copies. "
        "Raise stages.dedup.threshold, lower phash_max_distance, or embed with a copy-detection model "
        "(docs/dedup.md); `curate dups RUN` lists the groups."
    )


def dedup_verdicts(members: list[Member], published: frozenset[str]) -> dict[str, tuple[Reason, str]]:
    verdicts = {}
    for member in members:
        reason = Reason.PERCEPTUAL_DUPLICATE if member.method == "perceptual" else Reason.NEAR_DUPLICATE
        detail = {"group": member.group_id, "kept": member.representative, "method": member.method,
                  "similarity": member.similarity, "threshold": member.threshold,
                  "neighbour": member.neighbour, "kept_is_published": member.representative in published}  # fmt: skip
        verdicts[member.image_id] = (reason, json.dumps(detail, sort_keys=True))
    return verdicts


def _evaluation_images(spec: PipelineSpec, home: Home, run_id: str, executor: Callable[[], Any]) -> pa.Table:
    """Ingest the evaluation sets without publishing them; their rows stay in the run dir. Only the safety limits
    of decode apply (bombs, corrupt bytes, size, formats): the pool's taste (min_side, quality checks) must not
    drop a small test image and so let its copies through. Returns every row, kept or not."""
    safety_only = spec.stages.decode.model_copy(update={"min_side": 1, "quality": None})
    evaluation = spec.model_copy(update={"sources": spec.stages.decontaminate.sets,
                                         "stages": spec.stages.model_copy(update={"decode": safety_only})})  # fmt: skip
    plan_id = f"{run_id}-evaluation"
    key = f"{plan_id}/plan.json"
    if home.runs.exists(key):
        blocks = [Block.from_json(item) for item in json.loads(home.runs.get(key))]
    else:
        blocks = plan_blocks(evaluation)
        home.runs.put(key, json.dumps([block.to_json() for block in blocks]).encode())
    pending = [block for block in blocks if not home.runs.exists(block_output_key(plan_id, block.index))]
    if pending:
        list(executor().map(ingest_block, pending, evaluation, home.blobs(spec), home.runs, plan_id))
    return pa.concat_tables([read_parquet(home.runs, block_output_key(plan_id, block.index)) for block in blocks])


def representatives(dedup_verdicts: dict[str, tuple[Reason, str]]) -> dict[str, str]:
    """{image dedup dropped: the representative kept for its group} from dedup's verdicts."""
    return {image_id: json.loads(detail)["kept"] for image_id, (_reason, detail) in dedup_verdicts.items()}


def run_decontaminate(spec: PipelineSpec, home: Home, catalog: Catalog, run_id: str, kept: pa.Table,
                      model_id: str, executor: Callable[[], Any], progress: Progress,
                      duplicates_of: dict[str, str] | None = None):  # fmt: skip
    """Returns (stats, {pool image id: (Reason, detail)}). `kept` is the pool before dedup and `duplicates_of`
    dedup's {dropped image: representative}: a group is contaminated whichever of its members touches an
    evaluation image, so the answer cannot depend on which copy dedup happened to keep."""
    settings = spec.stages.decontaminate
    rows = _evaluation_images(spec, home, run_id, executor)
    evaluation = rows.filter(pc.equal(rows["status"], KEPT))
    eval_ids = sorted(set(evaluation["image_id"].to_pylist()))
    eval_uri = dict(zip(evaluation["image_id"].to_pylist(), evaluation["uri"].to_pylist()))
    _stats, _model, failures = embed_images(spec.stages.embed, home, catalog, f"{run_id}-evaluation", eval_ids,
                                            home.blobs(spec), executor, progress, label="embed evaluation")  # fmt: skip
    eval_ids = [image_id for image_id in eval_ids if image_id not in failures]
    unusable = sorted({*rows.filter(pc.not_equal(rows["status"], KEPT))["uri"].to_pylist(),
                       *(eval_uri[image_id] for image_id in failures)})  # fmt: skip
    stats = {"evaluation_images": len(eval_ids), "evaluation_unusable": len(unusable)}
    if unusable:  # a test image we cannot read cannot be protected: say so
        stats["warning"] = (f"decontaminate: {len(unusable)} evaluation input(s) could not be read or embedded, so "
                            f"their copies are not looked for (first: {', '.join(unusable[:3])})")  # fmt: skip
        LOG.warning(stats["warning"])
    pool_ids = sorted(set(kept["image_id"].to_pylist()))
    if not eval_ids or not pool_ids:
        return {**stats, "dropped_images": 0}, {}
    pool = load_matrix(catalog, home.vectors, model_id, pool_ids)  # memory-mapped float16: read in batches
    references = np.asarray(load_matrix(catalog, home.vectors, model_id, eval_ids), np.float32)
    graph_settings = spec.stages.dedup or DedupStage()
    pool_threshold = min(settings.pool_threshold or graph_settings.threshold, HIGHEST_THRESHOLD)
    threshold = min(settings.threshold, HIGHEST_THRESHOLD)
    runner = executor() if graph_settings.distributed else None
    hits_i, hits_j, hits_s = cross_edges(pool, references, threshold, graph_settings, runner=runner)
    pool_i, pool_j, pool_s = knn_edges(pool, pool_threshold, graph_settings, progress=progress,
                                       label="decontamination graph", runner=runner)  # fmt: skip
    count = len(pool_ids)
    node = {image_id: n for n, image_id in enumerate(pool_ids)}
    links = np.asarray([(node[a], node[b]) for a, b in sorted((duplicates_of or {}).items())
                        if a in node and b in node], np.int64).reshape(-1, 2)  # fmt: skip
    graph = [
        Edges("pool", pool_i, pool_j, pool_s, pool_threshold),
        Edges("dedup_group", links[:, 0], links[:, 1], np.ones(len(links), np.float32), pool_threshold),
        Edges("contamination", hits_i, hits_j + count, hits_s, threshold),
    ]
    labels = components(count + len(eval_ids), graph)
    touched: dict[int, tuple[float, str]] = {}  # component -> its strongest evaluation hit
    own: dict[int, float] = {}  # pool node -> its own strongest evaluation hit
    for i, j, score in zip(hits_i.tolist(), hits_j.tolist(), hits_s.tolist()):
        label = int(labels[i])
        if label not in touched or score > touched[label][0]:
            touched[label] = (score, eval_ids[j])
        own[i] = max(own.get(i, score), score)
    verdicts = {}
    members = []
    for n, image_id in enumerate(pool_ids):
        label = int(labels[n])
        if label not in touched:
            continue
        best, eval_id = touched[label]
        similarity = round(own[n], 6) if n in own else None  # None: it is in the group through another image
        detail = {"evaluation_image": eval_id, "evaluation_uri": eval_uri.get(eval_id), "similarity": similarity,
                  "group_similarity": round(best, 6), "threshold": threshold, "pool_threshold": pool_threshold,
                  "group": f"contamination-{label}"}  # fmt: skip
        verdicts[image_id] = (Reason.CONTAMINATION, json.dumps(detail, sort_keys=True))
        members.append(Member(image_id, f"contamination-{label}", eval_id, "contamination", round(best, 6),
                              threshold, eval_id))  # fmt: skip
    catalog.record_duplicates(run_id, "decontaminate", members, model_id)
    largest = max(Counter(member.group_id for member in members).values(), default=0)
    warning = chaining_warning(largest, count, "decontaminate: the largest contaminated group")
    if warning:
        stats["warning"] = f"{stats['warning']}; {warning}" if "warning" in stats else warning
        LOG.warning(warning)
    return {**stats, "dropped_images": len(verdicts), "largest_group": largest}, verdicts
