"""Copy-detection k-NN graph (DINOv2's recipe): each image's k nearest neighbours by cosine, edges over a threshold.

Vectors are L2-normalised, so inner product = cosine. Below `ivf_min_size` images: exact search (FAISS
`IndexFlatIP`, queries in batches). Above it: an inverted-file self-join. FAISS k-means cuts the pool into
nlist ~ 2 sqrt(N) cells; every image lives in its nearest cell and looks into its `nprobe` nearest cells.
Since the queries are the pool itself, each cell is scanned once, as one matrix product of the images that
probe it against the images it holds, instead of once per query as an IVF index search does. On 2 CPU cores
that is ~5x faster than `IndexIVFFlat` at the same nlist and nprobe (benchmarks/knn_graph.py). Memory is
bounded by the product blocks (`_BLOCK_ELEMENTS`) plus the edges, never N x N. On CUDA (whatever `index` says),
tiled float16 matrix products + top-k in torch search exactly, even where a faiss GPU build is importable: by
default its flat index multiplies in float32, off the tensor cores that make float16 the faster exact search.
A pool whose float16 copy and score tile do not fit the GPU's free memory is searched on the CPU instead, with
a warning, rather than failing out of memory. The vectors may be the memory-mapped float16 matrix: every search
reads it in batches and casts each batch, so no float32 copy of the pool is made. With `distributed`, the cells
of the IVF self-join are scanned by Ray tasks in blocks of consecutive cells (about `TASKS_PER_CPU` blocks per
cluster CPU, cut to equal work), each opening the matrix by path; the edges come back in cell order, the same
as in one process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from functools import partial

import numpy as np

from curation.config import DedupStage
from curation.core.progress import Progress
from curation.embed.vectors import matrix_path

log = logging.getLogger(__name__)

_BLOCK_ELEMENTS = 1 << 24  # scores held at once by one product block: 64 MiB of float32
_TILE_ELEMENTS = 1 << 30  # scores held at once by one GPU tile: 2 GiB of float16
_TRAIN_POINTS_PER_CELL = 64  # k-means sample per cell: enough for coarse cells, cheap to train
_TRAIN_ITERATIONS = 10
# Vectors are stored as float16: identical images land anywhere in cosine 0.999-1.0, so a threshold above this is
# taken as this (1.0 would otherwise miss half the identical pairs).
HIGHEST_THRESHOLD = 0.999
TASKS_PER_CPU = 4  # distributed IVF self-join: cell blocks per cluster CPU, so a slow node does not hold the end

Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # (query row, neighbour row, cosine)


def _joined(parts: list[Candidates]) -> Candidates:
    """The parts' candidates, one array per column, in order (empty columns for no parts)."""
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return tuple(np.concatenate(column) for column in zip(*parts))


