"""k-means on points sharded over real Ray actors: the same hierarchy as resident points, whether subsets come
back to the driver or stay sharded; an actor killed mid-run is restarted and the result does not change."""

from __future__ import annotations

import numpy as np
import pytest

import curation.select.kmeans as kmeans_module
from curation.config import PipelineSpec
from curation.executors.ray import RayExecutor
from curation.select.compose import compose
from curation.select.kmeans import Level, Points, assign, hierarchical_kmeans, kmeans
from curation.select.retrieval import sample_based
from curation.select.sharded import ShardedPoints, shard_pool
from tests.select.conftest import same_selection, unit

LEVELS = [Level(40, resampling_steps=2, sample_size=5, split=2), Level(8, resampling_steps=2, selection="random"),
          Level(3)]  # fmt: skip


@pytest.fixture
def executor(ray_local):
    return RayExecutor()  # joins the session's Ray


@pytest.mark.parametrize("subsets", ["on the driver", "sharded"])
def test_sharded_points_cluster_like_resident_ones(executor, float16_pool, monkeypatch, subsets):
    expected = hierarchical_kmeans(Points.of(float16_pool), LEVELS, seed=2)
    with shard_pool(executor, float16_pool, 3) as pool:
        points = pool.points()
        if subsets == "sharded":  # nothing fits the driver: k-means++ samples and resampled points stay on actors
            monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 1 << 10)
            assert isinstance(points.take(np.arange(4999, 0, -7)), ShardedPoints)
        paths, centroids = hierarchical_kmeans(points, LEVELS, seed=2)
        labels = assign(points, centroids[0])[0]
    assert np.array_equal(paths, expected[0])
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(centroids, expected[1]))
    assert np.array_equal(labels, assign(float16_pool, expected[1][0])[0])


def test_a_sharded_subset_keeps_the_order_it_was_given(executor, float16_pool, monkeypatch):
    rows = np.random.default_rng(0).permutation(5000)[:1500]
    with shard_pool(executor, float16_pool, 2) as pool:
        points = pool.points(rows)
        assert np.array_equal(points.rows(np.arange(20)), np.asarray(float16_pool[rows[:20]], np.float32))
        monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 0)
        positions = np.array([1499, 3, 700, 2, 1000])
        subset = points.take(positions)
        assert isinstance(subset, ShardedPoints)
        assert np.array_equal(subset.rows(np.arange(5)), np.asarray(float16_pool[rows[positions]], np.float32))
        centroids, labels = np.asarray(float16_pool[:3], np.float32), np.array([2, 0, 1, 1, 0])
        own = ((np.asarray(float16_pool[rows[positions]], np.float32) - centroids[labels]) ** 2).sum(axis=1)
        np.testing.assert_allclose(subset.distances_to(centroids, labels), own, atol=1e-6)
        first, second = kmeans(Points.of(float16_pool, rows=rows), 7, seed=3), kmeans(points, 7, seed=3)
    assert np.allclose(first[0], second[0], atol=1e-5) and np.array_equal(first[1], second[1])


def test_a_killed_actor_is_restarted_and_rebuilds_its_share(executor, float16_pool):
    import ray

    expected = kmeans(Points.of(float16_pool), 12, seed=4)
    with shard_pool(executor, float16_pool, 2) as pool:
        points = pool.points()
        points.nearest(expected[0])  # both actors hold their share now
        ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it empty; the next calls are retried there
        centroids, labels = kmeans(points, 12, seed=4)
    assert np.allclose(centroids, expected[0], atol=1e-5) and np.array_equal(labels, expected[1])


def test_sharded_retrieval_scan_is_exact(executor, float16_pool):
    """Each actor's top k of its share, merged: the brute-force top k of the whole subset, in its positions."""
    rows = np.random.default_rng(1).permutation(5000)[:999]
    pool_rows = np.asarray(float16_pool[rows], np.float32)
    seeds = pool_rows[::100] + 0.01
    expected = np.argsort(-(seeds @ pool_rows.T), axis=1, kind="stable")[:, :6]
    with shard_pool(executor, float16_pool, 3) as pool:
        scores, positions = pool.points(rows).top_k(seeds, 6)
        _, few = pool.points(rows[:2]).top_k(seeds, 6)  # fewer points than k (and an actor with none)
    assert np.array_equal(positions, expected)
    assert np.allclose(scores, np.take_along_axis(seeds @ pool_rows.T, expected, axis=1), atol=1e-5)
    assert (few[:, :2] >= 0).all() and (few[:, 2:] == -1).all()


