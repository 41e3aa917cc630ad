"""Selection math: water-filling, balanced hierarchical sampling, hierarchical k-means with resampling (and its
resume), seed retrieval against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curation.config import BalancedPart, LevelSpec, RetrievalPart, SelectStage
from curation.core.progress import Progress
from curation.errors import RunCancelled
from curation.select.balance import group_positions, hierarchical_sample, water_fill
from curation.select.compose import compose
from curation.select.kmeans import (
    Level,
    Points,
    assign,
    hierarchical_kmeans,
    hierarchy_passes,
    kmeans,
    kmeans_plus_plus,
)
from curation.select.retrieval import cluster_based, sample_based
from tests.select.conftest import same_selection, unit


@pytest.mark.parametrize("target", [0, 1, 37, 100, 137, 138, 500])
def test_water_fill_sums_to_target_and_never_overdraws(target):
    sizes = np.array([100, 5, 30, 2, 1])
    take = water_fill(sizes, target, np.random.default_rng(0))
    assert take.sum() == min(target, sizes.sum()) and np.all(take <= sizes) and np.all(take >= 0)
    if 0 < target < sizes.sum():  # as equal as possible: no group gives 2+ more than a group that still has items
        open_groups = take < sizes
        assert take.max() - take[open_groups].min() <= 1 if open_groups.any() else True


def test_water_fill_remainder_is_deterministic_by_seed():
    sizes = np.array([10] * 7)
    first = water_fill(sizes, 11, np.random.default_rng(3))
    assert np.array_equal(first, water_fill(sizes, 11, np.random.default_rng(3)))
    assert sorted(first.tolist()) == [1, 1, 1, 2, 2, 2, 2]


def zipf_labels(classes: int = 10, largest: int = 2000, exponent: float = 1.5) -> np.ndarray:
    sizes = np.maximum(2, (largest / np.arange(1, classes + 1) ** exponent).astype(int))
    return np.repeat(np.arange(classes), sizes)


def test_balanced_sampling_flattens_a_long_tail():
    labels = zipf_labels()  # 2000, 707, 384, ... 63
    rng = np.random.default_rng(0)
    leaves = rng.integers(0, 4, len(labels))  # each class split into up to 4 leaf clusters
    paths = np.stack([labels, labels * 4 + leaves], axis=1)
    selected = hierarchical_sample(paths, 500, seed=1)
    counts = np.bincount(labels[selected], minlength=10)
    random_counts = np.bincount(labels[rng.choice(len(labels), 500, replace=False)], minlength=10)
    assert len(selected) == 500 and len(set(selected.tolist())) == 500
    assert counts.max() / counts.min() <= 1.1  # 50 each: every class has at least 63 images
    assert random_counts.max() / max(random_counts.min(), 1) >= 10  # what random sampling does instead
    assert np.array_equal(selected, hierarchical_sample(paths, 500, seed=1))


def test_closest_rule_takes_the_points_nearest_their_leaf_centroid():
    paths = np.zeros((6, 1), np.int64)
    distances = np.array([5.0, 0.1, 3.0, 0.2, 9.0, 0.3])
    assert hierarchical_sample(paths, 3, rule="closest", distances=distances).tolist() == [1, 3, 5]
    with pytest.raises(ValueError, match="needs the distances"):
        hierarchical_sample(paths, 3, rule="closest")


def long_tailed_toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One dense mode (10,000 points) at the origin and 9 sparse modes (50 points each) on a circle of radius 6."""
    rng = np.random.default_rng(seed)
    centres = np.array([[6 * np.cos(a), 6 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 9, endpoint=False)])
    points = np.concatenate([rng.normal(0, 0.3, (10_000, 2))] + [c + rng.normal(0, 0.3, (50, 2)) for c in centres])
    return points.astype(np.float32), centres


def coverage(centroids: np.ndarray, centres: np.ndarray) -> tuple[int, int]:
    """(centroids inside the dense mode, sparse modes with a centroid nearby)."""
    dense = int((np.linalg.norm(centroids, axis=1) < 2).sum())
    covered = int(sum((np.linalg.norm(centroids - centre, axis=1) < 1.5).any() for centre in centres))
    return dense, covered


