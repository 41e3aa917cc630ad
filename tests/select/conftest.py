"""Shared selection fixtures: a long-tailed pool as the pipeline hands it to selection."""

from __future__ import annotations

import numpy as np
import pytest

from curation.config import BalancedPart, LevelSpec, RetrievalPart, SelectStage


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def float16_pool(tmp_path):
    """5,000 long-tailed 16-d unit vectors in a float16 memory-mapped file, as load_matrix hands them out."""
    rng = np.random.default_rng(5)
    centres = unit(rng.normal(size=(12, 16)))
    sizes = np.maximum(20, (2400 / np.arange(1, 13) ** 1.2).astype(int))
    points = np.concatenate([centres[i] + 0.15 * rng.normal(size=(n, 16)) for i, n in enumerate(sizes)])[:5000]
    matrix = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float16, shape=(len(points), 16))
    matrix[:] = unit(points)
    matrix.flush()
    return np.load(tmp_path / "pool.npy", mmap_mode="r")


@pytest.fixture
def mixed_selection() -> tuple[SelectStage, list[str], list[set[str]]]:
    """(stage, image ids, sources) for `float16_pool`: cluster- and sample-based retrieval by every 500th image,
    and a balanced part with resampling."""
    stage = SelectStage(mode="compose", parts=[
        RetrievalPart(kind="retrieval", name="near", seeds=["seeds"], method="cluster", clusters=10, min_seeds=1),
        RetrievalPart(kind="retrieval", name="nearest", seeds=["seeds"], method="sample", k=8),
        BalancedPart(kind="balanced", name="balanced", target=300, rule="closest",
                     levels=[LevelSpec(clusters=30, resampling_steps=1), LevelSpec(clusters=5)])])  # fmt: skip
    ids = [f"{i:05d}" for i in range(5000)]
    return stage, ids, [{"seeds"} if i % 500 == 0 else {"pool"} for i in range(5000)]


def same_selection(result, expected) -> bool:
    """Whether two compose results agree, cosines to 4 decimals: FAISS and a torch scan sum in different orders
    (they agree to ~1e-6)."""

    def rounded(reasons, details):
        return ({image: [{**r, "similarity": round(r["similarity"], 4)} if "similarity" in r else r for r in rs]
                 for image, rs in reasons.items()}, {name: part for name, part in details.items()
                                                     if part["kind"] != "retrieval"})  # fmt: skip

    near = np.allclose(result[1]["nearest"]["similarities"], expected[1]["nearest"]["similarities"], atol=1e-5)
    return rounded(*result) == rounded(*expected) and near
