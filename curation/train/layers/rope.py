"""2-D rotary position embedding on normalised patch coordinates, with DINOv3's box jittering.

Why normalised coordinates: a patch's position is its centre in [-1, 1] whatever the grid size, so global
crops, local crops and the Gram teacher's high-resolution crops share one positional code and no position
table is ever interpolated. During training DINOv3 perturbs the coordinates (a random joint rescale, a
per-axis jitter and a shift) so the model does not tie features to absolute scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Rope2D(nn.Module):
    """Angles for a grid of patches; half of each head's channels rotate with y, half with x."""

    def __init__(self, head_dim: int, *, base: float = 100.0, rescale: float = 2.0, jitter: float = 1.0,
                 shift: float = 0.0):  # fmt: skip
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.rescale, self.jitter, self.shift = rescale, jitter, shift
        frequencies = head_dim // 4
        periods = base ** (torch.arange(frequencies, dtype=torch.float32) / frequencies)
        self.register_buffer("periods", periods, persistent=False)

    def coordinates(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """[height * width, 2] patch centres (y, x) in [-1, 1], box-jittered while training."""
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
        if self.training:
            if self.shift > 0:
                coords = coords + torch.empty(2, device=device).uniform_(-self.shift, self.shift)
            if self.jitter > 1:
                log_jitter = math.log(self.jitter)
                coords = coords * torch.empty(2, device=device).uniform_(-log_jitter, log_jitter).exp()
            if self.rescale > 1:
                log_rescale = math.log(self.rescale)
                coords = coords * torch.empty(1, device=device).uniform_(-log_rescale, log_rescale).exp()
        return coords

    def forward(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each [height * width, head_dim], for `apply_rope`."""
        coords = self.coordinates(height, width, device)
        angles = 2 * math.pi * coords[:, :, None] / self.periods  # [N, 2, head_dim / 4]
        angles = angles.flatten(1).repeat(1, 2)  # [N, head_dim]: pairs (i, i + head_dim / 2) share an angle
        return angles.sin(), angles.cos()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, prefix: int) -> torch.Tensor:
    """Rotate the patch tokens of x [B, heads, prefix + N, head_dim]; the CLS and register tokens stay put."""
    head, patches = x[:, :, :prefix], x[:, :, prefix:]
    rotated = patches * cos.to(x.dtype) + rotate_half(patches) * sin.to(x.dtype)
    return torch.cat([head, rotated], dim=2)
