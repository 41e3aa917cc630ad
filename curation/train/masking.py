"""iBOT block masks: rectangles of patches (BEiT's blockwise masking) on half of the global crops, with mask
ratios spread over [0.1, 0.5] (DINOv2), so the student must infer whole regions, not isolated patches."""

from __future__ import annotations

import math

import torch


def block_mask(height: int, width: int, ratio: float, generator: torch.Generator, min_patches: int = 4) -> torch.Tensor:
    """[height * width] bool mask with about `ratio` of the patches set, as a union of random rectangles.

    A rectangle counts only if the patches it newly masks fit in what is still missing (BEiT, DINOv2), so the
    mask never exceeds `ratio`; a rectangle's area is at least `min_patches`, but never more than is missing."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    target = round(ratio * height * width)
    for _ in range(100):  # enough tries to reach the target; a crowded grid stops adding
        missing = target - int(mask.sum())
        if missing <= 0:
            break
        area = float(torch.empty(1).uniform_(min(min_patches, missing), missing, generator=generator))
        log_aspect = float(torch.empty(1).uniform_(math.log(0.3), math.log(1 / 0.3), generator=generator))
        h = max(1, min(height, round(math.sqrt(area * math.exp(log_aspect)))))
        w = max(1, min(width, round(math.sqrt(area / math.exp(log_aspect)))))
        top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        if int((~mask[top : top + h, left : left + w]).sum()) <= missing:
            mask[top : top + h, left : left + w] = True
    return mask.flatten()


def masks_for_crops(crops: int, height: int, width: int, generator: torch.Generator, *, share: float = 0.5,
                    ratio_min: float = 0.1, ratio_max: float = 0.5) -> torch.Tensor:  # fmt: skip
    """[crops, height * width] bool: `share` of the crops (at least one) masked, ratios evenly spread."""
    masked = max(1, round(share * crops))
    ratios = torch.linspace(ratio_min, ratio_max, masked).tolist()
    masks = torch.zeros(crops, height * width, dtype=torch.bool)
    chosen = torch.randperm(crops, generator=generator)[:masked]
    for index, ratio in zip(chosen.tolist(), ratios):
        masks[index] = block_mask(height, width, ratio, generator)
        if not masks[index].any():
            masks[index, int(torch.randint(0, height * width, (1,), generator=generator))] = True
    return masks
