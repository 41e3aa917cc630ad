"""Student, EMA teacher, optional frozen Gram teacher, and the objectives that tie them (DINOv2 sec. 4,
DINOv3 sec. 4): `losses()` runs one forward of everything for a batch of views, `update_teacher()` the EMA.

The student's backbone and both heads are one module (`StudentNetwork`) with one forward per step, so DDP sees
a single forward/backward pair. The teacher is a copy updated by EMA, never by gradients; it runs in eval
mode (no stochastic depth, no RoPE jitter) on the unmasked global crops.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from curation.train.config import TrainConfig
from curation.train.loss.centering import Centering, all_reduce_sum
from curation.train.loss.dino import dino_loss
from curation.train.loss.gram import downsample_patches, gram_loss
from curation.train.loss.ibot import ibot_loss
from curation.train.loss.koleo import koleo_loss
from curation.train.models.heads import DINOHead
from curation.train.models.vit import VisionTransformer, vit_kwargs


def backbone_kwargs(config: TrainConfig) -> dict:
    m = config.model
    return vit_kwargs(m.preset, patch_size=m.patch_size, depth=m.depth, registers=m.registers,
                      drop_path=m.drop_path, layerscale=m.layerscale, rope_rescale=m.rope_rescale,
                      rope_jitter=m.rope_jitter, rope_shift=m.rope_shift)  # fmt: skip


class StudentNetwork(nn.Module):
    def __init__(self, config: TrainConfig):
        super().__init__()
        self.backbone = VisionTransformer(**backbone_kwargs(config))
        dim, heads = self.backbone.embed_dim, config.heads
        self.dino_head = DINOHead(dim, heads.prototypes, hidden_dim=heads.hidden_dim,
                                  bottleneck_dim=heads.bottleneck_dim)  # fmt: skip
        self.ibot_head = DINOHead(dim, heads.ibot_prototypes, hidden_dim=heads.hidden_dim,
                                  bottleneck_dim=heads.bottleneck_dim)  # fmt: skip

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None,
                masks: torch.Tensor | None) -> dict:  # fmt: skip
        """Backbone features and head logits; iBOT logits only for the masked patches (masks[masks] order)."""
        features = self.backbone.forward_features(global_crops, masks)
        out = {"cls": features["cls"], "patches": features["patches"], "grid": features["grid"],
               "global_logits": self.dino_head(features["cls"])}  # fmt: skip
        if local_crops is not None:
            out["local_logits"] = self.dino_head(self.backbone.forward_features(local_crops)["cls"])
        if masks is not None:
            out["ibot_logits"] = self.ibot_head(features["patches"][masks])
        return out


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, float]  # each objective's value (unweighted) and the collapse monitors


class SSLMetaArch(nn.Module):
    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        self.student = StudentNetwork(config)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.dino_centering = Centering(config.heads.prototypes, config.loss.centering, config.loss.center_momentum)
        self.ibot_centering = Centering(config.heads.ibot_prototypes, config.loss.centering,
                                        config.loss.center_momentum)  # fmt: skip
        self.gram_teacher: VisionTransformer | None = None

    def train(self, mode: bool = True) -> SSLMetaArch:
        super().train(mode)
        self.teacher.eval()
        if self.gram_teacher is not None:
            self.gram_teacher.eval()
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        student, teacher = list(self.student.parameters()), list(self.teacher.parameters())
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1 - momentum)

    @torch.no_grad()
    def refresh_gram_teacher(self) -> None:
        """The Gram teacher becomes a frozen copy of the current EMA teacher's backbone."""
        self.gram_teacher = copy.deepcopy(self.teacher.backbone).eval().requires_grad_(False)

    def losses(self, views: dict, masks: torch.Tensor, teacher_temp: float, gram_weight: float,
               student_forward=None) -> StepOutput:  # fmt: skip
        """views from MultiCrop (view-major), masks [2B, N] for the global crops. `student_forward` is the
        (DDP-wrapped) student; the plain one by default."""
        cfg = self.config.loss
        global_crops, local_crops = views["global"], views.get("local")
        batch = global_crops.shape[0] // 2
        # `is None`, not `or`: a torch.compile'd module has no truth value (its __len__ raises)
        student = (self.student if student_forward is None else student_forward)(global_crops, local_crops, masks)
        with torch.no_grad():
            teacher_features = self.teacher.backbone.forward_features(global_crops)
            teacher_logits = self.teacher.dino_head(teacher_features["cls"])
            teacher_targets = self.dino_centering.targets(teacher_logits, teacher_temp)
            teacher_patch_logits = self.teacher.ibot_head(teacher_features["patches"][masks])
            teacher_patch_targets = self.ibot_centering.targets(teacher_patch_logits, teacher_temp)
        student_logits = [student["global_logits"]]
        if local_crops is not None:
            student_logits.append(student["local_logits"])
        student_logits = torch.cat(student_logits).unflatten(0, (-1, batch))
        dino = dino_loss(student_logits, teacher_targets.unflatten(0, (2, batch)), cfg.student_temp)
        ibot = ibot_loss(student["ibot_logits"], teacher_patch_targets, masks, cfg.student_temp)
        koleo = sum(koleo_loss(view) for view in student["cls"].unflatten(0, (2, batch)))  # summed (DINOv2)
        total = cfg.dino_weight * dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo
        parts = {"dino": dino.item(), "ibot": ibot.item(), "koleo": koleo.item()}
        if self.gram_teacher is not None and gram_weight > 0:
            with torch.no_grad():
                hires = self.gram_teacher.forward_features(views["global_hires"])
                target = downsample_patches(hires["patches"], hires["grid"], student["grid"])
            gram = gram_loss(student["patches"], target)
            total = total + gram_weight * gram
            parts["gram"] = gram.item()
        with torch.no_grad():
            self.dino_centering.update(teacher_logits)
            self.ibot_centering.update(teacher_patch_logits)
            parts.update(collapse_monitors(teacher_targets, teacher_features["cls"]))
        return StepOutput(total, parts)


@torch.no_grad()
def collapse_monitors(teacher_targets: torch.Tensor, teacher_cls: torch.Tensor) -> dict[str, float]:
    """Teacher entropy (near 0: one prototype wins; near log K: uniform) and the std of the normalised teacher
    CLS features over the batch (near 0: every image maps to the same point), both averaged over ranks."""
    entropy = -(teacher_targets * teacher_targets.clamp(min=1e-12).log()).sum(dim=-1).mean()
    std = torch.nn.functional.normalize(teacher_cls.float(), dim=-1).std(dim=0).mean()
    values = all_reduce_sum(torch.stack([entropy, std]).float())
    world = all_reduce_sum(torch.ones((), device=values.device))
    entropy, std = (values / world).tolist()
    return {"teacher_entropy": entropy, "feature_std": std}
