"""Embed throughput benchmark: images/s from JPEG bytes to stored vectors, per model and batch size, beside the
two limits that bound it (decode alone, model forward alone), measured in the same run on the same device.

    python benchmarks/embed_throughput.py                        # CUDA if present: 10,000 images, bs 128/256/512
    python benchmarks/embed_throughput.py --device cpu           # CPU: 256 images, bs 16/32, builtin as well
    python benchmarks/embed_throughput.py --n 64 --models builtin --batch-sizes 16 --no-write   # smoke run

Per model and batch size, after `--warmup` batches through the embedder (plus one batch of every shorter length
the end-to-end run will see, so torch.compile and cuDNN never compile inside a timed region):

* e2e: `curation.embed.stage.EmbedBlocks` (the embed stage's worker) over blocks of image ids held in a local
  BlobStore, writing float16 vectors + the Parquet index to a local vectors store: bytes in the blob store ->
  stored vectors. Model load (EmbedBlocks construction) is timed apart as `<model>_load_s` and excluded.
* decode limit: the embedder's own decode + resize + crop, on bytes already in memory. CUDA: its batched nvjpeg
  path `_gpu_pixels` (one call per batch, then a device sync); CPU: its Pillow path `_cpu_pixels`, image by image.
* forward limit: the embedder's `forward` (compiled when `--compile`) on ready random [B, 3, crop, crop] tensors
  on the device, under the embedder's settings (inference_mode, bf16 autocast and channels_last on CUDA).

`<model>_e2e_ratio_to_limit_bs<B>` = e2e / min(decode, forward). The embedder does decode and forward one after
the other (no overlap), as does the worker with blob reads and vector writes, so the best it can reach is the
`serial_bound` = 1 / (1/read + 1/decode + 1/forward + 1/write), also reported with e2e's ratio to it. The blob
read and vector write rates are measured once, model-independent. Test images: N distinct 500x375 JPEGs
(quality 90) generated in memory from Fashion-MNIST (Debian's copy; seeded noise without it), upscaled, tinted,
textured with smooth noise to a photo-like ~50 KB, and index-stamped. Random weights (speed only).

Imports: `curation.embed.stage` pulls in duckdb, boto3/botocore, braceexpand, requests and jsonschema at module
level though the embed worker never uses them. Where one is not installed (a bare CUDA box), this script serves
an inert stand-in for it (`stubbed_modules` in the result), so the benchmark still runs; faiss, ray and
webdataset are not imported at all. Timings are reported, never asserted; nothing imports this file.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import io
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import CpuMeter, cores, cpu_model, load_fashion_mnist, print_figures, write_result  # noqa: E402

WIDTH, HEIGHT, QUALITY = 500, 375, 90
RESULTS = Path(__file__).resolve().parent / "results"
VIT_MODELS = ("timm:vit_small_patch16_224", "timm:vit_base_patch16_224")
SHORT_NAMES = {"timm:vit_small_patch16_224": "vit_s16", "timm:vit_base_patch16_224": "vit_b16", "builtin": "builtin"}
# Imported at module level on the embed path but never called by it; see import_embed_modules.
STUBBABLE = {
    "duckdb": "curation/__init__ -> api -> store/catalog; embed/vectors -> store/catalog",
    "boto3": "store/objects -> store/s3client; embed/stage -> curation.ingest -> ingest/tars, ingest/s3",
    "botocore": "store/s3client (botocore.config); ingest/tars, ingest/s3 (botocore.exceptions)",
    "braceexpand": "embed/stage -> curation.ingest (package __init__) -> ingest/tars",
    "requests": "embed/stage -> curation.ingest (package __init__) -> ingest/urls",
    "jsonschema": "embed/registry._load_plugins -> embed/backbone",
}
NEVER_IMPORTED = ("faiss", "ray", "webdataset")


def short_name(model: str) -> str:
    return SHORT_NAMES.get(model) or re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")


# --- imports without the stores' optional dependencies -------------------------------------------------------
class _Missing(types.ModuleType):
    """An inert stand-in for a module that is not installed: any attribute is an exception class that fails when
    instantiated (so `from x import Y`, `except x.Error` and annotations work; calling anything fails loudly)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def fail(*args, **kwargs):
            raise ImportError(f"{self.__name__}.{name}: {self.__name__} is not installed (embed_throughput stand-in)")

        stand_in = type(name, (Exception,), {"__init__": fail, "__module__": self.__name__})
        setattr(self, name, stand_in)
        return stand_in


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: consulted only when no real finder has the module, i.e. when it is not installed."""

    def __init__(self) -> None:
        self.served: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        top = fullname.split(".")[0]
        if top not in STUBBABLE or ("." in fullname and not isinstance(sys.modules.get(top), _Missing)):
            return None  # not ours, or a submodule (maybe optional) of an installed package: leave it missing
        self.served.add(fullname.split(".")[0])
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _Missing(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


def import_embed_modules() -> dict[str, Any]:
    """Import what the embed worker needs; returns the modules plus which dependencies were stood in for."""
    finder = _StandInFinder()
    sys.meta_path.append(finder)
    try:
        from curation.config import EmbedStage
        from curation.embed.registry import _load_plugins
        from curation.embed.stage import EmbedBlocks
        from curation.embed.vectors import block_keys, read_block_index, write_block
        from curation.ingest.raw import Block
        from curation.store.blobs import BlobStore
        from curation.store.objects import LocalStore

        _load_plugins()  # the registry's lazy import of the embedder families (backbone -> jsonschema)
    except ModuleNotFoundError as error:
        raise SystemExit(f"cannot import the embed stage: {error.name} is missing ({error})") from None
    finally:
        sys.meta_path.remove(finder)
    return {
        "EmbedStage": EmbedStage,
        "EmbedBlocks": EmbedBlocks,
        "block_keys": block_keys,
        "read_block_index": read_block_index,
        "write_block": write_block,
        "Block": Block,
        "BlobStore": BlobStore,
        "LocalStore": LocalStore,
        "stubbed": sorted(finder.served),
        "imported_never": [name for name in NEVER_IMPORTED if name in sys.modules],
    }


# --- data ----------------------------------------------------------------------------------------------------


class ImageMaker:
    """Deterministic distinct 500x375 RGB JPEGs: image i depends on i only (safe to make in any order/thread)."""

    def __init__(self, base: np.ndarray | None, textures: int = 16):
        self.base = base
        rng = np.random.default_rng(20240601)
        # Smooth noise: random 126x95 fields upscaled 4x, centred on 0. Gives photo-like JPEG sizes (~50 KB).
        self.textures = [
            np.asarray(
                Image.fromarray(rng.integers(0, 256, (HEIGHT // 4 + 1, WIDTH // 4 + 1, 3), dtype=np.uint8)).resize(
                    (WIDTH, HEIGHT), Image.Resampling.BILINEAR
                ),
                np.int16,
            )
            - 128
            for _ in range(textures)
        ]

    def __call__(self, index: int) -> bytes:
        if self.base is None:
            content = np.full((HEIGHT, WIDTH), 128, np.int16)
        else:
            small = Image.fromarray(self.base[index % len(self.base)])
            content = np.asarray(small.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), np.int16)
        tint = np.array([(index * 37) % 256, (index * 71) % 256, (index * 113) % 256], np.int16)
        texture = np.roll(self.textures[index % len(self.textures)], (index * 7919) % HEIGHT, axis=0)
        pixels = np.clip(content[..., None] * 3 // 4 + tint // 4 + texture // 3, 0, 255).astype(np.uint8)
        # The index, big-endian, in the first pixels of the top row: every file differs.
        pixels[0, :4, :] = np.frombuffer(index.to_bytes(4, "big"), np.uint8)[:, None]
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=QUALITY)
        return buffer.getvalue()


def generate(n: int, workers: int) -> tuple[list[bytes], str]:
    base = load_fashion_mnist()
    maker = ImageMaker(base)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        images = list(pool.map(maker, range(n), chunksize=64))
    source = "fashion-mnist train (upscaled, tinted, textured)" if base is not None else "seeded smooth noise"
    return images, source


# --- measurements --------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, mods: dict[str, Any], workdir: Path, images: list[bytes]):
        import torch

        self.torch = torch
        self.args = args
        self.mods = mods
        self.images = images
        self.cuda = args.device == "cuda"
        self.workdir = workdir
        self.blobs = mods["BlobStore"](mods["LocalStore"](workdir / "blobs"))
        self.ids = [self.blobs.put(data) for data in images]
        if len(set(self.ids)) != len(images):
            raise RuntimeError(f"generated {len(images)} images but only {len(set(self.ids))} distinct ones")
        blocks = [self.ids[i : i + args.block_size] for i in range(0, len(self.ids), args.block_size)]
        self.blocks = [mods["Block"](i, "embed", "embed", tuple(ids)) for i, ids in enumerate(blocks)]

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def stage(self, model: str, batch_size: int):
        return self.mods["EmbedStage"](
            model=model,
            batch_size=batch_size,
            block_size=self.args.block_size,
            cpus_per_actor=self.args.threads,
            device=self.args.device,
            precision=self.args.precision,
            compile=self.args.compile,
            gpu_decode=True,
        )

    # model-independent parts of the worker
    def blob_read_img_s(self) -> float:
        started = time.perf_counter()
        for image_id in self.ids:
            self.blobs.get(image_id)
        return len(self.ids) / (time.perf_counter() - started)

    def write_img_s(self, dim: int) -> float:
        store = self.mods["LocalStore"](self.workdir / "write-probe")
        rng = np.random.default_rng(0)
        blocks = [(block, rng.standard_normal((len(block.items), dim), dtype=np.float32)) for block in self.blocks]
        for run_id in ("warm", "probe"):  # the first write_block of a process pays one-off set-up: not timed
            started = time.perf_counter()
            for block, vectors in blocks[: 1 if run_id == "warm" else None]:
                items = list(block.items)
                self.mods["write_block"](
                    store, "probe@w0-p0", dim, run_id, block.index, items, vectors, [None] * len(items)
                )
        seconds = time.perf_counter() - started
        shutil.rmtree(self.workdir / "write-probe", ignore_errors=True)
        return len(self.ids) / seconds

    # per model and batch size
    def batch_lengths(self, batch_size: int) -> list[int]:
        """Every batch length the e2e run feeds the embedder (a block's last batch may be short)."""
        lengths = []
        for block in self.blocks:
            for start in range(0, len(block.items), batch_size):
                lengths.append(min(batch_size, len(block.items) - start))
        return lengths

    def warmup(self, embedder, batch_size: int) -> None:
        lengths = self.batch_lengths(batch_size)
        shapes = [batch_size] * min(self.args.warmup, lengths.count(batch_size))
        shapes += sorted(set(lengths) - {batch_size}, reverse=True)
        for length in shapes:
            embedder.embed(self.images[:length])
        self.sync()

    def decode_img_s(self, embedder, batch_size: int) -> float:
        if self.cuda:
            decoded = 0
            started = time.perf_counter()
            for start in range(0, len(self.images), batch_size):
                decoded += len(embedder._gpu_pixels(self.images[start : start + batch_size]))
            self.sync()
            seconds = time.perf_counter() - started
        else:
            started = time.perf_counter()
            decoded = sum(1 for data in self.images if embedder._cpu_pixels(data) is not None)
            seconds = time.perf_counter() - started
        if decoded != len(self.images):
            raise RuntimeError(f"decode limit: only {decoded} of {len(self.images)} images decoded")
        return decoded / seconds

    def forward_img_s(self, embedder, batch_size: int) -> float:
        torch = self.torch
        crop = embedder.preprocess.crop
        generator = torch.Generator(device=embedder.device).manual_seed(0)
        batch = torch.randn(batch_size, 3, crop, crop, device=embedder.device, generator=generator)
        if embedder.cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = embedder.cuda and embedder.stage.precision == "bf16"
        batches = max(1, math.ceil(self.args.limit_images / batch_size))
        with torch.inference_mode(), torch.autocast(embedder.device.type, dtype=torch.bfloat16, enabled=autocast):
            started = time.perf_counter()
            for _ in range(batches):
                embedder.forward(batch)
            self.sync()
            seconds = time.perf_counter() - started
        return batches * batch_size / seconds

    def embed_img_s(self, embedder, batch_size: int) -> float:
        """builtin only: embedder.embed on bytes in memory (its whole compute; no store)."""
        started = time.perf_counter()
        for start in range(0, len(self.images), batch_size):
            embedder.embed(self.images[start : start + batch_size])
        return len(self.images) / (time.perf_counter() - started)

    def e2e(self, worker, run_id: str) -> tuple[float, int]:
        worker.run_id = run_id  # a fresh run id per measurement: every block's files are new
        started = time.perf_counter()
        summaries = [worker(block) for block in self.blocks]
        self.sync()
        seconds = time.perf_counter() - started
        embedded = sum(summary.embedded for summary in summaries)
        model_id = worker.embedder.model_id
        for block in self.blocks:  # the outputs really are there (and not counted in the timing)
            if not worker.vectors.exists(self.mods["block_keys"](model_id, run_id, block.index)[0]):
                raise RuntimeError(f"e2e {run_id}: block {block.index} wrote no vectors")
        return len(self.ids) / seconds, len(self.ids) - embedded


def best_of(repeats: int, measure, *args) -> float:
    return max(measure(*args) for _ in range(max(1, repeats)))


def collapse_decode(figures: dict[str, float], shorts: list[str]) -> dict[str, float]:
    """`<model>_decode_img_s[_bsB]` -> `decode_img_s[_bsB]` (first occurrence kept, in place) when the models share
    their preprocessing, so their decode limit is one and the same measurement."""
    result: dict[str, float] = {}
    for name, value in figures.items():
        for short in shorts:
            if name.startswith(f"{short}_decode_img_s"):
                name = name[len(short) + 1 :]
                break
        result.setdefault(name, value)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    parser.add_argument(
        "--models", default=None, help=f"comma-separated (default {','.join(VIT_MODELS)}, plus builtin on CPU)"
    )
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default CUDA 128,256,512; CPU 16,32)")
    parser.add_argument("--n", type=int, default=None, help="images (default 10000 on CUDA, 256 on CPU)")
    parser.add_argument("--compile", action="store_true", help="stages.embed.compile (torch.compile, CUDA only)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="CUDA autocast (default bf16)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up batches (default 3 on CUDA, 1 on CPU)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="measure each figure this many times, keep the best (default 1)"
    )
    parser.add_argument("--block-size", type=int, default=1024, help="images per EmbedBlocks block (default 1024)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="cpus_per_actor = torch threads (default: all usable cores on CPU, 1 on CUDA)",
    )
    parser.add_argument(
        "--limit-images",
        type=int,
        default=None,
        help="images per forward-limit measurement (default: --n on CUDA, min(n, 64) on CPU)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="blob and vector stores (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    parser.add_argument("--note", default=None, help="free text appended to the result's notes (e.g. why --n)")
    parser.add_argument("--no-write", action="store_true", help="print figures only, write no result file")
    args = parser.parse_args(argv)

    now = datetime.now(UTC)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", __file__, *argv])
    load_start = os.getloadavg()[0]
    meter = CpuMeter()
    row_shares: list[float] = []
    mods = import_embed_modules()
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    cuda = args.device == "cuda"
    models = args.models.split(",") if args.models else [*VIT_MODELS, *([] if cuda else ["builtin"])]
    batch_sizes = [int(b) for b in (args.batch_sizes or ("128,256,512" if cuda else "16,32")).split(",")]
    args.n = args.n or (10_000 if cuda else 256)
    args.warmup = (3 if cuda else 1) if args.warmup is None else args.warmup
    args.threads = args.threads or (1 if cuda else cores())
    args.limit_images = args.limit_images or (args.n if cuda else min(args.n, 64))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    device = gpu if cuda else f"cpu: {cpu_model()}, {cores()} cores"
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": cores(),
        "gpu": gpu,
        "torch": torch.__version__,
    }
    print(
        f"machine: {machine['platform']}, python {machine['python']}, torch {torch.__version__}, "
        f"{machine['cpu']}, {machine['cores']} cores, GPU: {gpu or 'none'}"
    )
    print(f"device:  {device}")
    print(f"date:    {now:%Y-%m-%d %H:%M:%S} UTC")
    print(f"command: {command}")
    print(f"load:    {load_start:.2f} (1-minute load average at start)")
    if mods["stubbed"]:
        print(f"stand-ins for uninstalled modules: {', '.join(mods['stubbed'])}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the temporary stores
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="curation-embed-bench-")) if temporary else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {
        "n_images": args.n,
        "block_size": args.block_size,
        "torch_threads": args.threads,
        "warmup_batches": args.warmup,
        "repeats": args.repeats,
        "forward_limit_images": args.limit_images,
    }
    try:
        started = time.perf_counter()
        images, source = generate(args.n, min(cores(), 8))
        figures["generate_s"] = round(time.perf_counter() - started, 3)
        figures["mean_image_bytes"] = round(sum(map(len, images)) / len(images), 1)
        print(
            f"images:  {len(images)} {WIDTH}x{HEIGHT} JPEGs (q{QUALITY}) from {source}, "
            f"mean {figures['mean_image_bytes']:.0f} bytes, made in {figures['generate_s']:.1f} s"
        )
        bench = Bench(args, mods, workdir, images)
        read_rate = best_of(args.repeats, bench.blob_read_img_s)
        figures["blob_read_img_s"] = round(read_rate, 1)
        print(f"store:   blob read {read_rate:.0f} img/s")
        write_rates: dict[int, float] = {}  # vector dimension -> write_block img/s

        decode_cache: dict[tuple, float] = {}  # (preprocess, batch size or None) -> img/s
        preprocess_of: dict[str, Any] = {}  # model short name -> its Preprocess
        for model in models:
            short = short_name(model)
            started = time.perf_counter()
            vectors = mods["LocalStore"](workdir / "vectors")
            worker = mods["EmbedBlocks"](bench.stage(model, batch_sizes[0]), bench.blobs, vectors, "bench")
            figures[f"{short}_load_s"] = round(time.perf_counter() - started, 3)
            embedder = worker.embedder
            if embedder.dim not in write_rates:
                write_rates[embedder.dim] = best_of(args.repeats, bench.write_img_s, embedder.dim)
                figures[f"write_block_img_s_dim{embedder.dim}"] = round(write_rates[embedder.dim], 1)
            write_rate = write_rates[embedder.dim]
            print(
                f"\n{model}: {embedder.model_id}, dim {embedder.dim}, loaded in {figures[f'{short}_load_s']:.1f} s,"
                f" torch threads {torch.get_num_threads()}, write_block {write_rate:.0f} img/s"
            )
            for batch_size in batch_sizes:
                worker.stage = bench.stage(model, batch_size)  # EmbedBlocks reads only stage.batch_size per call
                run_id = f"bench-{short}-bs{batch_size}"
                since = meter.snapshot()
                bench.warmup(embedder, batch_size)
                e2e_runs: list[float] = []
                if model == "builtin":
                    limit = best_of(args.repeats, bench.embed_img_s, embedder, batch_size)
                    figures[f"{short}_embed_img_s_bs{batch_size}"] = round(limit, 1)
                    for repeat in range(args.repeats):
                        rate, failed = bench.e2e(worker, f"{run_id}-r{repeat}")
                        e2e_runs.append(rate)
                    serial = 1 / (1 / read_rate + 1 / limit + 1 / write_rate)
                    decode = forward = None
                else:
                    key = (embedder.preprocess, batch_size if cuda else None)
                    if key not in decode_cache:
                        decode_cache[key] = best_of(args.repeats, bench.decode_img_s, embedder, batch_size)
                    decode = decode_cache[key]
                    preprocess_of[short] = embedder.preprocess
                    figures[f"{short}_decode_img_s" + (f"_bs{batch_size}" if cuda else "")] = round(decode, 1)
                    forward_runs: list[float] = []
                    for repeat in range(args.repeats):  # interleaved, so a burst of foreign load hits both alike
                        forward_runs.append(bench.forward_img_s(embedder, batch_size))
                        rate, failed = bench.e2e(worker, f"{run_id}-r{repeat}")
                        e2e_runs.append(rate)
                    forward = max(forward_runs)
                    figures[f"{short}_forward_img_s_bs{batch_size}"] = round(forward, 1)
                    limit = min(decode, forward)
                    serial = 1 / (1 / read_rate + 1 / decode + 1 / forward + 1 / write_rate)
                e2e = max(e2e_runs)
                figures[f"{short}_e2e_img_s_bs{batch_size}"] = round(e2e, 1)
                if args.repeats > 1:
                    figures[f"{short}_e2e_img_s_bs{batch_size}_worst"] = round(min(e2e_runs), 1)
                figures[f"{short}_e2e_ratio_to_limit_bs{batch_size}"] = round(e2e / limit, 3)
                figures[f"{short}_serial_bound_img_s_bs{batch_size}"] = round(serial, 1)
                figures[f"{short}_e2e_ratio_to_serial_bs{batch_size}"] = round(e2e / serial, 3)
                if failed:
                    figures[f"{short}_e2e_failed_bs{batch_size}"] = failed
                parts = f"decode {decode:8.1f}  forward {forward:8.1f}  " if decode is not None else ""
                row = (
                    f"{short:<8} bs {batch_size:<4} e2e {e2e:8.1f} img/s  {parts}limit {limit:8.1f}  "
                    f"e2e/limit {e2e / limit:5.2f}  serial bound {serial:8.1f}  e2e/serial {e2e / serial:5.2f}"
                )
                row_shares.append(meter.foreign_share(since))
                print(f"{row}  (others' CPU {row_shares[-1]:.0%})", flush=True)
            del worker, embedder
            if cuda:
                torch.cuda.empty_cache()
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    if len(set(preprocess_of.values())) == 1:  # one preprocessing, hence one decode figure (per batch size)
        figures = collapse_decode(figures, list(preprocess_of))
    figures["loadavg_1m_start"] = round(load_start, 2)
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    figures["foreign_cpu_share"] = round(meter.foreign_share(), 3)
    figures["foreign_cpu_share_max_row"] = round(max(row_shares, default=0.0), 3)
    notes: list[str] = []
    if figures["foreign_cpu_share_max_row"] > 0.1:
        notes.append(
            f"CAUTION: other processes used up to {figures['foreign_cpu_share_max_row']:.0%} of the machine's CPU "
            "time during a model/batch-size row (foreign_cpu_share*: /proc/stat busy time minus this process's): "
            "those rows are pessimistic."
        )
    notes += [
        "img/s throughout. e2e = EmbedBlocks over blocks of --block-size image ids in a local BlobStore (files just "
        "written, so in the page cache) -> float16 vectors + Parquet index in a local store, one process, model load "
        "excluded (<model>_load_s). decode = the embedder's own decode+resize+crop on in-memory bytes "
        + (
            "(_gpu_pixels: batched nvjpeg, then one GPU resize per distinct image shape, per batch size)"
            if cuda
            else "(_cpu_pixels: Pillow, one image at a time, one core)"
        )
        + "; forward = embedder.forward on random ready tensors "
        + (
            f"({args.precision} autocast, channels_last{', torch.compile' if args.compile else ''})"
            if cuda
            else f"(fp32, {args.threads} torch threads)"
        )
        + ". ratio_to_limit = e2e / min(decode, forward); serial_bound = 1/(1/blob_read + 1/decode + 1/forward + "
        "1/write_block): the worker runs these one after another with no overlap. builtin has no forward: its "
        "limit is embedder.embed on in-memory bytes (builtin_embed_img_s_*). Random weights.",
        f"Images: {args.n} distinct {WIDTH}x{HEIGHT} JPEG q{QUALITY}, mean {figures['mean_image_bytes']:.0f} bytes. "
        f"Every batch size reuses one loaded model per model (EmbedBlocks.stage swapped; the worker reads only "
        f"stage.batch_size). Warm-up: {args.warmup} full batch(es) + one of each shorter length before timing.",
    ]
    if not cuda:
        notes.append(
            f"CPU: one process with cpus_per_actor = torch threads = {args.threads}; the pipeline's default "
            "(cpus_per_actor 1) instead runs one single-thread actor per core, which can overlap decode on "
            "one core with forward on another."
        )
    if mods["stubbed"]:
        notes.append(f"Not installed, stood in for (never called on the embed path): {', '.join(mods['stubbed'])}.")
    if args.note:
        notes.append(args.note)
    print()
    print_figures(figures)

    if not args.no_write:
        write_result("embed_throughput", args.device, now, device=device, command=command, figures=figures,
                     output=args.output, machine=machine, notes=" ".join(notes), models=models,
                     batch_sizes=batch_sizes, stubbed_modules=mods["stubbed"])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
