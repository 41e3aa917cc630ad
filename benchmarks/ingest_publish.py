"""Ingest + publish benchmark: images/s (and images/s per core) of `curation.run` on N small distinct JPEGs.

    python benchmarks/ingest_publish.py                 # 10,000 images, writes benchmarks/results/...json
    python benchmarks/ingest_publish.py --n 200         # smoke run (seconds)
    python benchmarks/ingest_publish.py --profile       # also cProfile the local-executor run, print hot spots

Measured in one process, on the same generated images (all in the page cache after generation):

* baseline: a plain single-process loop doing the minimum comparable work per image: read the file's bytes,
  SHA-256 them, PIL open + load (full decode), append the bytes to a tar.
* local: the full pipeline (`execution.executor: local`, one core): plan, ingest, catalog commit, publish.
* ray: the full pipeline with `executor: ray`, `num_cpus` (default 2), Ray started and stopped by the run
  itself, exactly as `curate run` does it. The run's stats report executor start-up (`ray.init`) apart from
  the ingest seconds (`stats.startup_seconds`); Ray's shutdown is in neither, so it lands in `other`.
* ray_prestarted: the same pipeline with Ray already running in this process (`ray.init` timed separately as
  `ray_init_s`, `ray.shutdown` as `ray_shutdown_s`): a cross-check of ingest without Ray start-up.

Every pipeline run uses a fresh home (no blob is already stored). Images are Fashion-MNIST training images
(Debian's copy, if installed) upscaled to 64x64 / 96x72 / 128x96 RGB, with the image index written into a few
pixels so every file differs; without the data set, seeded noise. Timings are reported, never asserted: this
file is not a test and nothing imports it.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import logging
import os
import platform
import pstats
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import cores, cpu_model, load_fashion_mnist, print_figures, write_result  # noqa: E402

SIZES = ((64, 64), (96, 72), (128, 96))  # (width, height), cycled by index
RESULTS = Path(__file__).resolve().parent / "results"


# --- data ----------------------------------------------------------------------------------------------------


def make_image(index: int, base: np.ndarray | None, rng: np.random.Generator) -> Image.Image:
    width, height = SIZES[index % len(SIZES)]
    if base is None:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
        gray = Image.fromarray(base[index % len(base)]).resize((width, height), Image.Resampling.BILINEAR)
        channels = np.asarray(gray, dtype=np.uint8)
        tint = np.array([255 - (index % 97), 255 - (index % 89), 255 - (index % 83)], dtype=np.uint16)
        pixels = ((channels[..., None].astype(np.uint16) * tint) // 255).astype(np.uint8)
        pixels = np.ascontiguousarray(pixels)
    # The index, big-endian, in the first pixels of the top row: a tiny, deterministic perturbation.
    for position, byte in enumerate(index.to_bytes(4, "big")):
        pixels[0, position * 2 : position * 2 + 2, :] = byte
    return Image.fromarray(pixels, "RGB")


def generate(images: Path, n: int) -> dict[str, Any]:
    """Write n distinct JPEGs to `images` (idempotent: reuses a complete earlier generation of the same n)."""
    marker = images / ".generated.json"
    if marker.is_file() and json.loads(marker.read_text()).get("n") == n:
        return json.loads(marker.read_text())
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    base = load_fashion_mnist()
    rng = np.random.default_rng(20240601)
    digests = set()
    total = 0
    for index in range(n):
        buffer = io.BytesIO()
        make_image(index, base, rng).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        digests.add(hashlib.sha256(data).digest())
        total += len(data)
        (images / f"{index:06d}.jpg").write_bytes(data)
    if len(digests) != n:
        raise RuntimeError(f"generated {n} images but only {len(digests)} distinct byte strings")
    info = {
        "n": n,
        "source": "fashion-mnist train (upscaled, tinted, index-stamped)" if base is not None else "seeded noise",
        "bytes": total,
        "mean_bytes": round(total / n, 1),
        "sizes": [f"{w}x{h}" for w, h in SIZES],
    }
    marker.write_text(json.dumps(info))
    return info


def image_files(images: Path) -> list[Path]:
    return sorted(images.glob("*.jpg"))


# --- measurements --------------------------------------------------------------------------------------------
def run_baseline(files: list[Path], out: Path) -> float:
    """Read bytes, SHA-256, PIL open + load, add the bytes to a tar: one process, one core. Returns seconds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as archive:
        for path in files:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
            info = tarfile.TarInfo(f"{digest}.jpg")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return time.perf_counter() - started


