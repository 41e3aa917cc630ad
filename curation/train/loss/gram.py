"""Gram anchoring (DINOv3 sec. 4): keep the student's patch-to-patch similarity structure close to that of an
earlier, frozen teacher, which stops dense features from degrading in long runs. Only the Gram matrix is
matched, so the features may still rotate: the loss is invariant to orthogonal maps of the feature space."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from curation.train.loss import in_float32


def gram_matrix(patches: torch.Tensor) -> torch.Tensor:
    """patches [B, N, D] -> [B, N, N] cosine similarities."""
    x = F.normalize(patches.float(), dim=-1)
    return x @ x.transpose(1, 2)


@in_float32
def gram_loss(student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the per-image patch Gram matrices."""
    return F.mse_loss(gram_matrix(student_patches), gram_matrix(teacher_patches))


def downsample_patches(patches: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """The Gram teacher sees higher-resolution crops; bring its patch grid to the student's (bicubic, DINOv3)."""
    batch, _, dim = patches.shape
    image = patches.transpose(1, 2).reshape(batch, dim, *grid).float()
    resized = F.interpolate(image, size=target, mode="bicubic", align_corners=False, antialias=True)
    return resized.flatten(2).transpose(1, 2)
