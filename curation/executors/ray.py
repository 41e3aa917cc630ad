"""Ray executor: one Ray task per block, retried by Ray when its worker dies; results stream back as they finish.

Ray is started in-process when no address is given (the embedded default) or joined at `address`
("auto", "ray://head:10001"). A Ray instance that is already running in this process is reused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any


class RayExecutor:
    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None, max_retries: int = 3):
        import ray

        self._ray = ray
        self.max_retries = max_retries
        self.started_here = False
        if not ray.is_initialized():
            if address is None:
                # A private, single-user instance on this machine: no token needed (Ray >= 2.60 defaults it on).
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                address=address,
                num_cpus=num_cpus if address is None else None,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=True,
                configure_logging=True,
            )
            self.started_here = True

    def resources(self) -> tuple[float, float]:
        """(CPUs, GPUs) of the cluster."""
        total = self._ray.cluster_resources()
        return float(total.get("CPU", 1)), float(total.get("GPU", 0))

    def map(self, fn: Callable[..., Any], blocks: Sequence[Any], *shared: Any) -> Iterator[Any]:
        ray = self._ray
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(fn)
        shared_refs = [ray.put(item) for item in shared]
        window = max(2, 4 * int(ray.cluster_resources().get("CPU", 1)))  # bounded in-flight tasks
        queue = iter(blocks)
        pending = [remote.remote(block, *shared_refs) for block in islice(queue, window)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            pending.extend(remote.remote(block, *shared_refs) for block in islice(queue, 1))
            yield ray.get(done[0])

    def map_actors(self, cls: type, blocks: Sequence[Any], *init: Any, actors: int, num_cpus: float = 1,
                   num_gpus: float = 0) -> Iterator[Any]:  # fmt: skip
        """A pool of `actors` instances of `cls(*init)` (one heavy set-up each) fed blocks, two in flight per actor.

        An actor that dies is restarted by Ray and its in-flight calls are retried (`max_retries` times).
        """
        ray = self._ray
        pool = self.start_actors(cls, actors, *init, num_cpus=num_cpus, num_gpus=num_gpus)
        queue = iter(blocks)
        owner = {}
        for actor in pool:
            for block in islice(queue, 2):
                owner[actor.__call__.remote(block)] = actor
        try:
            while owner:
                done, _ = ray.wait(list(owner), num_returns=1)
                actor = owner.pop(done[0])
                for block in islice(queue, 1):
                    owner[actor.__call__.remote(block)] = actor
                yield ray.get(done[0])
        finally:
            self.stop_actors(pool)

    def start_actors(self, cls: type, count: int, *init: Any, num_cpus: float = 1, num_gpus: float = 0,
                     spread: bool = False) -> list:  # fmt: skip
        """`count` actors `cls(*init)` (`spread`: over as many nodes as Ray can); one that dies is restarted by
        Ray (re-running `cls(*init)`) and its in-flight calls are retried, `max_retries` times."""
        remote_cls = self._ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=self.max_retries,
                                      max_task_retries=self.max_retries)(cls)  # fmt: skip
        if spread:
            remote_cls = remote_cls.options(scheduling_strategy="SPREAD")
        return [remote_cls.remote(*init) for _ in range(count)]  # by value: a restarted actor can rebuild itself

    def stop_actors(self, actors: list) -> None:
        for actor in actors:
            self._ray.kill(actor)

    def close(self) -> None:
        if self.started_here:
            self._ray.shutdown()
