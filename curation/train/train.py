"""The training loop: schedules, one forward/backward per step, EMA, Gram phase, NaN guard, checkpoints.

Run in one process, or under `torchrun --nproc-per-node N` (DDP: gloo on CPU, NCCL on CUDA). Each step's
random draws (crops, masks, stochastic depth, RoPE jitter) come from generators seeded by (seed, step, rank),
so a run resumed from a checkpoint computes bit-identical steps on the same machine and world size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from curation.core.progress import Progress
from curation.errors import TrainError
from curation.train.checkpoint import latest_checkpoint, load_checkpoint, record_checkpoint, save_checkpoint
from curation.train.config import TrainConfig
from curation.train.data.crops import CropSettings, MultiCrop
from curation.train.data.shards import shard_infos
from curation.train.data.stream import BatchStream, StreamSettings
from curation.train.dataset import open_training_set
from curation.train.export import export_teacher
from curation.train.masking import masks_for_crops
from curation.train.meta_arch import SSLMetaArch
from curation.train.optim import build_optimizer, set_hyperparameters
from curation.train.schedules import Schedule

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)  # this process's per-step record
    checkpoint: Path | None = None
    export: Path | None = None


@dataclass(frozen=True)
class Schedules:
    lr: Schedule
    weight_decay: Schedule
    momentum: Schedule
    teacher_temp: Schedule

    @classmethod
    def from_config(cls, config: TrainConfig, world_size: int) -> Schedules:
        o, steps = config.optim, config.run.steps
        lr = o.lr * o.batch_size * world_size / 256  # DINO's linear scaling rule
        kind = o.schedule
        return cls(
            lr=Schedule(kind, lr, o.min_lr, o.warmup_steps, 0.0, steps),
            weight_decay=Schedule(kind, o.weight_decay, o.weight_decay_end, 0, o.weight_decay, steps),
            momentum=Schedule(kind, o.momentum, o.momentum_end, 0, o.momentum, steps),
            teacher_temp=Schedule("constant", config.loss.teacher_temp, config.loss.teacher_temp,
                                  config.loss.teacher_temp_warmup_steps, config.loss.teacher_temp_from, steps),
        )  # fmt: skip


def distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; joins the process group when there are several."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return rank, world_size


def pick_device(config: TrainConfig) -> torch.device:
    wanted = config.run.device
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("run.device is 'cuda' but no CUDA device is visible")
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1009 + rank


def gather_positions(positions: dict[int, tuple[int, int]], world_size: int) -> dict[int, tuple[int, int]]:
    """Every rank's positions in one dict for the checkpoint; each rank holds only its own streams'."""
    if world_size == 1:
        return dict(positions)
    every: list[Any] = [None] * world_size
    dist.all_gather_object(every, positions)
    return {stream: position for part in every for stream, position in part.items()}


def all_finite(loss: torch.Tensor) -> bool:
    """NaN guard: every rank agrees, so all stop together instead of one hanging in a collective."""
    bad = torch.tensor(0.0 if torch.isfinite(loss).item() else 1.0, device=loss.device)
    if dist.is_initialized():
        dist.all_reduce(bad)
    return bad.item() == 0


def train(config: TrainConfig, *, home: str | Path, dataset: str, out_dir: str | Path,
          allow_superseded: bool = False, stop_after: int | None = None,
          progress: Progress | None = None) -> TrainResult:  # fmt: skip
    """Train on `dataset` (NAME@vN in `home`), writing OUT/checkpoints, OUT/log.jsonl and, at the last step,
    OUT/export/NAME.json. Resumes from the latest checkpoint in OUT. `stop_after` ends this call after that
    many steps (a simulated interruption for tests) without exporting. Rank 0 reports steps, loss and images/s
    to `progress` (a bar on the terminal for `curate train`)."""
    out_dir = Path(out_dir)
    rank, world_size = distributed()
    device = pick_device(config)
    training_set = open_training_set(home, dataset, allow_superseded=allow_superseded)
    lineage = training_set.lineage
    torch.manual_seed(config.run.seed)
    meta = SSLMetaArch(config).to(device)
    depth = len(meta.student.backbone.blocks)
    optimizer = build_optimizer(meta.student, depth, config.optim.layer_decay, config.optim.betas)
    start_step, positions, wall_before = 0, {}, 0.0
    resumed = latest_checkpoint(out_dir)
    if resumed is not None:
        state = load_checkpoint(resumed)
        if state["lineage"]["manifest_sha256"] != lineage["manifest_sha256"]:
            raise TrainError(f"{resumed} was trained on {state['lineage']['dataset']}, not {lineage['dataset']}; "
                             "use a new output folder")  # fmt: skip
        if any(key.startswith("gram_teacher.") for key in state["model"]):
            meta.refresh_gram_teacher()
        meta.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, positions, wall_before = state["step"], state["positions"], state.get("wall_s", 0.0)
        log.info("resumed from %s at step %d", resumed, start_step)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    student_forward = meta.student
    if world_size > 1:
        student_forward = DistributedDataParallel(meta.student, device_ids=[device.index] if device.type == "cuda"
                                                  else None)  # fmt: skip
    if config.run.compile:
        student_forward = torch.compile(student_forward)
    schedules = Schedules.from_config(config, world_size)
    crops = config.crops
    multicrop = MultiCrop(CropSettings(crops.global_size, crops.local_size, crops.local_crops, crops.global_scale,
                                       crops.local_scale, crops.mean, crops.std))  # fmt: skip
    workers = config.data.workers
    stream = BatchStream(training_set.version.root, shard_infos(training_set.version.manifest),
                         StreamSettings(config.optim.batch_size, crops.load_size, config.run.seed,
                                        config.data.shuffle_buffer, config.data.homogeneous_share),
                         rank=rank, world_size=world_size, workers=workers, start=positions,
                         rotation=start_step % max(1, workers))  # fmt: skip
    # a checkpoint holds every rank's streams; keeping the others' would send back stale copies of them, which
    # overwrite their owners' current positions when the ranks' positions are gathered at the next checkpoint
    positions = {stream_id: positions[stream_id] for stream_id in stream.own_streams() if stream_id in positions}
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)  # fmt: skip
    batches = iter(loader)
    patch = config.model.patch_size
    if crops.global_size % patch or crops.local_size % patch:
        raise TrainError(f"crop sides {crops.global_size}/{crops.local_size} must be multiples of the patch {patch}")
    grid = crops.global_size // patch
    autocast = config.run.precision == "bf16" or (config.run.precision == "auto" and device.type == "cuda")
    result = TrainResult(out_dir, config.run.steps)
    end = config.run.steps if stop_after is None else min(config.run.steps, start_step + stop_after)
    meta.train()
    log_file = (out_dir / "log.jsonl").open("a") if rank == 0 else None
    bar = (progress if progress and rank == 0 else Progress()).bar("train", total=config.run.steps,
                                                                   initial=start_step, unit="step")  # fmt: skip
    started = time.monotonic()
    for step in range(start_step, end):
        batch = next(batches)
        stream_id, pass_number, index = batch["position"]
        positions[stream_id] = (pass_number, index + 1)
        generator = torch.Generator().manual_seed(step_seed(config.run.seed, step, rank))
        torch.manual_seed(step_seed(config.run.seed, step, rank))
        gram_weight, hires = gram_phase(meta, config, step)
        views = multicrop(batch["images"].to(device, non_blocking=True), generator, hires)
        masks = masks_for_crops(views["global"].shape[0], grid, grid, generator, share=config.loss.mask_share,
                                ratio_min=config.loss.mask_ratio[0], ratio_max=config.loss.mask_ratio[1])  # fmt: skip
        lr, weight_decay = schedules.lr(step), schedules.weight_decay(step)
        set_hyperparameters(optimizer, lr, weight_decay)
        try:
            output, grad_norm = optimisation_step(meta, optimizer, student_forward, views, masks.to(device),
                                                  teacher_temp=schedules.teacher_temp(step), gram_weight=gram_weight,
                                                  momentum=schedules.momentum(step), clip=config.optim.clip_grad,
                                                  autocast=autocast)  # fmt: skip
        except FloatingPointError as error:
            raise TrainError(f"step {step}: {error}; stopped (NaN guard). Lower optim.lr or resume from "
                             f"{latest_checkpoint(out_dir)}") from None  # fmt: skip
        elapsed = time.monotonic() - started
        record = {"step": step, "loss": output.loss.item(), **output.parts, "lr": lr, "weight_decay": weight_decay,
                  "grad_norm": grad_norm.item(), "epoch": step // config.run.steps_per_epoch,
                  "images_per_s": (step + 1 - start_step) * config.optim.batch_size * world_size / elapsed,
                  "wall_s": round(wall_before + elapsed, 3)}  # fmt: skip
        result.history.append(record)
        bar.update(1, loss=round(record["loss"], 4), img_s=round(record["images_per_s"], 1))
        if log_file and (step % config.run.log_every == 0 or step + 1 == end):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if (step + 1) % config.run.checkpoint_every == 0 or step + 1 == end:
            everyone = gather_positions(positions, world_size)
            if rank == 0:
                state = {"model": meta.state_dict(), "optimizer": optimizer.state_dict(), "positions": everyone,
                         "config": config.model_dump(mode="json"), "world_size": world_size,
                         "wall_s": record["wall_s"]}  # fmt: skip
                result.checkpoint = save_checkpoint(out_dir, step + 1, state, lineage)
                record_checkpoint(home, result.checkpoint, lineage, step + 1)
    bar.close()
    if log_file:
        log_file.close()
    if rank == 0 and end == config.run.steps:
        result.export = export_teacher(meta, config, out_dir / "export" / config.run.export_name, lineage)
    if world_size > 1:
        dist.barrier()
    return result


def optimisation_step(meta: SSLMetaArch, optimizer: torch.optim.Optimizer, student_forward, views: dict,
                      masks: torch.Tensor, *, teacher_temp: float, gram_weight: float, momentum: float, clip: float,
                      autocast: bool):  # fmt: skip
    """Forward, NaN guard, backward, clipping, AdamW, EMA: one step (the benchmarks time exactly this).
    Returns (StepOutput, gradient norm before clipping); raises FloatingPointError on a non-finite loss."""
    device_type = views["global"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        output = meta.losses(views, masks, teacher_temp, gram_weight, student_forward)
    if not all_finite(output.loss):
        raise FloatingPointError(f"the loss is not finite ({output.parts})")
    optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(meta.student.parameters(), clip)
    optimizer.step()
    meta.update_teacher(momentum)
    return output, grad_norm


def gram_phase(meta: SSLMetaArch, config: TrainConfig, step: int) -> tuple[float, int | None]:
    """(Gram loss weight, Gram teacher crop side) for this step; refreshes the frozen Gram teacher every R steps."""
    gram = config.gram
    if not gram.enabled or step < gram.start_step:
        return 0.0, None
    if meta.gram_teacher is None or (step - gram.start_step) % gram.refresh_every == 0:
        meta.refresh_gram_teacher()
    patch = config.model.patch_size
    side = max(patch, round(config.crops.global_size * gram.resolution_scale / patch) * patch)
    ramp = min(1.0, (step - gram.start_step + 1) / max(1, gram.ramp_steps))
    return gram.weight * ramp, side
