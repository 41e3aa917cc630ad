"""A run's progress: terminal bars for `curate run`, live per-stage counters for the service, and cancellation.

One object travels through the pipeline. Each stage reports through it (`stage()` for steps without a count,
`bar()` for counted ones); the service reads `snapshot()` from another thread while the run works, and a cancel
request takes effect at the run's next report, so a cancelled run stops between two units of work and can be
resumed like a killed one.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from tqdm import tqdm

from curation.errors import RunCancelled


class Progress:
    def __init__(self, *, show: bool = False):
        self.show = show
        self.run_id: str | None = None
        self.current: str | None = None
        self._stages: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def check(self) -> None:
        """Raise RunCancelled once a cancel was requested (called at every report)."""
        if self._cancel.is_set():
            raise RunCancelled(f"run {self.run_id} cancelled on request")

    def begin_run(self, run_id: str) -> None:
        self.run_id = run_id

    def stage(self, name: str) -> None:
        """Mark the start of a stage that has no count of its own (e.g. selection)."""
        self.check()
        with self._lock:
            self.current = name
            self._stages.setdefault(name, {"started_at": time.time()})

    def bar(self, name: str, *, total: int, initial: int = 0, unit: str) -> Bar:
        self.stage(name)
        with self._lock:
            self._stages[name].update(total=total, done=initial, unit=unit, rate=None, eta_s=None)
        return Bar(self, name, total, initial, unit)

    def _advance(self, name: str, done: int, rate: float | None, eta_s: float | None, extra: dict) -> None:
        with self._lock:
            self._stages[name].update(done=done, rate=rate, eta_s=eta_s, **extra)

    def snapshot(self) -> dict[str, Any]:
        """{run_id, current, stages: [{name, done, total, unit, rate, eta_s, ...}]} (a copy; safe across threads)."""
        with self._lock:
            stages = [{"name": name, **values} for name, values in self._stages.items()]
        return {"run_id": self.run_id, "current": self.current, "stages": stages}


LOG_INTERVAL_S = 30.0  # bar redraws when stderr is a log file, not a terminal: a line every 30 s, not 10 a second


class Bar:
    """A counted stage: draws a tqdm bar when the Progress shows, and keeps rate and ETA for the service."""

    def __init__(self, progress: Progress, name: str, total: int, initial: int, unit: str):
        self.progress, self.name, self.total, self.initial = progress, name, total, initial
        self.done = initial
        self.started = time.perf_counter()
        self._tqdm = tqdm(total=total, initial=initial, desc=name, unit=unit, disable=not progress.show,
                          dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else LOG_INTERVAL_S)  # fmt: skip

    def update(self, count: int, **extra: Any) -> None:
        self.done += count
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else None
        eta_s = (self.total - self.done) / rate if rate else None
        if extra:
            self._tqdm.set_postfix(extra, refresh=False)
        self._tqdm.update(count)
        self.progress._advance(self.name, self.done, rate and round(rate, 2), eta_s and round(eta_s, 1), extra)
        self.progress.check()

    def close(self) -> None:
        self._tqdm.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
