"""Per-step schedules: DINOv2's cosine decay after a linear warm-up, or DINOv3's constant value after it.

DINOv3 keeps lr, weight decay, teacher momentum and temperature constant after warm-up so a run has no planned
end and can be extended (its Gram phase starts whenever wanted). A schedule is a pure function of the step, so
a resumed run gets the same values without storing any scheduler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    kind: str  # cosine | constant
    value: float  # value after warm-up (cosine: its start)
    final: float  # cosine: value at total_steps; constant: ignored
    warmup_steps: int = 0
    warmup_from: float = 0.0
    total_steps: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "constant"):
            raise ValueError(f"schedule kind must be 'cosine' or 'constant', got {self.kind!r}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_from + (self.value - self.warmup_from) * step / self.warmup_steps
        if self.kind == "constant":
            return self.value
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final + 0.5 * (self.value - self.final) * (1 + math.cos(math.pi * progress))
