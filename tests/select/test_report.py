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
