"""The backbone: a ViT with 2-D RoPE, register tokens, LayerScale and stochastic depth (DINOv2/DINOv3).

`forward(images)` returns the normalised CLS token (what the embed stage stores); `forward_features` returns
CLS, registers and patch tokens for the training objectives. Masked patches (iBOT) are replaced by a learnable
mask token before the blocks. Any image side divisible by the patch size works: positions come from RoPE.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from curation.train.layers.block import Block
from curation.train.layers.rope import Rope2D

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "heads": 12},
}


class VisionTransformer(nn.Module):
    def __init__(self, *, embed_dim: int, depth: int, heads: int, patch_size: int = 16, registers: int = 4,
                 mlp_ratio: float = 4.0, layerscale: float = 1e-5, drop_path: float = 0.0, rope_base: float = 100.0,
                 rope_rescale: float = 2.0, rope_jitter: float = 1.0, rope_shift: float = 0.0):  # fmt: skip
        super().__init__()
        self.embed_dim, self.patch_size, self.registers = embed_dim, patch_size, registers
        self.prefix = 1 + registers  # tokens before the patches: CLS, then registers
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.rope = Rope2D(embed_dim // heads, base=rope_base, rescale=rope_rescale, jitter=rope_jitter,
                           shift=rope_shift)  # fmt: skip
        self.blocks = nn.ModuleList(
            Block(embed_dim, heads, mlp_ratio=mlp_ratio, layerscale=layerscale, drop_path=drop_path)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.register_tokens, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward_features(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, Any]:
        """images [B, 3, H, W]; masks [B, N] bool (True = replaced by the mask token) or None."""
        patches = self.patch_embed(images)
        height, width = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)
        if masks is not None:
            patches = torch.where(masks[..., None], self.mask_token.to(patches.dtype), patches)
        batch = patches.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1), patches], 1)
        rope = self.rope(height, width, images.device)
        for block in self.blocks:
            x = block(x, rope, self.prefix)
        x = self.norm(x)
        return {"cls": x[:, 0], "registers": x[:, 1 : self.prefix], "patches": x[:, self.prefix :],
                "grid": (height, width)}  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)["cls"]


def vit_kwargs(preset: str, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of a preset with overrides; these are what an exported backbone records."""
    if preset not in PRESETS:
        raise ValueError(f"unknown ViT preset {preset!r}; known: {', '.join(PRESETS)}")
    return {**PRESETS[preset], **{key: value for key, value in overrides.items() if value is not None}}