def test_resampling_moves_centroids_from_the_dense_mode_to_the_sparse_ones():
    points, centres = long_tailed_toy()
    _, plain = hierarchical_kmeans(points, [Level(10)], seed=0)
    _, resampled = hierarchical_kmeans(points, [Level(10, resampling_steps=10, sample_size=5)], seed=0)
    plain_dense, plain_covered = coverage(plain[0], centres)
    dense, covered = coverage(resampled[0], centres)
    assert plain_covered <= 4 and covered >= plain_covered + 2  # measured: 3 -> 6 sparse modes reached
    assert dense <= plain_dense


def test_hierarchy_balances_where_flat_kmeans_piles_into_the_mode():
    points, centres = long_tailed_toy()
    flat_dense, flat_covered = coverage(kmeans(points, 10, seed=0)[0], centres)
    paths, centroids = hierarchical_kmeans(points, [Level(100), Level(10, resampling_steps=2, sample_size=3)], seed=0)
    dense, covered = coverage(centroids[1], centres)
    assert dense <= 2 and covered >= 8  # measured: 1 centroid in the mode, 9 sparse modes reached
    assert flat_dense > dense and flat_covered <= covered - 3  # measured: 3 in the mode, 5 sparse modes reached
    assert paths.shape == (len(points), 2) and paths[:, 0].max() < 10 and paths[:, 1].max() < 100


def test_hierarchical_kmeans_resumes_from_its_artefacts(tmp_path):
    points, _ = long_tailed_toy(1)
    levels = [Level(40, resampling_steps=2, sample_size=5), Level(8, resampling_steps=2, sample_size=3)]
    paths, centroids = hierarchical_kmeans(points, levels, seed=4, workdir=tmp_path)
    saved = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.npy")}
    assert sorted(saved) == [f"level-{level}-step-{step}.npy" for level in (1, 2) for step in (0, 1, 2)]
    for name in ("level-2-step-1.npy", "level-2-step-2.npy"):  # "killed" after level 2's first k-means
        (tmp_path / name).unlink()
    again, again_centroids = hierarchical_kmeans(points, levels, seed=4, workdir=tmp_path)
    assert np.array_equal(paths, again) and all(np.array_equal(a, b) for a, b in zip(centroids, again_centroids))
    for name in ("level-1-step-0.npy", "level-1-step-2.npy", "level-2-step-0.npy"):
        assert (tmp_path / name).stat().st_mtime_ns == saved[name]  # reused, not recomputed
    fresh, _ = hierarchical_kmeans(points, levels, seed=4)
    assert np.array_equal(fresh, paths)  # same seed, same clustering, with or without the cache


