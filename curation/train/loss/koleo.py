"""KoLeo (Sablayrolles et al. 2019, DINOv2): -mean log distance to the nearest neighbour in the batch, which
spreads the CLS features uniformly. A zero distance (the same image twice) would give -log 0: eps guards it,
and the batch builder never puts an image twice in one batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from curation.train.loss import in_float32


@in_float32
def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """features [B, D] (B >= 2); normalised here."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    similarity = x @ x.t()
    similarity.fill_diagonal_(-2.0)  # never one's own neighbour
    nearest = similarity.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()
