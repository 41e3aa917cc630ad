"""The selection report (reports/selection.json and its plots) of a composition, from compose's own details."""

from __future__ import annotations

import json

import numpy as np

from curation.config import RetrievalPart, SelectStage
from curation.select.compose import compose
from curation.select.report import build_reports
from tests.select.conftest import unit


def report_of(parts, ids, sources, vectors):
    """(reasons, details, report numbers, report files) of composing `parts`."""
    reasons, details = compose(SelectStage(mode="compose", parts=parts), ids, sources, vectors)
    files = build_reports(details, reasons)
    return reasons, details, json.loads(files["reports/selection.json"]), files


def test_similarity_histogram_counts_every_pull_of_float16_vectors():
    """float16 unit vectors (as load_matrix hands them out) score a seed against its own copy up to ~1.0004; the
    histogram clips to [-1, 1], so it counts every pull (those over 1.0 used to fall past its last bin)."""
    pool = unit(np.random.default_rng(3).normal(size=(200, 16))).astype(np.float16)
    vectors = np.concatenate([pool, pool[:50]])  # 50 seed images, each a copy of a pool image
    ids = [f"{i:03d}" for i in range(250)]
    sources = [{"pool"}] * 200 + [{"seeds"}] * 50
    part = RetrievalPart(kind="retrieval", name="near", seeds=["seeds"], k=3)
    _, details, numbers, _ = report_of([part], ids, sources, vectors)
    similarities = np.array(details["near"]["similarities"])
    assert len(similarities) == 150 and (similarities > 1).any()
    near = numbers["parts"]["near"]
    assert near["pulls"] == 150 and sum(near["similarity_counts"]) == 150
    assert near["similarity_counts"][-1] == (similarities >= 0.95).sum()


def test_every_retrieval_part_reports_its_pulls_and_cluster_based_ones_their_clusters():
    """Cluster-based pulls have no similarity: their part used to be reported as 0 pulls with an empty histogram.
    Every retrieval part now reports its pulls and distinct images; a sample-based one its similarity histogram,
    a cluster-based one the pool clusters it drew from and the images from each (as its reasons name them)."""
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(6, 16)))
    pool = unit(np.repeat(centres, 40, axis=0) + 0.05 * rng.normal(size=(240, 16)))
    seeds = unit(centres[[0, 0, 1, 1, 2]] + 0.01 * rng.normal(size=(5, 16)))  # two seeds in modes 0 and 1, one in 2
    vectors = np.concatenate([pool, seeds])
    ids = [f"{i:03d}" for i in range(len(vectors))]
    sources = [{"pool"}] * 240 + [{"seeds"}] * 5
    parts = [RetrievalPart(kind="retrieval", name="near", seeds=["seeds"], method="cluster", clusters=6, min_seeds=1,
                           per_cluster=15),
             RetrievalPart(kind="retrieval", name="nearest", seeds=["seeds"], k=4)]  # fmt: skip
    reasons, _, numbers, files = report_of(parts, ids, sources, vectors)
    pulled = {part.name: [(image, r) for image, rs in reasons.items() for r in rs if r["part"] == part.name]
              for part in parts}  # fmt: skip

    near = numbers["parts"]["near"]
    assert near["method"] == "cluster" and near["pulls"] == near["images"] == len(pulled["near"]) == 30
    clusters = [r["cluster"] for _, r in pulled["near"]]
    assert near["clusters_used"] == 2 and near["clusters"] == sorted(set(clusters))
    assert near["images_per_cluster"] == [clusters.count(cluster) for cluster in near["clusters"]] == [15, 15]
    assert "similarity_counts" not in near and "reports/near-similarity.png" not in files
    assert "reports/near-clusters.png" in files and near["images_per_seed_dataset"] == {"seeds": 30}

    nearest = numbers["parts"]["nearest"]
    assert nearest["method"] == "sample" and nearest["pulls"] == len(pulled["nearest"]) == 20
    assert nearest["images"] == len({image for image, _ in pulled["nearest"]}) < 20  # seeds in one mode share some
    assert sum(nearest["similarity_counts"]) == 20 and "reports/nearest-similarity.png" in files
    assert "clusters" not in nearest
