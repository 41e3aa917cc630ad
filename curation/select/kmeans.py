"""k-means (k-means++ seeding, Lloyd iterations) and Vo et al.'s hierarchical k-means with resampling.

The points are moved to the compute device once per k-means (`Points`: CUDA when torch sees a GPU, the CPU
otherwise) and every pass runs there: distances as one chunked matrix product (float16 on CUDA, accumulating in
float32; float32 on CPU), cluster sums by `index_add_` in the same pass. Memory is O(chunk x k) beyond the points
themselves, never N x k at once. Points whose float32 copy would not fit the device's memory budget stay where
they are (`StreamedPoints`: a memory-mapped matrix, read chunk by chunk in every pass), so a pool larger than RAM
or GPU memory is clustered at the price of reading it once per pass. Each level and resampling step of the
hierarchy writes its centroids under a work folder, so a rerun skips what is done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 27  # distance entries per chunk (512 MiB of float32)
CHUNK_ROWS = 1 << 17  # points per chunk at most: what a streamed pass holds at once (384 MiB at 768-d float32)
SEEDING_ROUNDS = 128  # D^2-sampling rounds at most: exact k-means++ (one centre per round) up to k = 129
OVERSAMPLING = 4  # candidates drawn per centre kept in a batched seeding round
HALF_PRECISION_MAX_NORM = 64.0  # float16 products stay far from overflow (65504) below this norm
RESIDENT_SHARE = 0.4  # points go to the device whole when they take at most this share of its free memory
RESIDENT_BUDGET_BYTES: int | None = None  # a fixed budget instead of the share (tests, benchmarks)
RESAMPLING_ITERATIONS = 10  # Lloyd iterations of each resampling step's k-means

Passes = Callable[[int], None]  # told how many Lloyd passes just finished (a progress bar's update)
Farthest = Callable[[int], torch.Tensor]  # m -> positions of the m points farthest from their centroids


def compute_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resident_budget(device: torch.device) -> int:
    """Bytes the points may take on `device`: a share of its free memory (MemAvailable on the host)."""
    if RESIDENT_BUDGET_BYTES is not None:
        return RESIDENT_BUDGET_BYTES
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * RESIDENT_SHARE)
    try:
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(available * RESIDENT_SHARE)


def fits(device: torch.device, count: int, dim: int) -> bool:
    """Whether a float32 copy of `count` x `dim` points fits the device's budget (else they are streamed)."""
    return count * dim * 4 <= resident_budget(device)


def _finite(norms: torch.Tensor) -> torch.Tensor:
    """The squared norms, once all are finite. One NaN or infinite value makes its cluster's centroid NaN, which
    then wins every argmin (torch.min propagates NaN): the k-means would collapse into one cluster, silently."""
    bad = int((~torch.isfinite(norms)).sum())
    if bad:
        raise ValueError(f"{bad} of {len(norms)} vectors are not finite (a NaN or infinite value, or a norm past "
                         f"float32's range): k-means cannot cluster them")  # fmt: skip
    return norms


def _half(half: bool | None, norms: torch.Tensor, device: torch.device) -> bool:
    """float16 storage: as asked, else on CUDA when every norm is at most HALF_PRECISION_MAX_NORM."""
    if half is not None:
        return half
    largest = float(norms.max().sqrt()) if len(norms) else 0.0
    return device.type == "cuda" and largest <= HALF_PRECISION_MAX_NORM


