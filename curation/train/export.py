"""The teacher backbone in the embed stage's format (curation-backbone/1, family `curation-vit`), so a trained
model can embed the next curation round: `stages.embed.model: bundled:OUT/export/NAME.json`.

The EMA teacher is exported, not the student: it is the better, smoother model (DINO sec. 5.1).
Preprocessing follows the usual evaluation recipe: resize the shortest side to crop / 0.875, centre crop.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from curation.config import EmbedStage
from curation.embed.backbone import export_backbone
from curation.embed.torch_models import Preprocess, TorchEmbedder, load_state_dict_file, load_strict, sha256_file
from curation.train.config import TrainConfig
from curation.train.meta_arch import SSLMetaArch, backbone_kwargs
from curation.train.models.vit import VisionTransformer

FAMILY = "curation-vit"


def export_teacher(meta: SSLMetaArch, config: TrainConfig, path: Path, lineage: dict[str, Any]) -> Path:
    """Write PATH.json + PATH.safetensors and PATH.lineage.json (the version it was trained on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = copy.deepcopy(meta.teacher.backbone).cpu()
    if config.run.export_dtype == "fp16":
        backbone = backbone.half()
    crop = config.crops.global_size
    preprocess = Preprocess(round(crop / 0.875), crop, tuple(config.crops.mean), tuple(config.crops.std), "bicubic")
    kwargs = {**backbone_kwargs(config), "drop_path": 0.0}
    name = f"vit-{config.model.preset}-p{config.model.patch_size}"
    exported = export_backbone(backbone, path, family=FAMILY, name=name, preprocess=preprocess, kwargs=kwargs)
    exported.with_suffix(".lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    return exported


def build_embedder(description: dict[str, Any], weights: Path, stage: EmbedStage, label: str) -> TorchEmbedder:
    """The embed stage's builder for family `curation-vit` (called from curation.embed.backbone)."""
    torch.manual_seed(0)
    model = VisionTransformer(**description["arch"]["kwargs"])
    load_strict(model, load_state_dict_file(weights), weights)
    pre = description["preprocess"]
    preprocess = Preprocess(pre["size"], pre["crop"], tuple(pre["mean"]), tuple(pre["std"]), pre["interpolation"])
    return TorchEmbedder(label, model, model, preprocess, sha256_file(weights), stage, arch=description["arch"])
