"""In-process executor: the same stage functions, no Ray; for debugging and fast unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any


class LocalExecutor:
    name = "local"

    def resources(self) -> tuple[float, float]:
        """(CPUs, GPUs) that blocks may use: one process, whatever torch sees."""
        try:
            import torch

            gpus = float(torch.cuda.device_count())
        except ImportError:
            gpus = 0.0
        return 1.0, gpus

    def map(self, fn: Callable[..., Any], blocks: Sequence[Any], *shared: Any) -> Iterator[Any]:
        for block in blocks:
            yield fn(block, *shared)

    def map_actors(self, cls: type, blocks: Sequence[Any], *init: Any, actors: int = 1, num_cpus: float = 1,
                   num_gpus: float = 0) -> Iterator[Any]:  # fmt: skip
        """One instance (one model load), called on every block in turn."""
        worker = cls(*init)
        for block in blocks:
            yield worker(block)

    def close(self) -> None:
        pass
