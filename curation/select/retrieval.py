"""Seed-set retrieval (DINOv2): curated seed images pull their look-alikes out of the (deduplicated) pool.

Sample-based: each seed image takes its k nearest pool images at or over a similarity floor; each seed dataset's
total is capped (best similarities first). Cluster-based, for small seed sets: pool clusters that hold more than
m of a seed dataset's images contribute up to n images each, each seed dataset's total capped too. Every pull is
kept (an image pulled by several seeds keeps all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from curation.select.balance import group_positions
from curation.select.kmeans import compute_device, fits

STREAM_ROWS = 65_536  # pool rows read at a time by the streamed search
SEED_BATCH = 512  # seeds scored against a chunk at once: 128 MiB of float32 scores
TIE_MARGIN = 16  # FAISS fetches this many beyond k, to see where the ties at the k-th score end


@dataclass(frozen=True)
class Pull:
    pool_index: int
    seed_index: int  # -1 for cluster-based pulls
    rank: int  # 1 = the seed's nearest pool image; for cluster-based pulls, the rank inside the cluster
    similarity: float
    group: int = 0  # the seed's group (its seed dataset): `cap` applies to each group on its own


def sample_based(seeds: np.ndarray, pool: np.ndarray, *, k: int, floor: float = -1.0, cap: int | None = None,
                 groups: np.ndarray | None = None, batch: int = 16_384, rows: np.ndarray | None = None,
                 sharded=None) -> list[Pull]:  # fmt: skip
    """Every (seed, pool image) pull of the k nearest at or over `floor`; with `cap`, only the pulls of the `cap`
    distinct pool images with the best similarity survive, per seed group (`groups[i]` is seed i's, its seed
    dataset; default one group), as DINOv2 capped each seed dataset. `rows` picks the pool out of a larger
    (memory-mapped) matrix; pool indices are positions in `rows`. With a GPU, or for a pool whose float32 copy
    exceeds the host's memory budget, the pool is scanned from where it lies, chunk by chunk, on the compute device
    (`streamed_top_k`); otherwise a FAISS flat index searches a copy (the CPU build of FAISS, as installed).
    `sharded` (the same pool as `ShardedPoints`) scans it on its Ray actors instead, each its own share."""
    count = len(pool) if rows is None else len(rows)
    k = min(k, count)
    if not k or not len(seeds):
        return []
    device = compute_device()
    if sharded is not None:
        scores, neighbours = sharded.top_k(seeds, k)
    elif device.type == "cpu" and fits(device, count, pool.shape[1]):
        scores, neighbours = _faiss_top_k(seeds, pool if rows is None else pool[rows], k, batch)
    else:
        scores, neighbours = streamed_top_k(seeds, pool, rows, k, device)
    groups = np.zeros(len(seeds), np.int64) if groups is None else np.asarray(groups)
    pulls = []
    for seed_index, (row_scores, row_neighbours) in enumerate(zip(scores, neighbours)):
        for rank, (score, neighbour) in enumerate(zip(row_scores, row_neighbours), start=1):
            if neighbour >= 0 and score >= floor:
                pulls.append(Pull(int(neighbour), seed_index, rank, float(score), int(groups[seed_index])))
    if cap is not None:
        best: dict[tuple[int, int], float] = {}  # (group, pool index): the image's best similarity in the group
        for pull in pulls:
            key = (pull.group, pull.pool_index)
            best[key] = max(best.get(key, -2.0), pull.similarity)
        keep = set()
        for group in np.unique(groups).tolist():
            keep |= set(sorted((key for key in best if key[0] == group), key=lambda key: (-best[key], key[1]))[:cap])
        pulls = [pull for pull in pulls if (pull.group, pull.pool_index) in keep]
    return sorted(pulls, key=lambda pull: (pull.pool_index, pull.seed_index))


def _faiss_top_k(seeds: np.ndarray, pool: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS keeps an arbitrary few of the pool images tied at the k-th score: each seed fetches TIE_MARGIN more
    (doubling while its ties run to the end of what it fetched), so `best_of` can keep the first of them."""
    import faiss

    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(np.ascontiguousarray(pool, np.float32))
    queries = np.ascontiguousarray(seeds, np.float32)
    scores, ids = np.empty((len(seeds), k), np.float32), np.empty((len(seeds), k), np.int64)
    for start in range(0, len(seeds), batch):
        todo, fetch = np.arange(start, min(start + batch, len(seeds))), min(len(pool), k + TIE_MARGIN)
        while len(todo):
            found, found_ids = index.search(queries[todo], fetch)
            scores[todo], ids[todo] = best_of(found, found_ids, k)
            todo = todo[found[:, -1] == found[:, k - 1]] if fetch < len(pool) else todo[:0]
            fetch = min(len(pool), 2 * fetch)
    return scores, ids


