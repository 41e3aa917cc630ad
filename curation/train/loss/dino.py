"""DINO's CLS objective: cross-entropy from the teacher's targets on the global views to the student's
predictions on every other view (DINO eq. 3), averaged over view pairs and samples."""

from __future__ import annotations

import torch

from curation.train.loss import in_float32


@in_float32
def dino_loss(student_logits: torch.Tensor, teacher_targets: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """student_logits [V_s, B, K] (global views first), teacher_targets [V_t, B, K]; same-view pairs skipped."""
    log_probs = torch.log_softmax(student_logits.float() / student_temp, dim=-1)
    total, pairs = student_logits.new_zeros((), dtype=torch.float32), 0
    for t, target in enumerate(teacher_targets):
        for s, log_prob in enumerate(log_probs):
            if s == t:
                continue
            total = total - (target * log_prob).sum(dim=-1).mean()
            pairs += 1
    return total / pairs
