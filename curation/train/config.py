"""Training config: strict YAML (an unknown key is an error naming it) merged over the defaults below.

Defaults follow DINOv2/DINOv3 where they fit a small run; `configs/*.yaml` override them and every key there has
a comment. The resolved config is saved beside the checkpoints (`config.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError, model_validator
from pydantic_core import PydanticCustomError

from curation.config import Strict, _format_errors
from curation.errors import SpecError


class ModelConfig(Strict):
    preset: Literal["tiny", "small", "base"] = "small"
    patch_size: int = 16
    depth: int | None = None  # override the preset's depth (a shallower tiny model for CPU runs)
    registers: int = 4
    drop_path: float = 0.1  # stochastic depth, same rate in every block (DINOv2's uniform choice)
    layerscale: float = 1e-5
    rope_rescale: float = 2.0  # DINOv3 box jittering: joint coordinate rescale, log-uniform in [1/r, r]
    rope_jitter: float = 1.0  # per-axis rescale (1 = off)
    rope_shift: float = 0.0  # coordinate shift (0 = off)


class HeadConfig(Strict):
    prototypes: int = 65536
    ibot_prototypes: int = 65536  # the iBOT head is separate (DINOv2)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256


class CropConfig(Strict):
    global_size: int = 224
    local_size: int = 96
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    load_size: int = 256  # decoded square the crops are cut from
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class LossConfig(Strict):
    centering: Literal["sinkhorn", "ema"] = "sinkhorn"
    center_momentum: float = 0.9  # EMA centring only
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_from: float = 0.04
    teacher_temp_warmup_steps: int = 300  # 0.04 -> 0.07 over the first 30% of the run (DINOv2: 30 of 100 epochs)
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    mask_share: float = 0.5  # share of global crops that get an iBOT block mask
    mask_ratio: tuple[float, float] = (0.1, 0.5)


class GramConfig(Strict):
    enabled: bool = False
    start_step: int = 0  # the Gram phase begins here (DINOv3: after the main run, e.g. 1M iterations)
    refresh_every: int = 10000  # R: the frozen Gram teacher becomes the current EMA teacher every R steps
    resolution_scale: float = 2.0  # Gram teacher crops have this many times the global crop side
    weight: float = 2.0
    ramp_steps: int = 1000  # linear ramp of the weight from 0


class OptimConfig(Strict):
    schedule: Literal["cosine", "constant"] = "cosine"  # DINOv2 cosine decay, or DINOv3 constant after warm-up
    batch_size: int = 64  # per rank
    lr: float = 5e-4  # after warm-up, for a total batch of 256 (scaled linearly by total batch / 256, DINO)
    min_lr: float = 1e-6
    warmup_steps: int = 100  # linear lr warm-up over the first 10% of the run (DINOv2: 10 of 100 epochs)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    momentum: float = 0.992  # teacher EMA momentum
    momentum_end: float = 1.0
    layer_decay: float = 0.9
    clip_grad: float = 3.0
    betas: tuple[float, float] = (0.9, 0.999)


class DataConfig(Strict):
    shuffle_buffer: int = 1000
    homogeneous_share: float = 0.1  # DINOv3: 10% of batches from one composition part
    workers: int = 2  # dataloader worker processes per rank (0 = in the training process)


class RunConfig(Strict):
    steps: int = 1000  # total optimiser steps (cosine schedules end here)
    steps_per_epoch: int = 100  # an "epoch" is a fixed number of steps over the infinite stream
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the backbone (CUDA)
    export_name: str = "backbone"  # the exported teacher: OUT/export/NAME.json + .safetensors
    export_dtype: Literal["fp32", "fp16"] = "fp32"  # fp16 halves the committed weights' size


class TrainConfig(Strict):
    model: ModelConfig = ModelConfig()
    heads: HeadConfig = HeadConfig()
    crops: CropConfig = CropConfig()
    loss: LossConfig = LossConfig()
    gram: GramConfig = GramConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _warmups_end_within_the_run(self) -> TrainConfig:
        """A warm-up as long as the run would never reach the peak lr or the final teacher temperature."""
        steps, warmup, temp_warmup = self.run.steps, self.optim.warmup_steps, self.loss.teacher_temp_warmup_steps
        if warmup >= steps:
            raise PydanticCustomError("warmup_too_long", "optim.warmup_steps ({warmup}) must be less than run.steps "
                                      "({steps})", {"warmup": warmup, "steps": steps})  # fmt: skip
        if temp_warmup > steps:
            raise PydanticCustomError("warmup_too_long", "loss.teacher_temp_warmup_steps ({warmup}) must not exceed "
                                      "run.steps ({steps})", {"warmup": temp_warmup, "steps": steps})  # fmt: skip
        return self


def parse_train_config(data: dict[str, Any] | None, origin: str = "<train config>") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data or {})
    except ValidationError as error:
        raise SpecError(_format_errors(error, origin, "training config")) from None


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The YAML file (or the defaults when None), with `overrides` ({"run.steps": 10, ...}) applied on top."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SpecError(f"{path}: cannot read training config ({error})") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    return parse_train_config(data, str(path or "<defaults>"))