def best_of(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best candidates in the canonical order, (-score, id), which every search path keeps: of
    images tied at the k-th score, the lowest pool indices (-1, a missing one, scores -inf and comes last)."""
    best = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, best, axis=1), np.take_along_axis(ids, best, axis=1)


def _top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, columns) of each row's k best columns by (-score, column). torch's topk keeps an arbitrary few of
    the columns tied at the k-th score; rows with more of them than fit keep the first."""
    columns = scores.topk(k, dim=1).indices
    kth = scores.gather(1, columns[:, -1:])
    crowded = ((scores >= kth).sum(dim=1) > k).nonzero().flatten()
    if len(crowded):
        rows, kth = scores[crowded], kth[crowded]
        above, tied = rows > kth, rows == kth
        keep = above | (tied & (tied.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
        columns[crowded] = keep.nonzero()[:, 1].view(len(crowded), k)
    columns = columns.sort(dim=1).values
    best, order = scores.gather(1, columns).sort(dim=1, descending=True, stable=True)
    return best, columns.gather(1, order)


def streamed_top_k(seeds: np.ndarray, pool: np.ndarray, rows: np.ndarray | None, k: int,
                   device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Exact top k per seed, best first, reading the pool once in chunks of STREAM_ROWS and scoring seed batches
    of SEED_BATCH against each (each chunk's own top k merged into the best so far), in float32 on `device`
    (default the CPU): memory stays O(SEED_BATCH x STREAM_ROWS + seeds x k) whatever the pool's size. Ties keep
    the lowest pool indices, as `best_of` does."""
    device = device or torch.device("cpu")
    queries = torch.from_numpy(np.ascontiguousarray(seeds, np.float32)).to(device)
    best_scores = torch.full((len(seeds), k), -torch.inf, device=device)
    best_ids = torch.full((len(seeds), k), -1, dtype=torch.int64, device=device)
    count = len(pool) if rows is None else len(rows)
    for start in range(0, count, STREAM_ROWS):
        positions = slice(start, start + STREAM_ROWS) if rows is None else rows[start : start + STREAM_ROWS]
        chunk = torch.from_numpy(np.array(pool[positions], dtype=np.float32)).to(device)
        for first in range(0, len(seeds), SEED_BATCH):
            batch = slice(first, first + SEED_BATCH)
            chunk_scores, chunk_ids = _top_k(queries[batch] @ chunk.T, min(k, len(chunk)))
            # the best so far and this chunk's, 2k, in id order where they tie (earlier chunks' ids are lower)
            scores = torch.cat([best_scores[batch], chunk_scores], dim=1)
            candidates = torch.cat([best_ids[batch], chunk_ids + start], dim=1)
            best_scores[batch], top = _top_k(scores, k)
            best_ids[batch] = candidates.gather(1, top)
    return best_scores.cpu().numpy(), best_ids.cpu().numpy()


def cluster_based(pool_labels: np.ndarray, seed_labels: np.ndarray, *, min_seeds: int, per_cluster: int,
                  cap: int | None = None, seed: int = 0, groups: np.ndarray | None = None) -> list[Pull]:  # fmt: skip
    """Per seed group (`groups[i]` is seed i's, its seed dataset; default one group), pool images from clusters
    holding more than `min_seeds` of the group's seeds: up to `per_cluster` each (random, deterministic for
    `seed`), clusters with the most seeds first, at most `cap` images per group."""
    groups = np.zeros(len(seed_labels), np.int64) if groups is None else np.asarray(groups)
    values, positions = group_positions(pool_labels)
    members_of = dict(zip(values.tolist(), positions))
    pulls: list[Pull] = []
    for group, own in zip(*group_positions(groups)):
        rng = np.random.default_rng(seed)  # each group draws as it would alone
        clusters, counts = np.unique(seed_labels[own], return_counts=True)
        by_seeds = sorted(zip(clusters, counts), key=lambda item: (-item[1], item[0]))
        eligible = [int(cluster) for cluster, count in by_seeds if count > min_seeds]
        taken: list[Pull] = []
        for cluster in eligible:
            chosen = rng.permutation(members_of.get(cluster, np.empty(0, np.int64)))[:per_cluster]
            room = len(chosen) if cap is None else max(0, cap - len(taken))
            taken.extend(Pull(int(index), -1, rank, 0.0, int(group))
                         for rank, index in enumerate(sorted(chosen)[:room], start=1))  # fmt: skip
        pulls.extend(taken)
    return pulls
