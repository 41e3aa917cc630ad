"""Executors: every block runs exactly once (local and Ray alike), and a Ray worker that dies costs a retry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curation.config import ExecutionSettings
from curation.executors import LocalExecutor, RayExecutor, make_executor


def square_plus(block: int, offset: int) -> int:
    return block * block + offset


def die_once(block: int, marker_dir: str) -> int:
    """Kill the worker process the first time each block runs (as an OOM kill or node loss would)."""
    marker = Path(marker_dir) / f"attempt-{block}"
    if not marker.exists():
        marker.write_text("1")
        os._exit(1)
    return block


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_every_block_runs_once_beyond_the_in_flight_window(kind, request):
    if kind == "ray":
        request.getfixturevalue("ray_local")
    executor = LocalExecutor() if kind == "local" else RayExecutor()
    blocks = list(range(57))  # more than the Ray window (4 x CPUs), not a multiple of it
    results = list(executor.map(square_plus, blocks, 3))
    assert sorted(results) == [block * block + 3 for block in blocks]


def test_ray_retries_a_block_whose_worker_died(ray_local, tmp_path):
    executor = RayExecutor(max_retries=2)
    assert sorted(executor.map(die_once, [0, 1, 2], str(tmp_path))) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempt-0", "attempt-1", "attempt-2"]


def test_make_executor_by_setting(ray_local):
    assert isinstance(make_executor(ExecutionSettings(executor="local")), LocalExecutor)
    ray_executor = make_executor(ExecutionSettings(executor="ray"))
    assert isinstance(ray_executor, RayExecutor) and not ray_executor.started_here  # reuses the running instance