def test_split_refines_each_finest_cluster(tmp_path):
    points, _ = long_tailed_toy(2)
    levels = [Level(20, split=3), Level(5)]
    paths, centroids = hierarchical_kmeans(points, levels, seed=1, workdir=tmp_path)
    assert paths.shape == (len(points), 3)  # top, finest, split leaves
    assert np.array_equal(paths[:, 2] // 3, paths[:, 1])  # every leaf sits inside its finest cluster
    assert len(np.unique(paths[:, 2])) > len(np.unique(paths[:, 1])) and centroids[0].shape == (60, 2)
    again, _ = hierarchical_kmeans(points, levels, seed=1, workdir=tmp_path)
    assert np.array_equal(again, paths)
    selected = hierarchical_sample(paths, 100, seed=0)
    assert len(selected) == 100


def test_compose_honours_the_specs_split(tmp_path):
    """`levels[0].split` in a spec reaches the hierarchy: leaves are the split sub-clusters, one more path entry."""
    points, _ = long_tailed_toy(3)
    vectors = np.concatenate([points, np.ones((len(points), 1))], axis=1).astype(np.float32)
    stage = SelectStage(mode="compose", parts=[BalancedPart(
        kind="balanced", name="balanced", target=200, rule="closest",
        levels=[LevelSpec(clusters=12, split=3), LevelSpec(clusters=4)])])  # fmt: skip
    ids = [f"{i:05d}" for i in range(len(points))]
    reasons, details = compose(stage, ids, [{"pool"}] * len(points), vectors, workdir=tmp_path)
    paths = [reason[0]["cluster_path"] for reason in reasons.values()]
    assert len(reasons) == 200 and all(len(path) == 3 for path in paths)
    assert all(path[2] // 3 == path[1] for path in paths)  # each leaf inside its finest cluster
    assert len(list(tmp_path.glob("balanced/*/split-leaves.npy"))) == 1 and len(details["balanced"]["before"]) <= 4


def test_closest_rule_after_a_split_ranks_by_the_own_leaf_centroid(monkeypatch):
    """With `split`, a point can lie nearer another cluster's leaf than its own: "closest" measures the distance
    to its own leaf's centroid (resident and streamed alike), and compose picks by it."""
    import curation.select.kmeans as kmeans_module

    points = unit(np.random.default_rng(0).normal(size=(400, 8)))
    part = BalancedPart(kind="balanced", name="balanced", target=80, rule="closest",
                        levels=[LevelSpec(clusters=20, split=4), LevelSpec(clusters=4)])  # fmt: skip
    ids = [f"{i:03d}" for i in range(len(points))]
    reasons, _ = compose(SelectStage(mode="compose", parts=[part]), ids, [{"pool"}] * len(points), points)
    levels = [Level(**level.model_dump()) for level in part.levels]
    paths, centroids = hierarchical_kmeans(points, levels, seed=0, iterations=part.iterations)
    assert (assign(points, centroids[0])[0] != paths[:, -1]).any()  # some points lie nearer another leaf
    own = Points.of(points).distances_to(centroids[0], paths[:, -1]).numpy()
    np.testing.assert_allclose(own, ((points - centroids[0][paths[:, -1]]) ** 2).sum(axis=1), atol=1e-6)
    monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 0)
    assert np.array_equal(Points.of(points).distances_to(centroids[0], paths[:, -1]).numpy(), own)
    expected = hierarchical_sample(paths, 80, seed=0, rule="closest", distances=own)
    assert sorted(reasons) == [ids[index] for index in expected]


@pytest.mark.parametrize("search", ["faiss", "streamed"])
def test_sample_based_retrieval_is_exact_and_capped(search, monkeypatch):
    """FAISS for a pool that fits memory, the chunked scan past it (here forced, with chunks and seed batches
    smaller than the data): the same exact answer."""
    import curation.select.kmeans as kmeans_module
    import curation.select.retrieval as retrieval_module

    if search == "streamed":
        monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 0)
        monkeypatch.setattr(retrieval_module, "STREAM_ROWS", 64)
        monkeypatch.setattr(retrieval_module, "SEED_BATCH", 3)
    rng = np.random.default_rng(0)
    pool, seeds = unit(rng.normal(size=(500, 16))), unit(rng.normal(size=(7, 16)))
    pulls = sample_based(seeds, pool, k=4, floor=0.2)
    scores = seeds @ pool.T
    expected = {(int(p), s) for s in range(7) for p in np.argsort(-scores[s])[:4] if scores[s, p] >= 0.2}
    assert {(pull.pool_index, pull.seed_index) for pull in pulls} == expected
    assert all(pull.rank == 1 + list(np.argsort(-scores[pull.seed_index])).index(pull.pool_index) for pull in pulls)
    capped = sample_based(seeds, pool, k=4, floor=0.2, cap=5)
    assert len({pull.pool_index for pull in capped}) == 5
    best = sorted({p for p, _ in expected}, key=lambda p: -max(scores[:, p]))[:5]
    assert {pull.pool_index for pull in capped} == set(best)
    subset = np.arange(499, -1, -2)  # every other pool image, reversed: indices are positions in `rows`
    picked = sample_based(seeds, pool, k=3, rows=subset)
    sub_scores = seeds @ pool[subset].T
    assert {(p.pool_index, p.seed_index) for p in picked} == {
        (int(p), s) for s in range(7) for p in np.argsort(-sub_scores[s])[:3]
    }


def test_cluster_based_retrieval_respects_min_seeds_and_caps():
    pool_labels = np.repeat(np.arange(5), 20)
    seed_labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])  # cluster 0 holds 4 seeds, 1 holds 3, 2 holds 1
    pulls = cluster_based(pool_labels, seed_labels, min_seeds=2, per_cluster=6)
    clusters = pool_labels[[pull.pool_index for pull in pulls]]
    assert sorted(np.unique(clusters).tolist()) == [0, 1] and np.bincount(clusters).tolist() == [6, 6]
    assert len(cluster_based(pool_labels, seed_labels, min_seeds=2, per_cluster=6, cap=8)) == 8
    assert cluster_based(pool_labels, seed_labels, min_seeds=4, per_cluster=6) == []


