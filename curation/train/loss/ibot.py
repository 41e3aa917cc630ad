"""iBOT's masked-patch objective: the student, seeing mask tokens, predicts the teacher's target for each
masked patch (which saw the real patch). Each image weighs the same whatever its number of masked patches."""

from __future__ import annotations

import torch

from curation.train.loss import in_float32


@in_float32
def ibot_loss(student_logits: torch.Tensor, teacher_targets: torch.Tensor, masks: torch.Tensor,
              student_temp: float = 0.1) -> torch.Tensor:  # fmt: skip
    """student_logits, teacher_targets [M, K] for the M masked patches (in `masks[masks]` order);
    masks [B, N] bool. Mean over images with a mask of the mean over their masked patches."""
    per_patch = -(teacher_targets * torch.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)
    masked_per_image = masks.sum(dim=1)
    weights = (1.0 / masked_per_image.clamp(min=1)).repeat_interleave(masked_per_image)
    return (per_patch * weights).sum() / (masked_per_image > 0).sum().clamp(min=1)
