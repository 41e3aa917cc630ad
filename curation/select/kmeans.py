"""k-means (k-means++ initialisation, Lloyd iterations) and Vo et al.'s hierarchical k-means with resampling.

Assignment runs in chunks (FAISS on CPU; a torch matmul on CUDA), so memory is O(chunk x k), never N x k at once
beyond the assignment vector. Each level and resampling step of the hierarchy writes its centroids and
assignments under a work folder, so a rerun skips what is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

CHUNK = 65_536


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _assign_cuda(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunked |x|^2 - 2 x.c + |c|^2 and argmin on the GPU (fp32)."""
    import torch

    table = torch.from_numpy(np.ascontiguousarray(centroids, np.float32)).cuda()
    norms = (table * table).sum(dim=1)
    labels = np.empty(len(points), np.int64)
    distances = np.empty(len(points), np.float32)
    for start in range(0, len(points), CHUNK):
        batch = torch.from_numpy(np.ascontiguousarray(points[start : start + CHUNK], np.float32)).cuda()
        squared = (batch * batch).sum(dim=1, keepdim=True) - 2 * batch @ table.T + norms
        best, index = squared.min(dim=1)
        labels[start : start + CHUNK] = index.cpu().numpy()
        distances[start : start + CHUNK] = best.clamp_(min=0).cpu().numpy()
    return labels, distances


