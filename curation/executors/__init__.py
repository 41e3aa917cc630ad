"""Where blocks run. Stage code is a plain function; an executor maps it over blocks and yields summaries.

Both executors have the same contract: `map(fn, blocks, *shared)` calls `fn(block, *shared)` for every block
and yields each result as it completes (in completion order). `shared` objects are sent to workers once.
"""

from __future__ import annotations

from curation.config import ExecutionSettings
from curation.executors.local import LocalExecutor
from curation.executors.ray import RayExecutor


def make_executor(settings: ExecutionSettings, *, ray_address: str | None = None) -> LocalExecutor | RayExecutor:
    if settings.executor == "local":
        return LocalExecutor()
    return RayExecutor(
        address=ray_address or settings.ray_address,
        num_cpus=settings.num_cpus,
        max_retries=settings.max_retries,
    )
