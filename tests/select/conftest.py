"""Shared selection fixtures: a long-tailed pool as the pipeline hands it to selection."""

from __future__ import annotations

import numpy as np
import pytest


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
