"""Training throughput of the bundled pretrainer: images/s and model FLOPs utilisation (MFU) for ViT-S/16 and
ViT-B/16 with 2 x 224 + 8 x 96 crops, end to end from a published version's shards and model-only on synthetic
tensors, in the same run on the same device. The data path must not be the bottleneck: e2e / model-only -> 1.

    python benchmarks/train_throughput.py --home HOME --dataset NAME@vN                 # GPU: bs 64, 30 steps
    python benchmarks/train_throughput.py --home HOME --dataset NAME@vN --device cpu --batch-size 4 --steps 3

Both paths time `curation.train.train.optimisation_step` (forward, NaN guard, backward, clipping, AdamW, EMA)
with the DINO, iBOT and KoLeo losses (Sinkhorn centring) and block masks; e2e adds the verified shard stream
(`BatchStream` in `--workers` dataloader processes: read, hash, decode to a 256 px square) and the multi-crop
views cut on the device. Model-only feeds ready random crops already on the device. FLOPs per step are counted
by torch's FlopCounterMode on one step (fwd + bwd + teacher fwd); MFU = achieved FLOP/s / peak, with peak the
device's dense bf16 tensor peak on CUDA (H100/H200 SXM: 989 TFLOP/s) or, on CPU, a fp32 GEMM measured here.
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from curation.train.config import parse_train_config
from curation.train.data.crops import CropSettings, MultiCrop
from curation.train.data.shards import shard_infos
from curation.train.data.stream import BatchStream, StreamSettings
from curation.train.dataset import open_training_set
from curation.train.masking import masks_for_crops
from curation.train.meta_arch import SSLMetaArch
from curation.train.optim import build_optimizer, set_hyperparameters
from curation.train.train import optimisation_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, cores, cpu_model, utc_now, write_result  # noqa: E402

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
MODELS = {"vit_s16": "small", "vit_b16": "base"}
NOTES = (
    "e2e = shard stream + device multi-crop + step; model_only = step on ready random crops; both with the "
    "paper-size heads (65,536 prototypes). On CPU, peak = a GEMM measured right after each model's timed "
    "steps, so MFU is relative to what the (possibly shared) CPU delivered then; GPU figures are pending."
)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {cpu_model()}, {cores()} cores"


def peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{key} dense bf16 datasheet peak"
        return float("nan"), "unknown GPU"
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - start), "fp32 2048^3 GEMM measured in this run"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset: str, args, device: torch.device):
    config = parse_train_config({
        "model": {"preset": preset, "patch_size": 16},
        "crops": {"global_size": 224, "local_size": 96, "local_crops": 8, "load_size": 256},
        "optim": {"batch_size": args.batch_size},
        "data": {"workers": args.workers, "shuffle_buffer": 4 * args.batch_size},
        "run": {"compile": args.compile},
    })  # fmt: skip
    torch.manual_seed(0)
    meta = SSLMetaArch(config).to(device).train()
    optimizer = build_optimizer(meta.student, len(meta.student.backbone.blocks), 0.9, (0.9, 0.999))
    set_hyperparameters(optimizer, 1e-4, 0.04)
    forward = torch.compile(meta.student) if args.compile else meta.student
    return config, meta, optimizer, forward


def run_steps(meta, optimizer, forward, make_inputs, steps: int, device: torch.device, autocast: bool) -> float:
    """Seconds for `steps` steps after the inputs of each are made (inputs included in the time)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        views, masks = make_inputs()
        optimisation_step(meta, optimizer, forward, views, masks, teacher_temp=0.07, gram_weight=0.0,
                          momentum=0.996, clip=3.0, autocast=autocast)  # fmt: skip
    sync(device)
    return time.perf_counter() - start


def measure(name: str, preset: str, args, device: torch.device, figures: dict) -> None:
    config, meta, optimizer, forward = build(preset, args, device)
    batch, grid = args.batch_size, 224 // 16
    autocast = device.type == "cuda"
    generator = torch.Generator().manual_seed(0)

    def synthetic():
        views = {"global": torch.randn(2 * batch, 3, 224, 224, device=device),
                 "local": torch.randn(8 * batch, 3, 96, 96, device=device)}  # fmt: skip
        return views, masks_for_crops(2 * batch, grid, grid, generator).to(device)

    views, masks = synthetic()
    with FlopCounterMode(display=False) as counter:
        optimisation_step(meta, optimizer, forward, views, masks, teacher_temp=0.07, gram_weight=0.0,
                          momentum=0.996, clip=3.0, autocast=autocast)  # fmt: skip
    flops_per_image = counter.get_total_flops() / batch
    run_steps(meta, optimizer, forward, synthetic, args.warmup, device, autocast)
    model_s = run_steps(meta, optimizer, forward, synthetic, args.steps, device, autocast)

    training_set = open_training_set(args.home, args.dataset)
    stream = BatchStream(training_set.version.root, shard_infos(training_set.version.manifest),
                         StreamSettings(batch, 256, 0, 4 * batch, 0.1), workers=args.workers)  # fmt: skip
    loader = iter(DataLoader(stream, batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda",
                             persistent_workers=args.workers > 0))  # fmt: skip
    crops = MultiCrop(CropSettings(224, 96, 8))

    def from_shards():
        images = next(loader)["images"].to(device, non_blocking=True)
        return crops(images, generator), masks_for_crops(2 * batch, grid, grid, generator).to(device)

    run_steps(meta, optimizer, forward, from_shards, args.warmup, device, autocast)
    e2e_s = run_steps(meta, optimizer, forward, from_shards, args.steps, device, autocast)
    model_rate, e2e_rate = args.steps * batch / model_s, args.steps * batch / e2e_s
    peak, peak_source = peak_flops(device)  # right after the timed steps: on a shared CPU, under the same load
    figures.update({
        f"{name}_gflop_per_image": round(flops_per_image / 1e9, 1),
        f"{name}_model_only_img_s": float(f"{model_rate:.3g}"),
        f"{name}_e2e_img_s": float(f"{e2e_rate:.3g}"),
        f"{name}_e2e_ratio_to_model_only": round(e2e_rate / model_rate, 3),
        f"{name}_mfu_model_only": round(model_rate * flops_per_image / peak, 4),
        f"{name}_mfu_e2e": round(e2e_rate * flops_per_image / peak, 4),
        f"{name}_peak_tflops": round(peak / 1e12, 4),
        f"{name}_peak_source": peak_source,
    })  # fmt: skip
    print(name, {key: value for key, value in figures.items() if key.startswith(name)}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True)
    parser.add_argument("--dataset", required=True, help="published version to stream, NAME@vN")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (each gives 2 + 8 crops)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8, help="dataloader processes for the shard stream")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (CUDA)")
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    figures = {"batch_size": args.batch_size, "crops": "2x224 + 8x96", "steps": args.steps, "warmup": args.warmup,
               "workers": args.workers, "compile": args.compile, "torch_threads": torch.get_num_threads(),
               "losses": "dino + ibot + koleo, sinkhorn"}  # fmt: skip
    for name in args.models:
        measure(name, MODELS[name], args, device, figures)
    kind = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).split()[-1].lower()
    print(figures)
    if not args.no_write:
        write_result("train_throughput", kind, utc_now(), device=device_name(device), figures=figures,
                     command=command_line(None, "benchmarks/train_throughput.py"), output=args.output, notes=NOTES,
                     torch=torch.__version__)  # fmt: skip


if __name__ == "__main__":
    main()