def spec_for(images: Path, executor: str, num_cpus: int, block_size: int) -> dict[str, Any]:
    return {
        "name": "bench",
        "description": "ingest_publish benchmark",
        "sources": [{"name": "bench", "kind": "folder", "path": str(images)}],
        "stages": {"decode": {"min_side": 16}},
        "execution": {"executor": executor, "num_cpus": num_cpus, "block_size": block_size},
        "publish": {"shard_max_samples": 1000},
    }


def run_pipeline(spec: dict[str, Any], home: Path, profile: cProfile.Profile | None = None) -> dict[str, Any]:
    import curation

    shutil.rmtree(home, ignore_errors=True)
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    try:
        result = curation.run(spec, home=home, progress=False)
    finally:
        if profile is not None:
            profile.disable()
    seconds = time.perf_counter() - started
    stats = result.stats
    kept = stats["ingest"]["kept"]
    if kept != stats["ingest"]["inputs"] or stats["publish"]["samples"] != kept:
        raise RuntimeError(f"benchmark images were rejected or not published: {stats}")
    return {"seconds": seconds, "stats": stats, "version": result.version}


def ray_init(num_cpus: int) -> float:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as curation.executors.ray does for a private instance
    started = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    return time.perf_counter() - started


def ray_shutdown() -> float:
    import ray

    started = time.perf_counter()
    ray.shutdown()
    return time.perf_counter() - started


def print_profile(profile: cProfile.Profile, limit: int) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream).strip_dirs()
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    text = stream.getvalue()
    print(text)
    return text


