"""Teacher targets: centred-and-sharpened softmax (DINO) or Sinkhorn-Knopp (SwAV; DINOv2/v3's default).

Both stop the teacher from collapsing onto one prototype: the EMA centre subtracts the running mean logit;
Sinkhorn-Knopp makes the batch's assignment matrix doubly normalised (each prototype gets an equal share).
Sums run over every rank, so the result does not depend on how the batch is split.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from curation.train.loss import in_float32


def all_reduce_sum(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
@in_float32
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """logits [B, K] (this rank's rows) -> [B, K] assignments; each row sums to 1 and, over all ranks' rows,
    each column sums to B_total / K (exactly so as iterations grow; 3 is DINOv2's choice)."""
    shift = all_reduce_sum(logits.float().max(), op="max")  # one shift for all ranks keeps the sums consistent
    q = torch.exp((logits.float() - shift) / temperature).t()  # [K, B]
    rows = torch.tensor(q.shape[1], device=q.device, dtype=q.dtype)
    total_samples = all_reduce_sum(rows.clone())
    prototypes = q.shape[0]
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1 / K
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1 / B
        q /= total_samples
    return (q * total_samples).t()


class Centering(nn.Module):
    """Turns teacher logits into target distributions; `mode` is 'sinkhorn' or 'ema' (EMA centre, momentum m)."""

    def __init__(self, prototypes: int, mode: str, momentum: float = 0.9):
        super().__init__()
        if mode not in ("sinkhorn", "ema"):
            raise ValueError(f"centering must be 'sinkhorn' or 'ema', got {mode!r}")
        self.mode, self.momentum = mode, momentum
        self.register_buffer("center", torch.zeros(1, prototypes))

    @torch.no_grad()
    def targets(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.mode == "sinkhorn":
            return sinkhorn_knopp(logits, temperature)
        return torch.softmax((logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        """EMA of the batch mean logit over all ranks (after the targets of this step were made)."""
        if self.mode != "ema":
            return
        count = all_reduce_sum(torch.tensor(float(logits.shape[0]), device=logits.device))
        mean = all_reduce_sum(logits.float().sum(dim=0, keepdim=True)) / count
        self.center.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
