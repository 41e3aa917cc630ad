"""Training config: strict YAML (an unknown key is an error naming it) merged over the defaults below.

Defaults follow DINOv2/DINOv3 where they fit a small run; `configs/*.yaml` override them and every key there has
a comment. The resolved config is saved beside the checkpoints (`config.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from curation.config import Strict, _format_errors
from curation.errors import SpecError

# Ranges checked up front: a zero count divides by zero mid-run, a zero batch size silently takes the whole buffer.
Count = Annotated[int, Field(ge=1)]  # of steps, images, prototypes, ...
CountOrZero = Annotated[int, Field(ge=0)]  # a step number, or a count that may be none (warm-up, workers)
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]  # a share (of crops, batches, patches, image area) or a momentum
Beta = Annotated[float, Field(ge=0, lt=1)]  # an AdamW moment decay


class ModelConfig(Strict):
    preset: Literal["tiny", "small", "base"] = "small"
    patch_size: Count = 16
    depth: Count | None = None  # override the preset's depth (a shallower tiny model for CPU runs)
    registers: CountOrZero = 4
    drop_path: float = Field(0.1, ge=0, lt=1)  # stochastic depth, same rate in every block (DINOv2's uniform choice)
    layerscale: Positive = 1e-5
    rope_rescale: float = Field(2.0, ge=1)  # DINOv3 box jittering: joint coordinate rescale, log-uniform in [1/r, r]
    rope_jitter: float = Field(1.0, ge=1)  # per-axis rescale (1 = off)
    rope_shift: NonNegative = 0.0  # coordinate shift (0 = off)


class HeadConfig(Strict):
    prototypes: Count = 65536
    ibot_prototypes: Count = 65536  # the iBOT head is separate (DINOv2)
    hidden_dim: Count = 2048
    bottleneck_dim: Count = 256


class CropConfig(Strict):
    global_size: Count = 224
    local_size: Count = 96
    local_crops: CountOrZero = 8
    global_scale: tuple[Fraction, Fraction] = (0.32, 1.0)
    local_scale: tuple[Fraction, Fraction] = (0.05, 0.32)
    load_size: Count = 256  # decoded square the crops are cut from
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[Positive, Positive, Positive] = (0.229, 0.224, 0.225)


class LossConfig(Strict):
    centering: Literal["sinkhorn", "ema"] = "sinkhorn"
    center_momentum: Fraction = 0.9  # EMA centring only
    student_temp: Positive = 0.1
    teacher_temp: Positive = 0.07
    teacher_temp_from: Positive = 0.04
    teacher_temp_warmup_steps: CountOrZero = 300  # 0.04 -> 0.07 over 30% of the run (DINOv2: 30 of 100 epochs)
    dino_weight: NonNegative = 1.0
    ibot_weight: NonNegative = 1.0
    koleo_weight: NonNegative = 0.1
    mask_share: Fraction = 0.5  # share of global crops that get an iBOT block mask
    mask_ratio: tuple[Fraction, Fraction] = (0.1, 0.5)


class GramConfig(Strict):
    enabled: bool = False
    start_step: CountOrZero = 0  # the Gram phase begins here (DINOv3: after the main run, e.g. 1M iterations)
    refresh_every: Count = 10000  # R: the frozen Gram teacher becomes the current EMA teacher every R steps
    resolution_scale: Positive = 2.0  # Gram teacher crops have this many times the global crop side
    weight: NonNegative = 2.0
    ramp_steps: CountOrZero = 1000  # linear ramp of the weight from 0


class OptimConfig(Strict):
    schedule: Literal["cosine", "constant"] = "cosine"  # DINOv2 cosine decay, or DINOv3 constant after warm-up
    batch_size: Count = 64  # per rank
    lr: Positive = 5e-4  # after warm-up, for a total batch of 256 (scaled linearly by total batch / 256, DINO)
    min_lr: NonNegative = 1e-6
    warmup_steps: CountOrZero = 100  # linear lr warm-up over the first 10% of the run (DINOv2: 10 of 100 epochs)
    weight_decay: NonNegative = 0.04
    weight_decay_end: NonNegative = 0.2
    momentum: Fraction = 0.992  # teacher EMA momentum
    momentum_end: Fraction = 1.0
    layer_decay: float = Field(0.9, gt=0, le=1)
    clip_grad: Positive = 3.0
    betas: tuple[Beta, Beta] = (0.9, 0.999)


class DataConfig(Strict):
    shuffle_buffer: Count = 1000
    homogeneous_share: Fraction = 0.1  # DINOv3: 10% of batches from one composition part
    workers: CountOrZero = 2  # dataloader worker processes per rank (0 = in the training process)


class RunConfig(Strict):
    steps: Count = 1000  # total optimiser steps (cosine schedules end here)
    steps_per_epoch: Count = 100  # an "epoch" is a fixed number of steps over the infinite stream
    checkpoint_every: Count = 500
    log_every: Count = 10
    seed: CountOrZero = 0  # numpy seeds are non-negative
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
    origin = str(path or "<defaults>")
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SpecError(f"{path}: cannot read training config ({error})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a training config must be a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        keys = data.setdefault(section, {})
        if not isinstance(keys, dict):
            raise SpecError(f"{origin}: {section} must be a mapping of keys to set {dotted}, got {keys!r}")
        keys[key] = value
    return parse_train_config(data, origin)