# --- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of images (default 10000)")
    parser.add_argument("--workdir", type=Path, default=None, help="where images and homes go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (a given --workdir is always kept)")
    parser.add_argument("--num-cpus", type=int, default=2, help="Ray num_cpus for the ray runs (default 2)")
    parser.add_argument("--block-size", type=int, default=256, help="execution.block_size (default 256)")
    parser.add_argument("--skip-local", action="store_true", help="skip the executor: local run")
    parser.add_argument("--skip-prestarted", action="store_true", help="skip the run with Ray already started")
    parser.add_argument("--profile", action="store_true", help="also run local once more under cProfile, print it")
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    parser.add_argument("--no-write", action="store_true", help="print figures only, write no result file")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    now = datetime.now(UTC)
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": cores(),
    }
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", __file__, *argv])
    print(f"machine: {machine['platform']}, python {machine['python']}, {machine['cpu']}, {machine['cores']} cores")
    print(f"date:    {now:%Y-%m-%d %H:%M:%S} UTC")
    print(f"command: {command}")

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="curation-bench-")) if temporary else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir}")
    load_start = os.getloadavg()[0]
    print(f"load:    {load_start:.2f} (1-minute load average at start)")
    figures: dict[str, float] = {"n_images": args.n, "num_cpus": args.num_cpus, "block_size": args.block_size}
    notes: list[str] = []
    try:
        images = workdir / "images"
        started = time.perf_counter()
        data = generate(images, args.n)
        figures["generate_s"] = round(time.perf_counter() - started, 3)
        figures["mean_image_bytes"] = data["mean_bytes"]
        files = image_files(images)
        print(f"images:  {len(files)} JPEGs from {data['source']}, mean {data['mean_bytes']:.0f} bytes")
        n = len(files)

        seconds = run_baseline(files, workdir / "baseline" / "out.tar")
        figures["baseline_s"] = round(seconds, 3)
        figures["baseline_img_s"] = round(n / seconds, 1)
        print(f"baseline (1 core, read+sha256+PIL load+tar): {seconds:.2f} s, {n / seconds:.0f} img/s")

        if not args.skip_local:
            run = run_pipeline(spec_for(images, "local", 1, args.block_size), workdir / "home-local")
            add_run(figures, "local", run, n, cores_used=1)

        run = run_pipeline(spec_for(images, "ray", args.num_cpus, args.block_size), workdir / "home-ray")
        add_run(figures, "ray", run, n, cores_used=args.num_cpus)
        figures["ingest_ray_img_s_per_core"] = round(figures["ingest_ray_img_s"] / args.num_cpus, 1)
        figures["publish_s"] = figures["publish_ray_s"]
        if "startup_seconds" not in run["stats"]:
            notes.append("this curation version reports no startup_seconds: ingest_ray_* include ray.init.")

        if not args.skip_prestarted:
            figures["ray_init_s"] = round(ray_init(args.num_cpus), 3)
            try:
                spec = spec_for(images, "ray", args.num_cpus, args.block_size)
                run = run_pipeline(spec, workdir / "home-ray-warm")
            finally:
                figures["ray_shutdown_s"] = round(ray_shutdown(), 3)
            add_run(figures, "ray_prestarted", run, n, cores_used=args.num_cpus)

        base = figures["baseline_img_s"]
        for name, used in (("ray", args.num_cpus), ("ray_prestarted", args.num_cpus), ("local", 1)):
            if f"e2e_{name}_img_s" in figures:
                figures[f"ratio_{name}_per_core_vs_baseline"] = round(figures[f"e2e_{name}_img_s"] / used / base, 3)
        if "ingest_ray_img_s_per_core" in figures:
            figures["ratio_ingest_ray_per_core_vs_baseline"] = round(figures["ingest_ray_img_s_per_core"] / base, 3)
        if "e2e_local_img_s" in figures:
            figures["speedup_ray_vs_local"] = round(figures["e2e_ray_img_s"] / figures["e2e_local_img_s"], 3)

        if args.profile:  # a separate run: profiling slows the code, so it never feeds the figures
            profile = cProfile.Profile()
            run_pipeline(spec_for(images, "local", 1, args.block_size), workdir / "home-profile", profile)
            print("\ncProfile of one more executor: local run (not part of the figures):")
            print_profile(profile, 30)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    figures["loadavg_1m_start"] = round(load_start, 2)
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if load_start > 0.5:
        notes.append(
            f"CAUTION: the 1-minute load average was {load_start:.2f} at start: other processes were using this "
            f"{machine['cores']}-core machine, so the timings are pessimistic; rerun on an idle machine."
        )
    notes += [
        "e2e_* = wall seconds of curation.run (plan + ingest + catalog commit + publish, fresh home each time); "
        "per_core divides by the executor's cores (num_cpus for ray, 1 for local). The Ray driver process also "
        "runs the serial plan/commit/publish steps on the same machine.",
        "e2e_ray includes Ray start-up (startup_ray_s = stats.startup_seconds) and shutdown; "
        "ingest_<run>_s = stats.ingest.seconds (blocks only, start-up excluded); ingest_ray_img_s is thus ingest "
        "throughput without Ray start-up. ray_prestarted: Ray started before the run (ray_init_s) and stopped "
        "after it (ray_shutdown_s), outside its e2e time.",
        "other_<run>_s = e2e wall - plan - startup - ingest - publish: catalog commit, select decisions, run "
        "bookkeeping, and for the ray run the Ray shutdown.",
        "baseline = one process: read bytes, sha256, PIL open+load, append to tar (no catalog, no Parquet, "
        "no blob store, no manifest).",
    ]
    print()
    print_figures(figures)

    if not args.no_write:
        write_result("ingest_publish", "cpu", now, device=f"cpu: {machine['cpu']}, {machine['cores']} cores",
                     command=command, figures=figures, output=args.output, machine=machine,
                     notes=" ".join(notes))  # fmt: skip
    return 0


def add_run(figures: dict[str, float], name: str, run: dict[str, Any], n: int, *, cores_used: int) -> None:
    stats = run["stats"]
    seconds = run["seconds"]
    plan, ingest, publish = stats["plan"]["seconds"], stats["ingest"]["seconds"], stats["publish"]["seconds"]
    startup = stats.get("startup_seconds", 0.0)
    other = seconds - plan - startup - ingest - publish
    figures[f"e2e_{name}_s"] = round(seconds, 3)
    figures[f"e2e_{name}_img_s"] = round(n / seconds, 1)
    figures[f"e2e_{name}_img_s_per_core"] = round(n / seconds / cores_used, 1)
    figures[f"plan_{name}_s"] = plan
    figures[f"startup_{name}_s"] = startup
    figures[f"ingest_{name}_s"] = ingest
    figures[f"ingest_{name}_img_s"] = round(n / ingest, 1) if ingest else 0.0
    figures[f"other_{name}_s"] = round(other, 3)
    figures[f"publish_{name}_s"] = publish
    figures[f"publish_{name}_img_s"] = round(n / publish, 1) if publish else 0.0
    figures[f"shards_{name}"] = stats["publish"]["shards"]
    print(
        f"{name:<15} e2e {seconds:7.2f} s  {n / seconds:7.0f} img/s  {n / seconds / cores_used:7.0f} img/s/core  "
        f"(plan {plan:.2f}, startup {startup:.2f}, ingest {ingest:.2f}, publish {publish:.2f}, other {other:.2f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