def _chunk_rows(k: int) -> int:
    """Points per chunk of a pass against k centroids: bounded by the distance table and by CHUNK_ROWS."""
    return max(1, min(CHUNK_ELEMENTS // max(1, k), CHUNK_ROWS))


class _LocalPasses:
    """The passes every kind of points offers (`nearest`, `lloyd`); these run them here, chunk by chunk (sharded
    points run them on their actors)."""

    def nearest(self, centroids: np.ndarray | torch.Tensor,
                sums: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        return _nearest(self, centroids, sums)

    def lloyd(self, centroids: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, Farthest]:
        """One Lloyd pass: adds every point to its centroid's row of `sums`; returns the cluster sizes and
        `farthest(m)`, the positions of the m points farthest from their centroid (to re-seed empty clusters)."""
        labels, distances = _nearest(self, centroids, sums)
        return torch.bincount(labels, minlength=len(centroids)), lambda m: distances.topk(m).indices

    def distances_to(self, centroids: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        """Squared distance of every point to its own centroid, centroids[labels[i]], chunk by chunk: a split
        leaf's point may lie nearer another cluster's leaf, which `nearest` would measure instead."""
        table = torch.as_tensor(centroids, dtype=torch.float32, device=self.device)
        labels = torch.as_tensor(labels, device=self.device)
        distances = torch.empty(len(self), dtype=torch.float32, device=self.device)
        for start in range(0, len(self), CHUNK_ROWS):
            own = table[labels[start : start + CHUNK_ROWS]]
            chunk = self.chunk(start, start + CHUNK_ROWS).float()
            distances[start : start + CHUNK_ROWS] = (chunk - own).square_().sum(dim=1)
        return distances


@dataclass(frozen=True)
class Points(_LocalPasses):
    """Points resident on the compute device, with their squared norms (float32)."""

    data: torch.Tensor
    norms: torch.Tensor

    @classmethod
    def of(cls, points: np.ndarray | torch.Tensor | Points | StreamedPoints, half: bool | None = None,
           rows: np.ndarray | None = None) -> Points | StreamedPoints:  # fmt: skip
        """On CUDA when torch sees one. `half` (default: on CUDA, when every norm is at most
        HALF_PRECISION_MAX_NORM) stores float16 for tensor-core products; sums and norms stay float32. `rows`
        picks a subset of a matrix's rows, in the order given. A NumPy matrix whose float32 copy exceeds the
        device's budget is not copied but streamed (StreamedPoints). Non-finite vectors are refused."""
        if not isinstance(points, np.ndarray | torch.Tensor):  # already points (resident, streamed or sharded)
            return points
        device = compute_device()
        if isinstance(points, np.ndarray):
            count = len(points) if rows is None else len(rows)
            if not fits(device, count, points.shape[1]):
                return StreamedPoints.of(points, rows, device, half)
            points = points if rows is None else points[np.asarray(rows, np.int64)]
        data = torch.as_tensor(np.asarray(points, np.float32) if isinstance(points, np.ndarray) else points)
        data = data.to(device=device, dtype=torch.float32)
        norms = _finite(torch.linalg.vector_norm(data, dim=1).square_())  # no N x d temporary
        return cls(data.half() if _half(half, norms, device) else data, norms)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def dim(self) -> int:
        return self.data.shape[1]

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        return self.data[start:stop]

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        return self.data[index]

    def take(self, rows: np.ndarray) -> Points:
        index = torch.as_tensor(rows, device=self.data.device)
        return Points(self.data[index], self.norms[index])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.data[torch.as_tensor(rows, device=self.data.device)].float().cpu().numpy()


class StreamedPoints(_LocalPasses):
    """Points left where they are (a NumPy or memory-mapped matrix, optionally a subset of its rows), read chunk
    by chunk onto the device in every pass; only their squared norms (float32) are resident. `take` gives a
    resident subset (k-means++ samples, resampled points, one cluster's members)."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray | None, device: torch.device, half: bool,
                 norms: torch.Tensor):  # fmt: skip
        self.matrix, self.index, self.device, self.norms = matrix, rows, device, norms
        self.dtype = torch.float16 if half else torch.float32

    @classmethod
    def of(cls, matrix: np.ndarray, rows: np.ndarray | None, device: torch.device,
           half: bool | None) -> StreamedPoints:  # fmt: skip
        rows = None if rows is None else np.asarray(rows, np.int64)
        count = len(matrix) if rows is None else len(rows)
        norms = torch.empty(count, dtype=torch.float32, device=device)
        reader = cls(matrix, rows, device, False, norms)  # float32 reads while the norms are measured
        for start in range(0, count, CHUNK_ROWS):
            chunk = reader.chunk(start, start + CHUNK_ROWS)
            norms[start : start + CHUNK_ROWS] = torch.linalg.vector_norm(chunk, dim=1).square_()
        return cls(matrix, rows, device, _half(half, norms, device), _finite(norms))

    def __len__(self) -> int:
        return len(self.matrix) if self.index is None else len(self.index)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def _read(self, positions: np.ndarray | slice) -> torch.Tensor:
        """Rows as a device tensor in the points' precision; float16 crosses to the GPU as float16."""
        selected = positions if self.index is None else self.index[positions]
        wire = np.float16 if self.dtype == torch.float16 else np.float32
        return torch.from_numpy(np.array(self.matrix[selected], dtype=wire)).to(self.device)

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        return self._read(slice(start, stop))

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        return self._read(index.cpu().numpy())

    def take(self, rows: np.ndarray) -> Points:
        rows = np.asarray(rows, np.int64)
        return Points(self.gather(torch.as_tensor(rows)), self.norms[torch.as_tensor(rows, device=self.device)])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.gather(torch.as_tensor(np.asarray(rows, np.int64))).float().cpu().numpy()


def _nearest(points: Points | StreamedPoints, centroids: np.ndarray | torch.Tensor,
             sums: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(nearest centroid index, squared distance) per point, on the points' device, in chunks. The argmin needs
    only |c|^2 - 2 x.c, one fused matrix product per chunk (in the points' precision); |x|^2 is added to the
    minimum alone. With `sums` ([k, d] float32), each point is also added to its centroid's row, in the same
    pass (one read of the points per Lloyd iteration)."""
    table = torch.as_tensor(centroids, dtype=torch.float32, device=points.device)
    bias = (table * table).sum(dim=1).to(points.dtype)
    table = table.to(points.dtype)
    labels = torch.empty(len(points), dtype=torch.int64, device=points.device)
    distances = torch.empty(len(points), dtype=torch.float32, device=points.device)
    step = _chunk_rows(len(table))
    for start in range(0, len(points), step):
        chunk = points.chunk(start, start + step)
        best, index = torch.addmm(bias, chunk, table.T, alpha=-2).min(dim=1)
        labels[start : start + step] = index
        distances[start : start + step] = (best.float() + points.norms[start : start + step]).clamp_(min=0)
        if sums is not None:
            sums.index_add_(0, index, chunk.float())
    return labels, distances


def assign(points: np.ndarray | Points | StreamedPoints, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid index int64, squared distance float32) per point."""
    labels, distances = Points.of(points).nearest(centroids)
    return labels.cpu().numpy(), distances.cpu().numpy()


def kmeans_plus_plus(points: np.ndarray | Points | StreamedPoints, k: int, rng: np.random.Generator, sample: int = 64,
                     rounds: int = SEEDING_ROUNDS) -> np.ndarray:  # fmt: skip
    """k-means++ seeding (D^2 sampling) on a random subsample of at most `sample` x k points, in batches.

    Exact k-means++ adds one centre per round: k sequential passes over the data, which made seeding dominate
    large hierarchies. Here each of at most `rounds` rounds adds a batch of centres and then updates D^2 with one
    chunked matrix product. A batch is chosen the k-means|| way (Bahmani et al., 2012): `OVERSAMPLING`
    candidates per centre drawn in proportion to D^2, then k-means++ among the candidates alone, so two centres
    of one batch rarely land in the same uncovered mode. With k - 1 <= rounds it is plain k-means++.
    """
    points = Points.of(points)
    pool = points.take(np.sort(rng.choice(len(points), min(len(points), sample * k), replace=False)))
    chosen = [int(rng.integers(len(pool)))]
    nearest = pool.nearest(pool.rows(chosen))[1].double().cpu().numpy()
    nearest[chosen] = 0
    rounds_left = max(1, min(rounds, k - 1))
    while len(chosen) < k:
        take = -(-(k - len(chosen)) // rounds_left)  # ceil: spread the rest evenly over the rounds left
        positive = np.flatnonzero(nearest > 0)
        if len(positive) >= take:
            draws = min(len(positive), take * OVERSAMPLING if take > 1 else 1)
            keys = np.log(rng.random(len(positive))) / nearest[positive]  # Efraimidis-Spirakis: top keys
            candidates = positive[np.argpartition(keys, -draws)[-draws:]]
            picks = candidates[_plus_plus_among(pool.rows(candidates), nearest[candidates], take, rng)]
        else:  # fewer distinct points than centres wanted (exact duplicates): the rest uniformly
            others = np.setdiff1d(np.arange(len(pool)), np.concatenate([positive, chosen]))
            picks = np.concatenate([positive, rng.choice(others, take - len(positive), replace=False)])
        chosen.extend(int(pick) for pick in picks)
        np.minimum(nearest, pool.nearest(pool.rows(picks))[1].double().cpu().numpy(), out=nearest)
        nearest[picks] = 0
        rounds_left = max(1, rounds_left - 1)
    return pool.rows(np.asarray(chosen))


def _plus_plus_among(candidates: np.ndarray, weights: np.ndarray, take: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `take` candidates picked one at a time in proportion to min(D^2 to the old centres, D^2 to the
    candidates picked so far): k-means++ restricted to a small candidate set."""
    if take >= len(candidates):
        return np.arange(len(candidates))
    candidates = candidates.astype(np.float64)
    norms = (candidates**2).sum(axis=1)
    between = np.maximum(norms[:, None] - 2 * candidates @ candidates.T + norms[None, :], 0)
    remaining = weights.astype(np.float64).copy()
    picks: list[int] = []
    for _ in range(take):
        cumulative = np.cumsum(remaining)
        if cumulative[-1] > 0:
            pick = min(
                int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(remaining) - 1
            )
        else:  # the candidates left coincide with chosen ones: any unpicked one
            pick = int(np.setdiff1d(np.arange(len(candidates)), picks)[0])
        picks.append(pick)
        np.minimum(remaining, between[pick], out=remaining)
        remaining[pick] = 0
    return np.asarray(picks)


def kmeans(points: np.ndarray | Points | StreamedPoints, k: int, *, iterations: int = 20, seed: int = 0,
           init: np.ndarray | None = None, on_pass: Passes | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(centroids [k, d] float32, labels [n]). Empty clusters are re-seeded with the points farthest from their
    centroid. With `init`, k is its row count (at most the number of points). `on_pass(1)` after every
    iteration (progress, and the run's cancel point)."""
    points = Points.of(points)
    if init is not None:
        centroids = np.asarray(init, np.float32)[: len(points)].copy()
    else:
        centroids = kmeans_plus_plus(points, min(k, len(points)), np.random.default_rng(seed))
    k = len(centroids)
    table = torch.as_tensor(centroids, device=points.device)
    for _ in range(iterations):
        sums = torch.zeros_like(table)
        counts, farthest = points.lloyd(table, sums)
        counts = counts.to(table.device)
        table = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], table)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            table[empty] = points.gather(farthest(len(empty))).float().to(table.device)
        if on_pass is not None:
            on_pass(1)
    centroids = table.cpu().numpy()
    return centroids, points.nearest(centroids)[0].cpu().numpy()


@dataclass(frozen=True)
class Level:
    clusters: int  # k at this level
    resampling_steps: int = 0  # Vo et al.: re-run k-means on points resampled from every cluster
    sample_size: int = 10  # points taken per cluster at each resampling step
    selection: str = "closest"  # closest (to the centroid) | random
    split: int = 1  # finest level only: split each cluster into this many (how Vo et al. reached 10M leaves)


def resample(points: np.ndarray | Points | StreamedPoints, centroids: np.ndarray, level: Level,
             rng: np.random.Generator, on_pass: Passes | None = None) -> np.ndarray:  # fmt: skip
    """One resampling step: take `sample_size` points per cluster and re-cluster their union, starting from the
    current centroids. Dense modes contribute no more points than sparse ones, so centroids spread out over the
    support of the data instead of piling into its modes."""
    points = Points.of(points)
    labels, distances = assign(points, centroids)
    within = distances if level.selection == "closest" else rng.random(len(points))
    order = np.lexsort((within, labels))  # by cluster, then closest (or a random order) first
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_cluster = np.arange(len(order)) - starts
    subset = points.take(order[rank_in_cluster < level.sample_size])
    if len(subset) < len(centroids):  # fewer points than clusters (many exact duplicates): nothing to re-fit
        if on_pass is not None:
            on_pass(RESAMPLING_ITERATIONS)
        return centroids
    centroids, _ = kmeans(subset, len(centroids), iterations=RESAMPLING_ITERATIONS, seed=int(rng.integers(1 << 31)),
                          init=centroids, on_pass=on_pass)  # fmt: skip
    return centroids


def hierarchical_kmeans(points: np.ndarray | Points | StreamedPoints, levels: list[Level], *, seed: int = 0,
                        iterations: int = 20, workdir: Path | None = None,
                        on_pass: Passes | None = None) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
    """Cluster paths [n, len(levels)] (coarsest level first) and the centroids of each level (finest first).

    Level 1 clusters the points; level l+1 clusters the centroids of level l. With `workdir`, every level's and
    resampling step's result is saved there and reused by a rerun, whatever the points: a workdir belongs to one
    set of points and settings (compose keys it by their image ids). `on_pass` hears of every Lloyd pass, a reused
    step's all at once: `hierarchy_passes(levels, iterations)` in all (the split's small k-means not counted).
    """

    def reused(count: int) -> Callable[[], None] | None:  # a step loaded from workdir reports its passes at once
        return None if on_pass is None else partial(on_pass, count)

    current = first_level = Points.of(points)
    all_centroids, labels_per_level = [], []
    for number, level in enumerate(levels, start=1):
        first = partial(kmeans, current, level.clusters, iterations=iterations, seed=seed + number, on_pass=on_pass)
        centroids = cached(workdir, f"level-{number}-step-0", lambda first=first: first()[0],
                           on_load=reused(iterations))  # fmt: skip
        for step in range(1, level.resampling_steps + 1):
            previous = centroids
            rng = np.random.default_rng([seed, number, step])  # per step: a resumed run draws the same numbers
            centroids = cached(workdir, f"level-{number}-step-{step}",
                               partial(resample, current, previous, level, rng, on_pass),
                               on_load=reused(RESAMPLING_ITERATIONS))  # fmt: skip
        labels, _ = assign(current, centroids)
        all_centroids.append(centroids)
        labels_per_level.append(labels)
        current = Points.of(centroids)
    paths = np.empty((len(points), len(levels)), np.int64)
    node = labels_per_level[0]
    for depth, labels in enumerate(labels_per_level):
        if depth > 0:
            node = labels[node]
        paths[:, len(levels) - 1 - depth] = node
    if levels[0].split > 1:
        leaves, leaf_centroids = _split(first_level, labels_per_level[0], levels[0].split, seed,
                                        iterations, workdir)  # fmt: skip
        paths = np.concatenate([paths, leaves[:, None]], axis=1)
        all_centroids.insert(0, leaf_centroids)
    return paths, all_centroids


def _split(points: Points, labels: np.ndarray, parts: int, seed: int, iterations: int,
           workdir: Path | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Split every finest cluster into `parts` by k-means inside it: leaf id = cluster x parts + sub-cluster."""
    if workdir is not None and (Path(workdir) / "split-leaves.npy").exists():
        return np.load(Path(workdir) / "split-leaves.npy"), np.load(Path(workdir) / "split-centroids.npy")
    leaves = np.empty(len(points), np.int64)
    centroids = np.zeros((int(labels.max() + 1) * parts, points.dim), np.float32)
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        sub_centroids, sub_labels = kmeans(points.take(members), parts, iterations=iterations, seed=seed + int(cluster))
        leaves[members] = cluster * parts + sub_labels
        centroids[cluster * parts : cluster * parts + len(sub_centroids)] = sub_centroids
    cached(workdir, "split-centroids", lambda: centroids)
    cached(workdir, "split-leaves", lambda: leaves)  # written last: the split's completion marker
    return leaves, centroids


def hierarchy_passes(levels: list[Level], iterations: int) -> int:
    """Lloyd passes of a hierarchy (what `on_pass` is told in all): each level's k-means and resampling steps."""
    return sum(iterations + level.resampling_steps * RESAMPLING_ITERATIONS for level in levels)


def cached(workdir: Path | None, name: str, compute, on_load: Callable[[], None] | None = None) -> np.ndarray:
    """`compute()`, saved as workdir/name.npy (atomically) and loaded from there by a rerun (then `on_load()`);
    no workdir: no cache."""
    if workdir is None:
        return compute()
    path = Path(workdir) / f"{name}.npy"
    if path.exists():
        if on_load is not None:
            on_load()
        return np.load(path)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, result)
    temporary.replace(path)
    return result
