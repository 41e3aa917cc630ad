"""One objective per module: DINO (CLS), iBOT (masked patches), KoLeo (spread), Gram anchoring (patch geometry)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

Objective = TypeVar("Objective", bound=Callable[..., torch.Tensor])


def in_float32(objective: Objective) -> Objective:
    """Run an objective in float32 whatever autocast the training step is under. `.float()` alone is not enough:
    autocast casts matmul inputs back to bf16, whose 8-bit mantissa swamps the small differences these losses are
    made of (a Gram loss near its anchor is ~1e-7; KoLeo's nearest neighbours hang on cosine ties)."""

    @functools.wraps(objective)
    def run(*args, **kwargs):
        device = next((arg.device.type for arg in args if isinstance(arg, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            cast = [arg.float() if isinstance(arg, torch.Tensor) and arg.is_floating_point() else arg for arg in args]
            return objective(*cast, **kwargs)

    return run  # type: ignore[return-value]