def test_many_exact_duplicates_and_float32_centroids():
    """Fewer distinct points than clusters (resampling then has less to re-fit than there are centroids)."""
    points = np.repeat(np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32), 50, axis=0)
    paths, centroids = hierarchical_kmeans(points, [Level(20, resampling_steps=2, sample_size=1)], seed=0)
    assert paths.shape == (400, 1) and centroids[0].shape == (20, 16) and centroids[0].dtype == np.float32
    assert kmeans(points, 5, seed=1)[0].dtype == np.float32


def test_non_finite_vectors_are_refused_with_their_count(monkeypatch):
    """One NaN vector used to make every k-means one cluster (its NaN centroid won every argmin); resident and
    streamed points now refuse it, saying how many vectors are not finite."""
    import curation.select.kmeans as kmeans_module

    points = unit(np.random.default_rng(0).normal(size=(200, 8)))
    points[7], points[9, 2] = np.nan, np.inf
    with pytest.raises(ValueError, match="2 of 200 vectors are not finite"):
        kmeans(points, 5, iterations=5, seed=1)
    monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 0)
    with pytest.raises(ValueError, match="2 of 200 vectors are not finite"):
        hierarchical_kmeans(points, [Level(5)], iterations=5)
    points[7], points[9, 2] = 0.0, 1.0
    assert len(np.unique(kmeans(points, 5, iterations=5, seed=1)[1])) == 5


def test_seeding_in_batches_matches_one_centre_at_a_time():
    """k-means++ one centre per round puts one seed in every one of 40 far-apart modes; so do batched rounds (the
    candidates' own k-means++ keeps two centres of a batch out of one mode), the same for the same seed, and after
    Lloyd they reach the same inertia."""
    rng = np.random.default_rng(3)
    modes = rng.normal(scale=100, size=(40, 8))
    points = (modes[rng.integers(0, 40, 4000)] + rng.normal(size=(4000, 8))).astype(np.float32)
    exact = kmeans_plus_plus(points, 40, np.random.default_rng(0), rounds=39)
    assert len({int(np.argmin(((modes - seed) ** 2).sum(axis=1))) for seed in exact}) == 40

    def inertia(centroids):
        return float(assign(points, kmeans(points, 40, iterations=10, init=centroids)[0])[1].sum())

    batched = kmeans_plus_plus(points, 40, np.random.default_rng(0), rounds=8)  # 5 centres per round
    assert len({int(np.argmin(((modes - seed) ** 2).sum(axis=1))) for seed in batched}) == 40
    np.testing.assert_array_equal(batched, kmeans_plus_plus(points, 40, np.random.default_rng(0), rounds=8))
    assert inertia(batched) <= 1.05 * inertia(exact)


