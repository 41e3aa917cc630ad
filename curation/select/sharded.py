"""Points sharded over Ray actors: k-means of a pool that no single machine holds.

DINOv3 clustered a 17B-image pool; ssl-data-curation spreads that k-means over torch.distributed ranks. Here the
run's Ray cluster holds it: each `PointShard` actor owns a contiguous share of the points, read by path from the
memory-mapped vector matrix (on the home, which every node of a multi-node cluster must see), resident on the
actor's device (its GPU when Ray gave it one) or streamed when its share does not fit there (`Points.of`
decides, per actor). A Lloyd pass sends the centroids to every actor; each returns its cluster sums and sizes
and its k points farthest from their centroids (to re-seed empty clusters), which the driver merges: k-sized
results, whatever the pool's size. Per-point labels and distances come back only for a final assignment or a
resampling step (per-point scalars live on the driver, as everywhere in the pipeline); the vectors never travel.

A subset (k-means++ candidates, resampled points, one cluster's members) that fits the driver's budget is read
into a resident `Points` there; a larger one stays sharded, each actor keeping its own part. Every set is named
by its matrix rows, so an actor that Ray restarts rebuilds whichever set a retried call asks for.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

import curation.select.kmeans as kmeans_module
from curation.embed.vectors import matrix_path
from curation.errors import RunError
from curation.select.kmeans import Points, StreamedPoints, compute_device, fits, resident_budget
from curation.select.retrieval import best_of, streamed_top_k

_SET_KEYS = itertools.count(1)  # one id per point set, shared by the actors that hold its parts
ACTOR_START_S = 120  # how long the shard actors may wait for room on the cluster


def _node_share() -> float:
    """This actor's share of what it runs on: its fraction of a GPU, else its CPUs' share of its node's."""
    import ray

    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    if assigned.get("GPU"):
        return min(1.0, assigned["GPU"])
    node = next(node for node in ray.nodes() if node["NodeID"] == context.get_node_id())
    return min(1.0, assigned.get("CPU", 1.0) / max(1.0, node["Resources"].get("CPU", 1.0)))


def _table(centroids: np.ndarray | torch.Tensor) -> np.ndarray:
    return torch.as_tensor(centroids, dtype=torch.float32).cpu().numpy()


def _floor(share: float) -> float:
    """A resource share Ray accepts (4 decimals) whose sum over the actors never exceeds the whole."""
    return math.floor(share * 10_000) / 10_000


