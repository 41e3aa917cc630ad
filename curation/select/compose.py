"""Composition (DINOv3): the version is a mix of named parts — curated sets as they are, retrieved sets, the
balanced set. Returns, per selected image, every reason it was selected (part, and seed/rank/similarity or
cluster path/rule), in part order, so an image in several parts is published once with all its reasons.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from curation.config import BalancedPart, RetrievalPart, SelectStage, SourcePart
from curation.core.progress import Progress
from curation.select.balance import hierarchical_sample
from curation.select.kmeans import (
    Level,
    Points,
    StreamedPoints,
    assign,
    cached,
    hierarchical_kmeans,
    hierarchy_passes,
    kmeans,
)
from curation.select.retrieval import cluster_based, sample_based
from curation.select.sharded import ShardedPoints, ShardPool

Reasons = dict[str, list[dict[str, Any]]]
CacheFolder = Callable[[str, list[int], dict[str, Any]], Path | None]  # (name, members, settings) -> folder
POOL_ITERATIONS = 20  # Lloyd iterations of the pool k-means behind cluster-based retrieval


def compose(stage: SelectStage, image_ids: list[str], sources: list[set[str]], vectors: np.ndarray | None,
            workdir: Path | None = None, shards: ShardPool | None = None,
            progress: Progress | None = None) -> tuple[Reasons, dict[str, dict[str, Any]]]:  # fmt: skip
    """({image id: [reason, ...]} for the selected images, {part: report details}). `sources[i]` are the sources
    image i came from; `vectors[i]` its unit vector (needed by retrieval and balanced parts). With `shards`
    (actors over the same vectors), every k-means and every sample-based retrieval scan runs on them
    (curation/select/sharded.py). Every k-means reports its Lloyd passes to `progress` as a bar ("k-means PART"),
    which is also where a cancelled run stops. What a k-means saves under `workdir` is keyed by its points' image
    ids and settings (`_cache_folder`), so a rerun reuses it only for the same points."""
    progress = progress or Progress()  # silent: no bar, never cancelled

    def points_of(rows: list[int]) -> Points | StreamedPoints | ShardedPoints:
        return shards.points(np.asarray(rows)) if shards is not None else Points.of(vectors, rows=rows)

    def cache_folder(name: str, members: list[int], settings: dict[str, Any]) -> Path | None:
        return None if workdir is None else _cache_folder(Path(workdir) / name, [image_ids[i] for i in members],
                                                          settings)  # fmt: skip

    rng = np.random.default_rng(stage.seed)
    reserved = set()  # sources that are some part's seeds or curated set: not part of "the pool"
    for part in stage.parts:
        reserved |= set(part.seeds if isinstance(part, RetrievalPart) else ())
        reserved |= set(part.sources if isinstance(part, SourcePart) else ())
    pool = [i for i, came_from in enumerate(sources) if not came_from & reserved]
    reasons: dict[str, list[dict[str, Any]]] = {}
    details: dict[str, dict[str, Any]] = {}

    def add(index: int, reason: dict[str, Any]) -> None:
        reasons.setdefault(image_ids[index], []).append(reason)

    pool_clusters = _PoolClusters(points_of, pool, stage.seed, cache_folder, progress)

    for number, part in enumerate(stage.parts):
        if isinstance(part, SourcePart):
            members = [i for i, came_from in enumerate(sources) if came_from & set(part.sources)]
            if part.target is not None and part.target < len(members):
                members = sorted(rng.choice(members, part.target, replace=False).tolist())
            for index in members:
                add(index, {"part": part.name, "rule": "source"})
        elif isinstance(part, RetrievalPart):
            details[part.name] = _retrieve(part, image_ids, sources, vectors, pool, stage.seed + number, add,
                                           pool_clusters.of, shards)  # fmt: skip
        elif isinstance(part, BalancedPart):
            members = pool if not part.sources else [i for i, c in enumerate(sources) if c & set(part.sources)]
            details[part.name] = _balance(part, members, points_of, stage.seed + number, cache_folder, add,
                                          progress)  # fmt: skip
    return reasons, details


def _cache_folder(folder: Path, image_ids: list[str], settings: dict[str, Any]) -> Path:
    """folder/KEY, KEY a hash of the points' image ids (in their order) and the settings that shape what is saved:
    a resumed run whose pool changed (an opt-out filed before the resume removes images ahead of selection)
    computes afresh instead of reusing another pool's centroids or per-point leaves. The other keys' folders,
    stale now, are removed."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for start in range(0, len(image_ids), 65_536):
        digest.update("".join(f"{image_id}\n" for image_id in image_ids[start : start + 65_536]).encode())
    keyed = folder / digest.hexdigest()[:16]
    for stale in folder.iterdir() if folder.is_dir() else ():
        if stale != keyed:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return keyed