def test_float16_storage_clusters_like_float32():
    """CUDA stores unit vectors as float16 (exercised here on the CPU): distances within float16 rounding, and
    k-means reaches the same inertia as in float32."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(30, 64))
    points = centres[rng.integers(0, 30, 3000)] + 0.3 * rng.normal(size=(3000, 64))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    half = Points.of(points, half=True)
    assert half.data.dtype == torch.float16 and Points.of(points).data.dtype == torch.float32
    full_centroids, _ = kmeans(points, 30, iterations=10, seed=0)
    labels, distances = assign(half, full_centroids)
    exact_labels, exact_distances = assign(points, full_centroids)
    np.testing.assert_allclose(distances, exact_distances, atol=5e-3)
    assert (labels == exact_labels).mean() > 0.99
    half_centroids, half_labels = kmeans(half, 30, iterations=10, seed=0)
    assert half_centroids.dtype == np.float32 and (assign(points, half_centroids)[0] == half_labels).mean() > 0.99
    assert assign(points, half_centroids)[1].sum() <= 1.01 * exact_distances.sum()


def test_cluster_retrieval_parts_share_one_pool_clustering(tmp_path, monkeypatch):
    """Two small seed sets asking for the same cluster count cluster the pool once (and a rerun not at all); each
    still pulls exactly the cluster its seeds fall in."""
    import curation.select.compose as compose_module

    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(6, 16)))
    pool = unit(np.repeat(centres, 40, axis=0) + 0.05 * rng.normal(size=(240, 16)))
    seeds_a = unit(centres[[0, 0, 0, 0, 1]] + 0.01 * rng.normal(size=(5, 16)))  # 4 seeds in mode 0, 1 in mode 1
    seeds_b = unit(centres[[2, 2, 2, 2]] + 0.01 * rng.normal(size=(4, 16)))
    vectors = np.concatenate([pool, seeds_a, seeds_b])
    sources = [{"pool"}] * 240 + [{"a"}] * 5 + [{"b"}] * 4
    ids = [f"{i:04d}" for i in range(len(vectors))]
    parts = [RetrievalPart(kind="retrieval", name=f"r{name}", seeds=[name], method="cluster", clusters=6, min_seeds=3,
                           per_cluster=100) for name in "ab"]  # fmt: skip
    stage = SelectStage(mode="compose", parts=parts)
    fits, real_kmeans = [], compose_module.kmeans
    monkeypatch.setattr(compose_module, "kmeans", lambda *args, **kw: fits.append(args[1]) or real_kmeans(*args, **kw))
    reasons, _ = compose(stage, ids, sources, vectors, workdir=tmp_path)
    pulled = {part.name: {int(i) for i, rs in reasons.items() if any(r["part"] == part.name for r in rs)}
              for part in parts}  # fmt: skip
    assert fits == [6] and len(list(tmp_path.glob("_pool-kmeans-6/*/centroids.npy"))) == 1
    assert pulled == {"ra": set(range(0, 40)), "rb": set(range(80, 120))}
    again, _ = compose(stage, ids, sources, vectors, workdir=tmp_path)
    assert fits == [6] and again == reasons  # the saved clustering is reused


def test_a_rerun_reuses_the_cache_only_for_the_same_pool(tmp_path):
    """The same pool: every saved k-means is reused. One image fewer (an opt-out filed before a resume): the pool
    k-means, the levels, their resampling and the split are computed again, as a fresh run would, and the stale
    ones are gone."""
    points, _ = long_tailed_toy(4)
    vectors = np.concatenate([points, np.ones((len(points), 1))], axis=1).astype(np.float32)
    stage = SelectStage(mode="compose", parts=[
        RetrievalPart(kind="retrieval", name="near", seeds=["seeds"], method="cluster", clusters=8, min_seeds=1),
        BalancedPart(kind="balanced", name="balanced", target=200, rule="closest",
                     levels=[LevelSpec(clusters=12, resampling_steps=1, split=3), LevelSpec(clusters=4)])])  # fmt: skip
    ids = [f"{i:05d}" for i in range(len(points))]
    sources = [{"seeds"} if i % 100 == 0 else {"pool"} for i in range(len(points))]
    first = compose(stage, ids, sources, vectors, workdir=tmp_path)
    saved = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.npy")}
    assert len(saved) == 1 + 3 + 2  # pool centroids; level 1 (k-means, resampling), level 2; the split's two
    assert compose(stage, ids, sources, vectors, workdir=tmp_path) == first
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.npy")} == saved  # reused

    keep = [i for i in range(len(points)) if i != 1]  # a pool image opted out
    fewer = [ids[i] for i in keep], [sources[i] for i in keep], vectors[keep]
    assert compose(stage, *fewer, workdir=tmp_path) == compose(stage, *fewer)
    now = list(tmp_path.rglob("*.npy"))
    assert len(now) == len(saved) and not set(now) & set(saved)  # all recomputed, in new folders


def test_points_past_the_budget_are_streamed_and_cluster_identically(float16_pool, monkeypatch):
    """The same hierarchy (resampling, split, closest assignment) whether the points sit on the device or are read
    from the memory-mapped file chunk by chunk; no read ever takes the whole matrix."""
    import curation.select.kmeans as kmeans_module

    monkeypatch.setattr(kmeans_module, "CHUNK_ROWS", 512)
    levels = [Level(40, resampling_steps=2, sample_size=5, split=2), Level(8, resampling_steps=2), Level(3)]
    resident = Points.of(float16_pool)
    assert isinstance(resident, Points)
    expected = hierarchical_kmeans(resident, levels, seed=2)

    monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 1 << 16)  # 64 KiB: far below 5,000 x 16 x 4 bytes
    streamed = Points.of(float16_pool)
    assert isinstance(streamed, kmeans_module.StreamedPoints) and len(streamed) == 5000
    reads, real_read = [], kmeans_module.StreamedPoints._read

    def counting_read(self, positions):
        chunk = real_read(self, positions)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(kmeans_module.StreamedPoints, "_read", counting_read)
    paths, centroids = hierarchical_kmeans(streamed, levels, seed=2)
    assert np.array_equal(paths, expected[0]) and all(np.array_equal(a, b) for a, b in zip(centroids, expected[1]))
    assert np.array_equal(assign(streamed, centroids[0])[0], assign(resident, centroids[0])[0])
    assert reads and max(reads) < len(float16_pool)  # chunks, k-means++ samples and clusters: never all of it


def test_a_row_subset_streams_like_its_copy(float16_pool, monkeypatch):
    import curation.select.kmeans as kmeans_module

    rows = np.random.default_rng(0).permutation(5000)[:1500]  # any order: positions follow the given rows
    resident = Points.of(np.asarray(float16_pool[rows], np.float32))
    monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 0)
    streamed = Points.of(float16_pool, rows=rows)
    assert np.array_equal(streamed.rows(np.arange(10)), resident.rows(np.arange(10)))
    first, second = kmeans(resident, 7, seed=3), kmeans(streamed, 7, seed=3)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_compose_streams_a_pool_that_will_not_fit(float16_pool, mixed_selection, monkeypatch):
    import curation.select.kmeans as kmeans_module

    stage, ids, sources = mixed_selection
    expected = compose(stage, ids, sources, float16_pool, workdir=None)
    monkeypatch.setattr(kmeans_module, "RESIDENT_BUDGET_BYTES", 1 << 16)
    assert same_selection(compose(stage, ids, sources, float16_pool, workdir=None), expected)


class CancelAfter(Progress):
    """A real Progress whose cancel is requested once `passes` Lloyd passes were reported."""

    def __init__(self, passes: int):
        super().__init__()
        self.passes = passes

    def _advance(self, name, done, rate, eta_s, extra):
        super()._advance(name, done, rate, eta_s, extra)
        if name.startswith("k-means") and done >= self.passes:
            self.cancel()


def test_k_means_report_every_pass_and_a_cancelled_hierarchy_resumes(float16_pool, mixed_selection, tmp_path):
    stage, ids, sources = mixed_selection
    levels = [Level(**level.model_dump()) for level in stage.parts[2].levels]
    total = hierarchy_passes(levels, stage.parts[2].iterations)
    assert total == 2 * 20 + 1 * 10
    progress = Progress()
    expected = compose(stage, ids, sources, float16_pool, progress=progress)
    bars = {bar["name"]: bar for bar in progress.snapshot()["stages"]}
    assert bars["k-means balanced"]["done"] == bars["k-means balanced"]["total"] == total
    assert bars["k-means pool (10 clusters)"]["done"] == 20 and bars["k-means balanced"]["unit"] == "pass"

    with pytest.raises(RunCancelled):  # stops inside level 2's k-means: level 1 and its resampling are saved
        compose(stage, ids, sources, float16_pool, workdir=tmp_path, progress=CancelAfter(35))
    saved = sorted(path.name for path in tmp_path.glob("balanced/*/*"))
    assert saved == ["level-1-step-0.npy", "level-1-step-1.npy"]
    resumed = Progress()
    assert same_selection(compose(stage, ids, sources, float16_pool, workdir=tmp_path, progress=resumed), expected)
    bars = {bar["name"]: bar for bar in resumed.snapshot()["stages"]}
    assert bars["k-means balanced"]["done"] == total  # the reused steps count as done


def test_group_positions_equals_selecting_each_label_by_comparison():
    """The one-sort grouping that cluster-based retrieval and balanced sampling use (selecting each label's
    positions by comparison is O(labels x points)) gives the same groups in the same order."""
    labels = np.random.default_rng(0).choice([3, 7, 8, 20, 41], 5_000)  # labels with gaps, in no order
    values, groups = group_positions(labels)
    assert values.tolist() == [3, 7, 8, 20, 41]
    assert [group.tolist() for group in groups] == [np.flatnonzero(labels == value).tolist() for value in values]
    assert group_positions(np.zeros(0, np.int64))[1] == []


def test_cluster_based_retrieval_and_balanced_sampling_over_many_clusters_stay_exact():
    pool_labels = np.random.default_rng(0).integers(0, 2_000, 200_000)
    pulls = cluster_based(pool_labels, np.repeat(np.arange(2_000), 2), min_seeds=1, per_cluster=5)
    assert np.bincount(pool_labels[[pull.pool_index for pull in pulls]]).tolist() == [5] * 2_000
    selected = hierarchical_sample(pool_labels[:, None], 10_000, seed=0)
    assert len(selected) == 10_000 and np.bincount(pool_labels[selected]).tolist() == [5] * 2_000


def test_sample_based_retrieval_caps_each_seed_dataset_and_names_it():
    """DINOv2 caps the images per seed dataset: a part with two seed datasets keeps each one's `cap` best images
    (the cap used to apply to their union), and every pull's reason names its seed dataset beside its seed image."""
    vectors = unit(np.random.default_rng(0).normal(size=(300, 8)))
    ids = [f"{i:04d}" for i in range(300)]
    sources = [{"in1k"} if i < 10 else {"flowers"} if i < 20 else {"pool"} for i in range(300)]
    part = RetrievalPart(kind="retrieval", name="near", seeds=["in1k", "flowers"], k=2, cap=5)
    reasons, details = compose(SelectStage(mode="compose", parts=[part]), ids, sources, vectors)
    kept = {"in1k": set(), "flowers": set()}
    for image, image_reasons in reasons.items():
        for reason in image_reasons:
            assert reason["seed_dataset"] in sources[int(reason["seed_image"])]
            kept[reason["seed_dataset"]].add(int(image))
    for dataset, seeds in (("in1k", range(0, 10)), ("flowers", range(10, 20))):
        scores = vectors[list(seeds)] @ vectors[20:].T
        pulled = {20 + int(p) for row in scores for p in np.argsort(-row)[:2]}
        best = sorted(pulled, key=lambda p: -scores[:, p - 20].max())[:5]
        assert kept[dataset] == set(best)
    assert details["near"]["images_per_seed_dataset"] == {"in1k": 5, "flowers": 5}