def test_tied_scores_pull_the_same_images_on_every_search_path(executor, tmp_path, monkeypatch):
    """Identical pool vectors tie. FAISS, the streamed scan (ties across its chunks) and two actors (ties across
    their shares) all keep the lowest pool indices of a tie, best first: the same pulls with or without shards."""
    import curation.select.retrieval as retrieval_module

    rng = np.random.default_rng(0)
    a = unit(rng.normal(size=(1, 16)))
    b = unit(a + 0.5 * unit(rng.normal(size=(1, 16))))  # cosine ~0.9 to a
    vectors = np.concatenate([np.repeat(a, 3, axis=0), np.repeat(b, 8, axis=0), unit(rng.normal(size=(40, 16)))])
    matrix = np.lib.format.open_memmap(tmp_path / "ties.npy", mode="w+", dtype=np.float16, shape=vectors.shape)
    matrix[:] = vectors
    matrix.flush()
    matrix = np.load(tmp_path / "ties.npy", mmap_mode="r")
    rows = rng.permutation(len(vectors))  # the tied copies scattered over the pool, its chunks and shares
    seeds = np.asarray(matrix[[0, 3]])  # a and b themselves
    copies_of_a, copies_of_b = np.flatnonzero(rows < 3).tolist(), np.flatnonzero((rows >= 3) & (rows < 11)).tolist()
    expected = {0: copies_of_a + copies_of_b[:3], 1: copies_of_b[:6]}  # by rank

    def pulled(**how) -> dict[int, list[int]]:
        pulls = sorted(sample_based(seeds, matrix, k=6, rows=rows, **how), key=lambda pull: pull.rank)
        return {seed: [pull.pool_index for pull in pulls if pull.seed_index == seed] for seed in (0, 1)}

    assert pulled() == expected  # FAISS on this CPU (the compute device's scan where torch sees a GPU)
    with shard_pool(executor, matrix, 2) as pool:
        assert pulled(sharded=pool.points(rows)) == expected
    monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 0)
    monkeypatch.setattr(retrieval_module, "STREAM_ROWS", 7)
    assert pulled() == expected


def test_compose_on_shards_selects_what_it_selects_in_process(executor, float16_pool, mixed_selection, ray_local):
    stage, ids, sources = mixed_selection
    expected = compose(stage, ids, sources, float16_pool)
    cpus = ray_local.cluster_resources()["CPU"]
    with shard_pool(executor, float16_pool, 2) as pool:
        assert ray_local.available_resources().get("CPU", 0) < cpus  # the actors hold the CPUs while they live
        sharded = compose(stage, ids, sources, float16_pool, shards=pool)
    assert same_selection(sharded, expected)
    assert sharded[0].keys() == expected[0].keys() and sharded[1]["balanced"] == expected[1]["balanced"]


def test_shards_need_ray_and_a_memory_mapped_matrix(executor):
    spec = {"name": "x", "sources": [{"kind": "folder", "name": "a", "path": "."}],
            "execution": {"executor": "local"},
            "stages": {"embed": {"model": "builtin"}, "select": {"mode": "compose", "shards": 2, "parts": [
                {"kind": "source", "name": "all", "sources": ["a"]}]}}}  # fmt: skip
    with pytest.raises(ValueError, match="execution.executor ray"):
        PipelineSpec.model_validate(spec)
    with pytest.raises(TypeError, match="memory-mapped"):
        shard_pool(executor, np.zeros((4, 2), np.float32), 2).__enter__()


def test_shards_that_find_no_room_fail_clearly_and_leave_nothing_running(executor, float16_pool, monkeypatch):
    import curation.select.sharded as sharded_module
    from curation.errors import RunError

    with shard_pool(executor, float16_pool, 2):  # these take every CPU of the cluster
        monkeypatch.setattr(sharded_module, "ACTOR_START_S", 2)
        with pytest.raises(RunError, match="found no room on the Ray cluster"):
            shard_pool(executor, float16_pool, 2).__enter__()
        monkeypatch.undo()
    with shard_pool(executor, float16_pool, 2) as pool:  # the failed pool released what it had asked for
        assert len(pool.points()) == 5000


def test_actors_on_one_node_split_its_memory_budget(executor, float16_pool):
    """Every actor on a node sees the node's whole free memory; each keeps to its CPUs' share of the budget (two
    actors on this 2-CPU node: half each), so together they never claim more than one process would."""
    import ray

    def budget(shard) -> int:
        import curation.select.kmeans

        return curation.select.kmeans.RESIDENT_BUDGET_BYTES

    with shard_pool(executor, float16_pool, 2) as pool:
        budgets = ray.get([actor.__ray_call__.remote(budget) for actor in pool.actors])
    whole = kmeans_module.resident_budget(kmeans_module.compute_device())
    assert all(0.35 * whole < share < 0.65 * whole for share in budgets)


def test_lloyd_passes_bring_back_no_per_point_data_and_reseed_empty_clusters_alike(executor, float16_pool,
                                                                                   monkeypatch):  # fmt: skip
    """Iterations move only k-sized results (sums, sizes, each actor's k farthest points); per-point labels come
    back once, at the end. Clusters left empty (here: two centroids far from every point) are re-seeded with the
    same farthest points as in process."""
    init = np.asarray(float16_pool[:10], np.float32)
    init[3], init[7] = 40.0, -40.0  # nothing is nearest to these
    expected = kmeans(Points.of(float16_pool), 10, iterations=5, init=init)
    per_point_passes = []
    real_nearest = ShardedPoints.nearest

    def counting_nearest(self, centroids):
        per_point_passes.append(len(self))
        return real_nearest(self, centroids)

    monkeypatch.setattr(ShardedPoints, "nearest", counting_nearest)
    with shard_pool(executor, float16_pool, 3) as pool:
        centroids, labels = kmeans(pool.points(), 10, iterations=5, init=init)
    assert per_point_passes == [5000]  # the final assignment only
    assert np.allclose(centroids, expected[0], atol=1e-5) and np.array_equal(labels, expected[1])
    assert np.abs(centroids).max() < 2 and len(np.unique(labels)) == 10  # the far centroids were re-seeded