class _PoolClusters:
    """The pool's k-means, once per cluster count, shared by every cluster-based part that asks for that many
    (DINOv2 clustered its pool once for all its small seed sets); the centroids are saved under the run's select
    folder, so a rerun does not cluster again."""

    def __init__(self, points_of, pool: list[int], seed: int, cache_folder: CacheFolder, progress: Progress):
        self.points_of, self.pool, self.seed, self.cache_folder = points_of, pool, seed, cache_folder
        self.progress = progress
        self.fitted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def of(self, clusters: int) -> tuple[np.ndarray, np.ndarray]:
        """(centroids, pool labels) for `clusters` clusters."""
        if clusters not in self.fitted:
            name = f"_pool-kmeans-{clusters}"  # no part name starts with "_"
            settings = {"clusters": clusters, "iterations": POOL_ITERATIONS, "seed": self.seed}
            folder = self.cache_folder(name, self.pool, settings)
            points = self.points_of(self.pool)
            if folder is not None and (folder / "centroids.npy").exists():
                centroids = np.load(folder / "centroids.npy")
                labels = assign(points, centroids)[0]
            else:
                with self.progress.bar(f"k-means pool ({clusters} clusters)", total=POOL_ITERATIONS,
                                       unit="pass") as bar:  # fmt: skip
                    centroids, labels = kmeans(points, clusters, iterations=POOL_ITERATIONS, seed=self.seed,
                                               on_pass=bar.update)  # fmt: skip
                cached(folder, "centroids", lambda: centroids)
            self.fitted[clusters] = centroids, labels
        return self.fitted[clusters]


def _retrieve(part: RetrievalPart, image_ids, sources, vectors, pool, seed, add, pool_clusters,
              shards: ShardPool | None) -> dict[str, Any]:  # fmt: skip
    """Adds the part's pulls, each seed dataset's own (`cap` applies to each, as DINOv2 capped each seed dataset;
    an image in two of them seeds for both), every reason naming its seed dataset; returns what the report shows
    of them: pulls and distinct images (in all and per seed dataset) whatever the method, the similarities of
    sample-based pulls, the images per pool cluster of cluster-based ones."""
    datasets = list(dict.fromkeys(part.seeds))
    members = [[i for i, came_from in enumerate(sources) if dataset in came_from] for dataset in datasets]
    seeds = [i for group in members for i in group]
    groups = np.repeat(np.arange(len(datasets)), [len(group) for group in members])
    pulls, pool_labels = [], np.empty(0, np.int64)
    if seeds and pool and part.method == "sample":
        sharded = None if shards is None else shards.points(np.asarray(pool))
        pulls = sample_based(vectors[seeds], vectors, rows=np.asarray(pool), k=part.k, floor=part.floor, cap=part.cap,
                             groups=groups, sharded=sharded)  # fmt: skip
    elif seeds and pool:
        centroids, pool_labels = pool_clusters(part.clusters)
        seed_labels, _ = assign(vectors[seeds], centroids)
        pulls = cluster_based(pool_labels, seed_labels, min_seeds=part.min_seeds, per_cluster=part.per_cluster,
                              cap=part.cap, seed=seed, groups=groups)  # fmt: skip
    for pull in pulls:
        reason = {"part": part.name, "rule": f"retrieval-{part.method}", "seed_dataset": datasets[pull.group],
                  "rank": pull.rank}  # fmt: skip
        if part.method == "sample":
            reason.update(seed_image=image_ids[seeds[pull.seed_index]], similarity=round(pull.similarity, 6))
        else:
            reason.update(cluster=int(pool_labels[pull.pool_index]))
        add(pool[pull.pool_index], reason)
    images = np.unique(np.array([pull.pool_index for pull in pulls], np.int64))
    per_dataset = {dataset: len({pull.pool_index for pull in pulls if pull.group == group})
                   for group, dataset in enumerate(datasets)}  # fmt: skip
    detail = {"kind": "retrieval", "method": part.method, "pulls": len(pulls), "images": len(images),
              "images_per_seed_dataset": per_dataset}  # fmt: skip
    if part.method == "sample":
        detail["similarities"] = [pull.similarity for pull in pulls]
    else:
        clusters, sizes = np.unique(pool_labels[images], return_counts=True)
        detail.update(clusters=clusters.tolist(), images_per_cluster=sizes.tolist())
    return detail


def _balance(part: BalancedPart, members: list[int], points_of, seed, cache_folder: CacheFolder, add,
             progress) -> dict[str, Any]:  # fmt: skip
    if not members:
        return {"kind": "balanced", "before": [], "after": []}
    levels = [Level(**level.model_dump()) for level in part.levels]
    points = points_of(members)  # streamed from the memory-mapped vectors when it will not fit, or sharded
    settings = {"levels": [level.model_dump() for level in part.levels], "iterations": part.iterations, "seed": seed}
    folder = cache_folder(part.name, members, settings)
    with progress.bar(f"k-means {part.name}", total=hierarchy_passes(levels, part.iterations), unit="pass") as bar:
        paths, centroids = hierarchical_kmeans(points, levels, seed=seed, iterations=part.iterations, workdir=folder,
                                               on_pass=bar.update)  # fmt: skip
    # "closest" ranks a leaf's points by the distance to its own centroid (a split leaf's point may be nearer another's)
    distances = points.distances_to(centroids[0], paths[:, -1]).cpu().numpy() if part.rule == "closest" else None
    chosen = hierarchical_sample(paths, part.target, seed=seed, rule=part.rule, distances=distances)
    for position in chosen:
        add(members[position], {"part": part.name, "rule": f"balanced-{part.rule}",
                                "cluster_path": paths[position].tolist()})  # fmt: skip
    top = int(paths[:, 0].max()) + 1
    return {"kind": "balanced", "before": np.bincount(paths[:, 0], minlength=top).tolist(),
            "after": np.bincount(paths[chosen, 0], minlength=top).tolist()}  # fmt: skip
