"""In-process executor: the same stage functions, no Ray; for debugging and fast unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any


class LocalExecutor:
    name = "local"

    def map(self, fn: Callable[..., Any], blocks: Sequence[Any], *shared: Any) -> Iterator[Any]:
        for block in blocks:
            yield fn(block, *shared)

    def close(self) -> None:
        pass
