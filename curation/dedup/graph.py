"""Copy-detection k-NN graph (DINOv2's recipe): each image's k nearest neighbours by cosine, edges over a threshold.

Vectors are L2-normalised, so inner product = cosine. Exact flat search below `ivf_min_size` images, an IVF index
above it (nlist ~ 4 sqrt(N), `nprobe` lists per query). Queries go in batches, so memory is O(batch x k), never
N x N. On CUDA, faiss-gpu is used when importable, else a tiled fp16 matmul + top-k in torch.
"""

from __future__ import annotations

import math

import numpy as np

from curation.config import DedupStage


def _faiss_index(vectors: np.ndarray, settings: DedupStage):
    import faiss

    count, dim = vectors.shape
    use_ivf = settings.index == "ivf" or (settings.index == "auto" and count >= settings.ivf_min_size)
    if not use_ivf:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = max(1, min(count // 39, int(4 * math.sqrt(count))))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(count, min(count, lists * 256), replace=False)]
        index.train(np.ascontiguousarray(sample, np.float32))
        index.nprobe = settings.nprobe
    for start in range(0, count, settings.batch_size):
        index.add(np.ascontiguousarray(vectors[start : start + settings.batch_size], np.float32))
    return index


def _torch_cuda_knn(vectors: np.ndarray, k: int, batch: int):
    """Brute-force fp16 tiled matmul + top-k on the GPU (when faiss has no GPU support)."""
    import torch

    data = torch.from_numpy(np.ascontiguousarray(vectors, np.float16)).cuda()
    for start in range(0, len(data), batch):
        scores = data[start : start + batch] @ data.T
        values, indices = scores.topk(min(k, len(data)), dim=1)
        yield start, values.float().cpu().numpy(), indices.cpu().numpy()


def _searches(vectors: np.ndarray, k: int, settings: DedupStage):
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        yield from _torch_cuda_knn(vectors, k, settings.batch_size)
        return
    index = _faiss_index(vectors, settings)
    for start in range(0, len(vectors), settings.batch_size):
        queries = np.ascontiguousarray(vectors[start : start + settings.batch_size], np.float32)
        values, indices = index.search(queries, min(k, len(vectors)))
        yield start, values, indices


def knn_edges(vectors: np.ndarray, threshold: float, settings: DedupStage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) with i < j for every neighbour pair at or over `threshold` (self-matches excluded)."""
    sources, targets, scores = [], [], []
    k = settings.k + 1  # the image itself comes back as its own nearest neighbour
    for start, values, indices in _searches(vectors, k, settings):
        rows = np.arange(start, start + len(values))[:, None].repeat(values.shape[1], axis=1)
        keep = (values >= threshold) & (indices >= 0) & (indices != rows)
        sources.append(rows[keep])
        targets.append(indices[keep])
        scores.append(values[keep])
    if not sources:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    i, j, s = np.concatenate(sources), np.concatenate(targets).astype(np.int64), np.concatenate(scores)
    low, high = np.minimum(i, j), np.maximum(i, j)
    pairs = np.unique(np.stack([low, high], axis=1), axis=0, return_index=True)
    return pairs[0][:, 0], pairs[0][:, 1], s[pairs[1]].astype(np.float32)


def cross_edges(queries: np.ndarray, references: np.ndarray, threshold: float, settings: DedupStage):
    """(query row, reference row, cosine) for query-reference pairs at or over `threshold` (decontamination)."""
    import faiss

    index = faiss.IndexFlatIP(references.shape[1])
    index.add(np.ascontiguousarray(references, np.float32))
    found = []
    for start in range(0, len(queries), settings.batch_size):
        values, indices = index.search(np.ascontiguousarray(queries[start : start + settings.batch_size], np.float32),
                                       min(settings.k, len(references)))  # fmt: skip
        rows = np.arange(start, start + len(values))[:, None].repeat(values.shape[1], axis=1)
        keep = (values >= threshold) & (indices >= 0)
        found.append((rows[keep], indices[keep], values[keep]))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return tuple(np.concatenate(parts) for parts in zip(*found))