class PointShard:
    """A Ray actor: this share of every point set, built from the matrix rows the call names when first used."""

    def __init__(self, matrix_path: str):
        self.matrix = np.load(matrix_path, mmap_mode="r")
        self.sets: dict[int, Points | StreamedPoints] = {}
        # The actors on one node (or one GPU) all see its whole free memory: each may use its share of the budget.
        # This process is the actor's alone, so the module's budget is set for it here.
        kmeans_module.RESIDENT_BUDGET_BYTES = int(resident_budget(compute_device()) * _node_share())

    def _points(self, key: int, rows: np.ndarray) -> Points | StreamedPoints:
        if key not in self.sets:  # the set's first call here, or a call retried on a restarted actor
            self.sets[key] = Points.of(self.matrix, rows=rows)
        return self.sets[key]

    def nearest(self, key: int, rows: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels, distances = self._points(key, rows).nearest(np.array(centroids))  # Ray's arguments are read-only
        return labels.cpu().numpy(), distances.cpu().numpy()

    def lloyd(self, key: int, rows: np.ndarray,
              centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """One Lloyd pass over this share: (cluster sums, cluster sizes, and the squared distances and positions
        of its k points farthest from their centroids, best first): all the driver needs, k-sized."""
        points, centroids = self._points(key, rows), np.array(centroids)
        sums = torch.zeros((len(centroids), points.dim), device=points.device)
        labels, distances = points.nearest(centroids, sums)
        far, positions = distances.topk(min(len(centroids), len(distances)))
        counts = torch.bincount(labels, minlength=len(centroids))
        return sums.cpu().numpy(), counts.cpu().numpy(), far.cpu().numpy(), positions.cpu().numpy()

    def distances_to(self, key: int, rows: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self._points(key, rows).distances_to(np.array(centroids), np.array(labels)).cpu().numpy()

    def read(self, key: int, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self._points(key, rows).rows(np.array(positions))

    def top_k(self, key: int, rows: np.ndarray, seeds: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The seeds' exact top k in this share (positions in it), scanned from the matrix chunk by chunk (the set
        itself is not needed: one pass)."""
        return streamed_top_k(seeds, self.matrix, rows, k, compute_device())

    def forget(self, key: int) -> None:
        self.sets.pop(key, None)

    def ready(self) -> str:
        """The id of the Ray node this actor runs on (and proof that it started)."""
        import ray

        return ray.get_runtime_context().get_node_id()


class ShardPool:
    """The actors that hold the shares, over one memory-mapped matrix; `points(rows)` makes a sharded set."""

    def __init__(self, executor, matrix: np.memmap, shards: int):
        import ray

        path = matrix_path(matrix, "stages.select.shards")

        cpus, gpus = executor.resources()
        share = {"num_cpus": _floor(cpus / shards), "num_gpus": _floor(min(1.0, gpus / shards))}
        self.executor, self.count, self.dim = executor, len(matrix), matrix.shape[1]
        self.actors = executor.start_actors(PointShard, shards, path, spread=True, **share)
        self.open, self.forgetting = True, []
        try:
            self.nodes = ray.get([actor.ready.remote() for actor in self.actors], timeout=ACTOR_START_S)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RunError(
                f"stages.select.shards: {shards} actors with {share} each found no room on the Ray "
                f"cluster within {ACTOR_START_S} s (is something else holding its CPUs?)"
            ) from None

    def points(self, rows: np.ndarray | None = None) -> ShardedPoints:
        """Matrix rows `rows` (None: all), in that order, cut into one contiguous share per actor."""
        rows = np.arange(self.count) if rows is None else np.asarray(rows, np.int64)
        return ShardedPoints(self, np.array_split(rows, len(self.actors)), None)

    def forget(self, key: int) -> None:
        """Frees a set's parts once the driver drops it (resampling makes one set per step)."""
        if self.open:
            self.forgetting.extend(actor.forget.remote(key) for actor in self.actors)

    def close(self) -> None:
        import ray

        self.open = False
        ray.wait(self.forgetting, num_returns=len(self.forgetting), timeout=10)  # not killed while queued
        self.executor.stop_actors(self.actors)


class ShardedPoints:
    """Points spread over `PointShard` actors. `shares[a]` are the matrix rows actor a holds (in its order);
    `order[p]` is where logical point p sits in the concatenation of the shares (None: at p), so positions mean
    what they would mean for resident points built from the same rows."""

    device = torch.device("cpu")  # where passes hand back labels and distances

    def __init__(self, pool: ShardPool, shares: list[np.ndarray], order: np.ndarray | None):
        import ray

        self.pool, self.actors, self.shares, self.order, self.dim = pool, pool.actors, shares, order, pool.dim
        self.key = next(_SET_KEYS)
        self.share_refs = [ray.put(share) for share in shares]  # sent once, read by every call (and retries)
        self.offsets = np.cumsum([0, *map(len, shares)])
        weakref.finalize(self, pool.forget, self.key)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def nearest(self, centroids: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest centroid, squared distance) of every point: each actor's pass over its share, at once. Cluster
        sums are `lloyd`'s, which keeps the per-point results on the actors."""
        results = self._on_every_actor("nearest", _table(centroids))
        labels = self._logical(np.concatenate([labels for labels, _ in results]))
        distances = self._logical(np.concatenate([distances for _, distances in results]))
        return torch.from_numpy(labels), torch.from_numpy(distances)

    def lloyd(self, centroids: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, Callable]:
        """One Lloyd pass on every actor at once (as `Points.lloyd`): per actor only k x d sums, k sizes and its k
        farthest points come back, whatever the size of its share; per-point labels stay on the actors."""
        found = self._on_every_actor("lloyd", _table(centroids))
        for part, _, _, _ in found:
            sums += torch.tensor(part, device=sums.device)
        counts = torch.tensor(np.sum([sizes for _, sizes, _, _ in found], axis=0))
        far = np.concatenate([distances for _, _, distances, _ in found])
        placed = np.concatenate([positions + offset for (_, _, _, positions), offset in zip(found, self.offsets)])

        def farthest(count: int) -> torch.Tensor:
            return torch.from_numpy(self._logical_positions(placed[np.argsort(-far, kind="stable")[:count]]))

        return counts, farthest

    def distances_to(self, centroids: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        """Squared distance of every point to centroids[labels[i]] (as `Points.distances_to`): each actor is sent
        the labels of its share only."""
        import ray

        placed = np.asarray(labels)[self._logical_positions(np.arange(len(self)))]
        table = ray.put(_table(centroids))
        found = ray.get([actor.distances_to.remote(self.key, share, table, part)
                         for actor, share, part in zip(self.actors, self.share_refs,
                                                       np.split(placed, self.offsets[1:-1]))])  # fmt: skip
        return torch.from_numpy(self._logical(np.concatenate(found)))

    def top_k(self, seeds: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of each seed's exact k nearest points, best first (-1 where fewer exist): every
        actor's top k of its share, merged on the driver in `best_of`'s order (ties: the lowest positions)."""
        found = self._on_every_actor("top_k", np.ascontiguousarray(seeds, np.float32), k)
        scores = np.concatenate([share_scores for share_scores, _ in found], axis=1)
        placed = np.concatenate([np.where(ids >= 0, ids + offset, -1) for (_, ids), offset in zip(found, self.offsets)],
                                axis=1)  # fmt: skip
        logical = np.where(placed >= 0, self._logical_positions(np.maximum(placed, 0)), -1)
        return best_of(scores, logical, k)

    def _on_every_actor(self, method: str, *args) -> list:
        """`method(set key, its share's rows, *args)` on every actor at once; arrays go to the object store once."""
        import ray

        shared = [ray.put(arg) if isinstance(arg, np.ndarray) else arg for arg in args]
        return ray.get([getattr(actor, method).remote(self.key, share, *shared)
                        for actor, share in zip(self.actors, self.share_refs)])  # fmt: skip

    def _logical_positions(self, placed: np.ndarray) -> np.ndarray:
        """Positions in the concatenation of the shares -> logical positions (the inverse of `order`)."""
        if self.order is None:
            return placed
        logical = np.empty_like(self.order)
        logical[self.order] = np.arange(len(self.order))
        return logical[placed]

    def _placed(self, positions: np.ndarray) -> np.ndarray:
        return positions if self.order is None else self.order[positions]

    def _logical(self, concatenated: np.ndarray) -> np.ndarray:
        return concatenated if self.order is None else concatenated[self.order]

    def _owners(self, placed: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, placed, side="right") - 1

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The points at these positions, float32, in the order given, read from the actors that hold them."""
        import ray

        placed = self._placed(np.asarray(positions, np.int64))
        owners = self._owners(placed)
        found = np.empty((len(placed), self.dim), np.float32)
        calls = [(owners == actor, self.actors[actor].read.remote(self.key, self.share_refs[actor],
                                                                  placed[owners == actor] - self.offsets[actor]))
                 for actor in np.unique(owners)]  # fmt: skip
        for mask, call in calls:
            found[mask] = ray.get(call)
        return found

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.rows(index.cpu().numpy()))

    def take(self, positions: np.ndarray) -> Points | ShardedPoints:
        """The subset at `positions` (in that order): resident on the driver when it fits, else still sharded."""
        positions = np.asarray(positions, np.int64)
        if fits(compute_device(), len(positions), self.dim):
            return Points.of(self.rows(positions))
        placed = self._placed(positions)
        owners = self._owners(placed)
        layout = np.argsort(owners, kind="stable")  # the subset's concatenation: by actor, then as given
        shares = [self.shares[actor][placed[layout][owners[layout] == actor] - self.offsets[actor]]
                  for actor in range(len(self.actors))]  # fmt: skip
        order = np.empty_like(layout)
        order[layout] = np.arange(len(layout))
        return ShardedPoints(self.pool, shares, order)


@contextmanager
def shard_pool(executor, matrix: np.memmap, shards: int) -> Iterator[ShardPool]:
    """`shards` PointShard actors over the memory-mapped `matrix`, spread over the cluster's nodes, each with an
    equal part of its CPUs and GPUs; stopped on exit."""
    pool = ShardPool(executor, matrix, shards)
    try:
        yield pool
    finally:
        pool.close()