def assign(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid index, squared distance) per point, in chunks: torch on CUDA, FAISS on CPU."""
    if _cuda():
        return _assign_cuda(points, centroids)
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    labels = np.empty(len(points), np.int64)
    distances = np.empty(len(points), np.float32)
    for start in range(0, len(points), CHUNK):
        d, i = index.search(np.ascontiguousarray(points[start : start + CHUNK], np.float32), 1)
        labels[start : start + CHUNK], distances[start : start + CHUNK] = i[:, 0], d[:, 0]
    return labels, distances


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator, sample: int = 64) -> np.ndarray:
    """k-means++ seeding on a random subsample of at most `sample` x k points (exact seeding is O(N k d)).
    Distances to each new centre come from one matrix-vector product: |x|^2 - 2 x.c + |c|^2."""
    pool = np.ascontiguousarray(
        points[rng.choice(len(points), min(len(points), sample * k), replace=False)], np.float32
    )
    norms = (pool * pool).sum(axis=1)
    chosen = [int(rng.integers(len(pool)))]
    nearest = np.maximum(norms - 2 * pool @ pool[chosen[0]] + norms[chosen[0]], 0)
    for _ in range(1, k):
        cumulative = np.cumsum(nearest, dtype=np.float64)
        total = float(cumulative[-1])
        pick = int(np.searchsorted(cumulative, rng.random() * total, side="right")) if total > 0 else -1
        pick = pick if 0 <= pick < len(pool) else int(rng.integers(len(pool)))  # D^2 sampling, or uniform
        chosen.append(pick)
        np.minimum(nearest, np.maximum(norms - 2 * pool @ pool[pick] + norms[pick], 0), out=nearest)
    return pool[chosen].copy()


def cluster_sums(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the points as one sparse one-hot matrix product (float32 throughout)."""
    one_hot = csr_matrix((np.ones(len(labels), np.float32), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    return np.asarray(one_hot @ points, np.float32)


def kmeans(points: np.ndarray, k: int, *, iterations: int = 20, seed: int = 0,
           init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(centroids [k, d] float32, labels [n]). Empty clusters are re-seeded with the points farthest from their
    centroid. With `init`, k is its row count (at most the number of points)."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, np.float32)
    if init is not None:
        centroids = np.asarray(init, np.float32)[: len(points)].copy()
    else:
        centroids = kmeans_plus_plus(points, min(k, len(points)), rng)
    k = len(centroids)
    labels = np.zeros(len(points), np.int64)
    for _ in range(iterations):
        labels, distances = assign(points, centroids)
        counts = np.bincount(labels, minlength=k).astype(np.float32)
        sums = cluster_sums(points, labels, k)
        empty = np.flatnonzero(counts == 0)
        centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids).astype(np.float32)
        if len(empty):
            centroids[empty] = points[np.argsort(-distances)[: len(empty)]]
    labels, _ = assign(points, centroids)
    return centroids, labels


@dataclass(frozen=True)
class Level:
    clusters: int  # k at this level
    resampling_steps: int = 0  # Vo et al.: re-run k-means on points resampled from every cluster
    sample_size: int = 10  # points taken per cluster at each resampling step
    selection: str = "closest"  # closest (to the centroid) | random
    split: int = 1  # finest level only: split each cluster into this many (how Vo et al. reached 10M leaves)


def resample(points: np.ndarray, centroids: np.ndarray, level: Level, rng: np.random.Generator) -> np.ndarray:
    """One resampling step: take `sample_size` points per cluster and re-cluster their union, starting from the
    current centroids. Dense modes contribute no more points than sparse ones, so centroids spread out over the
    support of the data instead of piling into its modes."""
    labels, distances = assign(points, centroids)
    within = distances if level.selection == "closest" else rng.random(len(points))
    order = np.lexsort((within, labels))  # by cluster, then closest (or a random order) first
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_cluster = np.arange(len(order)) - starts
    subset = points[order[rank_in_cluster < level.sample_size]]
    if len(subset) < len(centroids):  # fewer points than clusters (many exact duplicates): nothing to re-fit
        return centroids
    centroids, _ = kmeans(subset, len(centroids), iterations=10, seed=int(rng.integers(1 << 31)), init=centroids)
    return centroids


def hierarchical_kmeans(points: np.ndarray, levels: list[Level], *, seed: int = 0, iterations: int = 20,
                        workdir: Path | None = None) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
    """Cluster paths [n, len(levels)] (coarsest level first) and the centroids of each level (finest first).

    Level 1 clusters the points; level l+1 clusters the centroids of level l. With `workdir`, every level's and
    resampling step's result is saved there and reused by a rerun.
    """
    current = np.asarray(points, np.float32)
    all_centroids, labels_per_level = [], []
    for number, level in enumerate(levels, start=1):
        first = partial(kmeans, current, level.clusters, iterations=iterations, seed=seed + number)
        centroids = _cached(workdir, f"level-{number}-step-0", lambda first=first: first()[0])
        for step in range(1, level.resampling_steps + 1):
            previous = centroids
            rng = np.random.default_rng([seed, number, step])  # per step: a resumed run draws the same numbers
            centroids = _cached(
                workdir, f"level-{number}-step-{step}", partial(resample, current, previous, level, rng)
            )
        labels, _ = assign(current, centroids)
        all_centroids.append(centroids)
        labels_per_level.append(labels)
        current = centroids
    paths = np.empty((len(points), len(levels)), np.int64)
    node = labels_per_level[0]
    for depth, labels in enumerate(labels_per_level):
        if depth > 0:
            node = labels[node]
        paths[:, len(levels) - 1 - depth] = node
    if levels[0].split > 1:
        leaves, leaf_centroids = _split(np.asarray(points, np.float32), labels_per_level[0], levels[0].split, seed,
                                        iterations, workdir)  # fmt: skip
        paths = np.concatenate([paths, leaves[:, None]], axis=1)
        all_centroids.insert(0, leaf_centroids)
    return paths, all_centroids


def _split(points: np.ndarray, labels: np.ndarray, parts: int, seed: int, iterations: int,
           workdir: Path | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Split every finest cluster into `parts` by k-means inside it: leaf id = cluster x parts + sub-cluster."""
    if workdir is not None and (Path(workdir) / "split-leaves.npy").exists():
        return np.load(Path(workdir) / "split-leaves.npy"), np.load(Path(workdir) / "split-centroids.npy")
    leaves = np.empty(len(points), np.int64)
    centroids = np.zeros((int(labels.max() + 1) * parts, points.shape[1]), np.float32)
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        sub_centroids, sub_labels = kmeans(points[members], parts, iterations=iterations, seed=seed + int(cluster))
        leaves[members] = cluster * parts + sub_labels
        centroids[cluster * parts : cluster * parts + len(sub_centroids)] = sub_centroids
    _cached(workdir, "split-centroids", lambda: centroids)
    _cached(workdir, "split-leaves", lambda: leaves)  # written last: the split's completion marker
    return leaves, centroids


def _cached(workdir: Path | None, name: str, compute) -> np.ndarray:
    if workdir is None:
        return compute()
    path = Path(workdir) / f"{name}.npy"
    if path.exists():
        return np.load(path)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, result)
    temporary.replace(path)
    return result
