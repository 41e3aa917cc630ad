"""Seed-set retrieval (DINOv2): curated seed images pull their look-alikes out of the (deduplicated) pool.

Sample-based: each seed image takes its k nearest pool images at or over a similarity floor; the seed dataset's
total is capped (best similarities first). Cluster-based, for small seed sets: pool clusters that hold more than
m seed images contribute up to n images each. Every pull is kept (an image pulled by several seeds keeps all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pull:
    pool_index: int
    seed_index: int  # -1 for cluster-based pulls
    rank: int  # 1 = the seed's nearest pool image; for cluster-based pulls, the rank inside the cluster
    similarity: float


def sample_based(seeds: np.ndarray, pool: np.ndarray, *, k: int, floor: float = -1.0, cap: int | None = None,
                 batch: int = 16_384) -> list[Pull]:  # fmt: skip
    """Every (seed, pool image) pull of the k nearest at or over `floor`; with `cap`, only the pulls of the `cap`
    distinct pool images with the best similarity survive."""
    import faiss

    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(np.ascontiguousarray(pool, np.float32))
    pulls = []
    for start in range(0, len(seeds), batch):
        scores, neighbours = index.search(
            np.ascontiguousarray(seeds[start : start + batch], np.float32), min(k, len(pool))
        )
        for row, (row_scores, row_neighbours) in enumerate(zip(scores, neighbours)):
            for rank, (score, neighbour) in enumerate(zip(row_scores, row_neighbours), start=1):
                if neighbour >= 0 and score >= floor:
                    pulls.append(Pull(int(neighbour), start + row, rank, float(score)))
    if cap is not None:
        best: dict[int, float] = {}
        for pull in pulls:
            best[pull.pool_index] = max(best.get(pull.pool_index, -2.0), pull.similarity)
        keep = set(sorted(best, key=lambda index: (-best[index], index))[:cap])
        pulls = [pull for pull in pulls if pull.pool_index in keep]
    return sorted(pulls, key=lambda pull: (pull.pool_index, pull.seed_index))


def cluster_based(pool_labels: np.ndarray, seed_labels: np.ndarray, *, min_seeds: int, per_cluster: int,
                  cap: int | None = None, seed: int = 0) -> list[Pull]:  # fmt: skip
    """Pool images from clusters holding more than `min_seeds` seed images: up to `per_cluster` each (random,
    deterministic for `seed`), clusters with the most seeds first, at most `cap` images in all."""
    rng = np.random.default_rng(seed)
    clusters, counts = np.unique(seed_labels, return_counts=True)
    eligible = [int(c) for c, n in sorted(zip(clusters, counts), key=lambda item: (-item[1], item[0])) if n > min_seeds]
    pulls: list[Pull] = []
    for cluster in eligible:
        members = np.flatnonzero(pool_labels == cluster)
        chosen = rng.permutation(members)[:per_cluster]
        room = len(chosen) if cap is None else max(0, cap - len(pulls))
        pulls.extend(Pull(int(index), -1, rank, 0.0) for rank, index in enumerate(sorted(chosen)[:room], start=1))
    return pulls