def ivf_cells(count: int) -> int:
    """nlist for a pool of `count` images: ~2 sqrt(N) cells, at least 39 images to train each (FAISS's floor)."""
    return max(1, min(count // 39, int(2 * math.sqrt(count))))


def _top_hits(scores: np.ndarray, threshold: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each row's scores at or over `threshold`, at most its k largest."""
    hit = scores >= threshold
    crowded = np.flatnonzero(hit.sum(axis=1) > k)
    if len(crowded):
        hit[crowded] = False
        best = np.argpartition(scores[crowded], -k, axis=1)[:, -k:]
        keep = np.take_along_axis(scores[crowded], best, axis=1) >= threshold
        hit[np.repeat(crowded, k).reshape(-1, k)[keep], best[keep]] = True
    return np.nonzero(hit)


def cell_quantizer(vectors: np.ndarray, cells: int):
    """A FAISS `IndexFlatIP` over `cells` spherical k-means centroids, trained on a seeded sample of
    `_TRAIN_POINTS_PER_CELL` vectors per cell: the coarse cells of the IVF self-join."""
    import faiss

    count, dim = vectors.shape
    sample = np.random.default_rng(0).choice(count, min(count, cells * _TRAIN_POINTS_PER_CELL), replace=False)
    kmeans = faiss.Kmeans(dim, cells, niter=_TRAIN_ITERATIONS, seed=0, spherical=True,
                          max_points_per_centroid=_TRAIN_POINTS_PER_CELL, min_points_per_centroid=1)  # fmt: skip
    kmeans.train(np.ascontiguousarray(vectors[np.sort(sample)], np.float32))
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    return quantizer


def _ivf_join(vectors: np.ndarray, threshold: float, k: int, settings: DedupStage, timings: dict,
              progress: Progress, label: str, runner=None) -> Iterator[Candidates]:  # fmt: skip
    count = len(vectors)
    started = time.perf_counter()
    cells = ivf_cells(count)
    quantizer = cell_quantizer(vectors, cells)
    probes = np.empty((count, min(settings.nprobe, cells)), np.int64)
    for start in range(0, count, settings.batch_size):
        batch = np.ascontiguousarray(vectors[start : start + settings.batch_size], np.float32)
        probes[start : start + len(batch)] = quantizer.search(batch, probes.shape[1])[1]
    home = probes[:, 0]  # each image is held by its nearest cell
    held = np.argsort(home, kind="stable")
    held_bounds = np.searchsorted(home[held], np.arange(cells + 1))
    flat_probes = probes.ravel()
    probing = np.argsort(flat_probes, kind="stable")
    probe_bounds = np.searchsorted(flat_probes[probing], np.arange(cells + 1))
    probing //= probes.shape[1]  # position in the flattened probe table -> the probing image's row
    timings["build_s"] = time.perf_counter() - started
    stats = np.bincount(home, minlength=cells)
    timings["imbalance"] = float(cells * (stats.astype(np.float64) ** 2).sum() / count**2)  # FAISS's definition

    def cell(number: int) -> tuple[np.ndarray, np.ndarray]:
        """(members, queries): the images the cell holds and the images that probe it."""
        members = held[held_bounds[number] : held_bounds[number + 1]]
        return members, probing[probe_bounds[number] : probe_bounds[number + 1]]

    with progress.bar(label, total=cells, unit="cell") as bar:
        if runner is None:
            for number in range(cells):
                members, queries = cell(number)
                if len(members):
                    yield from _scan_cell(vectors, members, queries, threshold, k, settings.batch_size)
                bar.update(1)
            return
        work = np.diff(held_bounds) * np.diff(probe_bounds)  # scores each cell computes
        blocks = [[cell(number) for number in range(first, stop)]
                  for first, stop in _cell_ranges(work, TASKS_PER_CPU * int(runner.resources()[0]))]  # fmt: skip
        found = {}
        path = matrix_path(vectors, "a distributed IVF self-join")
        for number, candidates, scanned in runner.map(scan_cells, list(enumerate(blocks)), path, threshold, k,
                                                      settings.batch_size):  # fmt: skip
            found[number] = candidates
            bar.update(scanned)
        for number in sorted(found):  # cell order, as in one process: the same edges, byte for byte
            yield found[number]


def _cell_ranges(work: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Consecutive cell ranges of about equal work, at most `parts` of them."""
    cumulative = np.cumsum(work, dtype=np.float64)
    cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, parts) / parts, side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(work)]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def scan_cells(block: tuple[int, list[tuple[np.ndarray, np.ndarray]]], matrix_path: str, threshold: float, k: int,
               batch_size: int) -> tuple[int, Candidates, int]:  # fmt: skip
    """A Ray task: some consecutive cells of the IVF self-join, read from the memory-mapped matrix by path.
    Returns (block number, its candidates, cells scanned)."""
    number, cells = block
    vectors = np.load(matrix_path, mmap_mode="r")
    parts = [part for members, queries in cells if len(members)
             for part in _scan_cell(vectors, members, queries, threshold, k, batch_size)]  # fmt: skip
    return number, _joined(parts), len(cells)


def _scan_cell(vectors: np.ndarray, members: np.ndarray, queries: np.ndarray, threshold: float, k: int,
               batch_size: int) -> Iterator[Candidates]:  # fmt: skip
    """The queries probing one cell against the images it holds, one bounded matrix product per block."""
    targets = np.ascontiguousarray(vectors[members], np.float32).T
    rows_per_block = max(1, min(batch_size, _BLOCK_ELEMENTS // len(members)))
    for start in range(0, len(queries), rows_per_block):
        rows = queries[start : start + rows_per_block]
        scores = np.asarray(vectors[rows], np.float32) @ targets
        hit_rows, hit_columns = _top_hits(scores, threshold, k)
        yield rows[hit_rows], members[hit_columns], scores[hit_rows, hit_columns]


def _flat_search(
    vectors: np.ndarray, threshold: float, k: int, settings: DedupStage, timings: dict, progress: Progress, label: str
) -> Iterator[Candidates]:
    import faiss

    started = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, len(vectors), settings.batch_size):
        index.add(np.ascontiguousarray(vectors[start : start + settings.batch_size], np.float32))
    timings["build_s"] = time.perf_counter() - started
    with progress.bar(label, total=len(vectors), unit="img") as bar:
        for start in range(0, len(vectors), settings.batch_size):
            queries = np.ascontiguousarray(vectors[start : start + settings.batch_size], np.float32)
            values, indices = index.search(queries, min(k, len(vectors)))
            rows, columns = np.nonzero((values >= threshold) & (indices >= 0))
            yield rows + start, indices[rows, columns], values[rows, columns]
            bar.update(len(queries))


def _torch_search(
    vectors: np.ndarray,
    threshold: float,
    k: int,
    settings: DedupStage,
    timings: dict,
    progress: Progress,
    label: str,
    device: str = "cuda",
) -> Iterator[Candidates]:
    """Exact search as tiled matrix products + top-k in torch: float16 on CUDA (faiss-gpu is not assumed), float32
    elsewhere (tests run it on the CPU). A tile holds at most `_TILE_ELEMENTS` scores."""
    import torch

    host = np.ascontiguousarray(vectors, np.float16 if device == "cuda" else np.float32)  # cast here, not there
    data = torch.from_numpy(host).to(device)
    rows_per_tile = max(1, min(settings.batch_size, _TILE_ELEMENTS // len(data)))
    with progress.bar(label, total=len(data), unit="img") as bar:
        for start in range(0, len(data), rows_per_tile):
            values, indices = (data[start : start + rows_per_tile] @ data.T).topk(min(k, len(data)), dim=1)
            values, indices = values.float().cpu().numpy(), indices.cpu().numpy()
            rows, columns = np.nonzero(values >= threshold)
            yield rows + start, indices[rows, columns], values[rows, columns]
            bar.update(len(values))


def _cuda_free_bytes() -> int | None:
    """Free memory of the current CUDA device; None without torch or a GPU."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None


def gpu_has_room(count: int, dim: int, free_bytes: int) -> bool:
    """Whether the CUDA search fits: the pool in float16, one score tile and top-k's workspace (as much again),
    within 90% of the free memory."""
    tile_bytes = 2 * min(_TILE_ELEMENTS, count * count)
    return 2 * count * dim + 2 * tile_bytes <= 0.9 * free_bytes


def knn_edges(vectors: np.ndarray, threshold: float, settings: DedupStage, timings: dict | None = None,
              progress: Progress | None = None, label: str = "dedup graph",
              runner=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(i, j, cosine) with i < j for every pair where j is one of i's k nearest neighbours (or i one of j's) at
    or over `threshold`; self-matches excluded. `timings`, when given, receives build_s / search_s / post_s
    (and the cells' imbalance for IVF) so callers can report where the time went; the search reports to
    `progress` as the stage `label` (a bar on the terminal, live counts in the service, and a cancel point).
    With `runner` (a Ray executor), an IVF self-join scans its cells as the runner's tasks."""
    timings = {} if timings is None else timings
    threshold = min(threshold, HIGHEST_THRESHOLD)
    timings["build_s"] = 0.0  # the flat and IVF searches set it; the CUDA search has no index to build
    count = len(vectors)
    use_ivf = settings.index == "ivf" or (settings.index == "auto" and count >= settings.ivf_min_size)
    free_gpu_bytes = _cuda_free_bytes()
    if free_gpu_bytes is not None and gpu_has_room(count, vectors.shape[1], free_gpu_bytes):
        search = _torch_search
    else:
        if free_gpu_bytes is not None:
            log.warning("%s: %d vectors do not fit the GPU's %.1f GiB free; searching on the CPU", label, count,
                        free_gpu_bytes / 2**30)  # fmt: skip
        search = _ivf_join if use_ivf and count > 1 else _flat_search
    started = time.perf_counter()
    progress = progress or Progress()  # silent: no bar, never cancelled
    if search is _ivf_join and runner is not None:  # the cells as Ray tasks, reading the matrix by path
        matrix_path(vectors, "a distributed IVF self-join")  # before the cells are built, not after
        search = partial(_ivf_join, runner=runner)
    parts = list(search(vectors, threshold, settings.k + 1, settings, timings, progress, label))  # +1: itself
    timings["search_s"] = time.perf_counter() - started - timings["build_s"]
    started = time.perf_counter()
    edges = _pairs(*_joined(parts), settings.k, count)
    timings["post_s"] = time.perf_counter() - started
    return edges


def _pairs(rows: np.ndarray, columns: np.ndarray, scores: np.ndarray, k: int, count: int):
    """Drop self-matches, keep each row's k best, then one (low, high) entry per unordered pair."""
    if not len(rows):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    rows, columns = rows.astype(np.int64), columns.astype(np.int64)
    other = rows != columns
    rows, columns, scores = rows[other], columns[other], scores[other]
    if len(rows) and np.bincount(rows, minlength=count).max() > k:
        order = np.lexsort((-scores, rows))
        rows, columns, scores = rows[order], columns[order], scores[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        rows, columns, scores = rows[rank < k], columns[rank < k], scores[rank < k]
    keys, first = np.unique(np.minimum(rows, columns) * count + np.maximum(rows, columns), return_index=True)
    return keys // count, keys % count, scores[first].astype(np.float32)


def cross_edges(queries: np.ndarray, references: np.ndarray, threshold: float, settings: DedupStage,
                runner=None) -> Candidates:  # fmt: skip
    """(query row, reference row, cosine) for query-reference pairs at or over `threshold` (decontamination).
    With `runner` (a Ray executor), ranges of query rows are searched by its tasks, each opening the memory-mapped
    `queries` by path; the ranges are whole batches, so the answer is the in-process one byte for byte."""
    threshold = min(threshold, HIGHEST_THRESHOLD)
    if runner is None:
        return _cross_rows(queries, references, 0, len(queries), threshold, settings)
    path = matrix_path(queries, "a distributed cross search")
    batches = -(-len(queries) // settings.batch_size)
    rows_per_task = settings.batch_size * max(1, -(-batches // (TASKS_PER_CPU * int(runner.resources()[0]))))
    ranges = [(start, min(len(queries), start + rows_per_task)) for start in range(0, len(queries), rows_per_task)]
    by_start = dict(runner.map(cross_task, ranges, path, references, threshold, settings))
    return _joined([by_start[start] for start, _ in ranges])


def _cross_rows(queries: np.ndarray, references: np.ndarray, start: int, stop: int, threshold: float,
                settings: DedupStage) -> Candidates:  # fmt: skip
    """cross_edges for query rows [start, stop), searched in batches of `settings.batch_size` from `start`."""
    import faiss

    index = faiss.IndexFlatIP(references.shape[1])
    index.add(np.ascontiguousarray(references, np.float32))
    found = []
    for first in range(start, stop, settings.batch_size):
        batch = np.ascontiguousarray(queries[first : min(stop, first + settings.batch_size)], np.float32)
        values, indices = index.search(batch, min(settings.k, len(references)))
        rows = np.arange(first, first + len(values))[:, None].repeat(values.shape[1], axis=1)
        keep = (values >= threshold) & (indices >= 0)
        found.append((rows[keep], indices[keep], values[keep]))
    return _joined(found)


def cross_task(rows: tuple[int, int], matrix_path: str, references: np.ndarray, threshold: float,
               settings: DedupStage) -> tuple[int, Candidates]:  # fmt: skip
    """A Ray task: the cross search of one range of query rows, read from the memory-mapped matrix by path."""
    return rows[0], _cross_rows(np.load(matrix_path, mmap_mode="r"), references, *rows, threshold, settings)