def test_cluster_based_retrieval_counts_seeds_and_caps_per_seed_dataset():
    """Each seed dataset's own seeds make a pool cluster eligible, and `cap` bounds each one's images: mode 2 holds
    two seeds of each dataset, more than `min_seeds` together but not within either (the union used to decide,
    and to share one cap). Every pull names its seed dataset and its cluster."""
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(6, 16)))
    pool = unit(np.repeat(centres, 40, axis=0) + 0.05 * rng.normal(size=(240, 16)))
    seeds = unit(centres[[0, 0, 0, 0, 2, 2, 1, 1, 1, 1, 2, 2]] + 0.01 * rng.normal(size=(12, 16)))
    vectors = np.concatenate([pool, seeds])
    ids = [f"{i:03d}" for i in range(len(vectors))]
    sources = [{"pool"}] * 240 + [{"a"}] * 6 + [{"b"}] * 6
    part = RetrievalPart(kind="retrieval", name="near", seeds=["a", "b"], method="cluster", clusters=6, min_seeds=3,
                         per_cluster=30, cap=25)  # fmt: skip
    reasons, details = compose(SelectStage(mode="compose", parts=[part]), ids, sources, vectors)
    pulled = {"a": set(), "b": set()}
    for image, image_reasons in reasons.items():
        for reason in image_reasons:
            pulled[reason["seed_dataset"]].add((int(image) // 40, reason["cluster"]))
    assert {mode for mode, _ in pulled["a"]} == {0} and {mode for mode, _ in pulled["b"]} == {1}
    assert len({cluster for _, cluster in pulled["a"] | pulled["b"]}) == 2
    assert details["near"]["images_per_seed_dataset"] == {"a": 25, "b": 25} and details["near"]["images"] == 50
