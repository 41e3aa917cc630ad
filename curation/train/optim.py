"""AdamW parameter groups: layer-wise lr decay, and no weight decay on norms, biases, LayerScale and tokens.

Layer-wise decay (BEiT, DINOv2) gives early blocks smaller steps (lr * decay ** (depth + 1 - layer)); decaying
norms, biases or LayerScale gains towards zero only hurts, so they get none.
"""

from __future__ import annotations

import torch
from torch import nn


def layer_id(name: str, depth: int) -> int:
    """0 for the embedding and tokens, i + 1 for block i, depth + 1 for the final norm and the heads."""
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith("backbone.") and not name.startswith("backbone.norm."):
        return 0
    return depth + 1


def decays(name: str, parameter: nn.Parameter) -> bool:
    return parameter.ndim > 1 and not name.endswith("_token") and not name.endswith("_tokens") and ".ls" not in name


def param_groups(model: nn.Module, depth: int, layer_decay: float) -> list[dict]:
    """One group per (layer, decays); each carries lr_scale and wd_scale for the per-step update."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer, with_decay = layer_id(name, depth), decays(name, parameter)
        group = groups.setdefault((layer, with_decay), {
            "params": [], "names": [], "lr_scale": layer_decay ** (depth + 1 - layer),
            "wd_scale": 1.0 if with_decay else 0.0})  # fmt: skip
        group["params"].append(parameter)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, depth: int, layer_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, depth, layer_decay), lr=0.0, weight_decay=0.0, betas=betas)


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
        group["weight_decay"] = weight_decay * group["wd_scale"]
