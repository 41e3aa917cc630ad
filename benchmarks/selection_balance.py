"""Selection benchmark: how evenly Vo et al.'s hierarchical k-means with resampling + balanced hierarchical sampling
(`curation.select.kmeans.hierarchical_kmeans` + `curation.select.balance.hierarchical_sample`) covers a long-tailed
set, beside random sampling and flat k-means + balanced sampling; and how fast the hierarchical k-means runs,
beside FAISS k-means on the same levels.

    python benchmarks/selection_balance.py                        # CPU defaults: about 3-6 minutes on 2 cores
    python benchmarks/selection_balance.py --seeds 1 --n 10000 --no-write      # smoke run, about 1.5 minutes
    python benchmarks/selection_balance.py --device cuda --n 1000000 --levels 10000,1000,100,10 \\
        --steps 1,10,10,10 --iterations 50                       # the paper-scale speed workload (GPU session)

Part 1, balance quality (labels are only used to score; every method sees unlabelled points):

* toy: a 2-D mixture of `--toy-modes` (20) Gaussians with Zipf(1.1) sizes (`--toy-n` points), the largest mode
  also the densest (a 5x smaller spread than the others). A subset of `--toy-target` points is drawn by
  (a) uniform random sampling, (b) flat k-means (k = the finest level's clusters) + balanced sampling over those
  clusters (`hierarchical_sample` on a one-level path, i.e. water-filling), (c) `hierarchical_kmeans` with
  resampling on `--balance-levels` / `--balance-steps` + `hierarchical_sample` (rule random; rule closest too), and
  (d) the same hierarchy without resampling (ablation). Scores per subset, from the generating mode of each point:
  normalised entropy of the per-mode histogram (H / ln modes: 1 = perfectly even), modes covered, min and max
  per-mode count; mean (and std for entropy) over `--seeds` method seeds on the same data. `_oracle` = water-filling
  on the true labels (the best any selection can do), `_pool` = the whole long-tailed set. PNG: a scatter plot of
  the data and the three subsets (seed 0).
* fmnist: Fashion-MNIST's training set (Debian's `dataset-fashion-mnist`, IDX files), class sizes following a
  Zipf law (`--fmnist-top` / rank^`--fmnist-exponent`: 3000 ... 94; ranks given to classes by a seeded
  permutation), each 28x28 image encoded as PNG and embedded by the `builtin` embedder (a weight-free 16x16
  thumbnail descriptor: no pretrained weights exist offline, and a randomly initialised ViT is not a real model,
  so this is the only honest embedding available here; it is pixel-based, not semantic). Same methods and scores
  over the 10 classes, subset of `--fmnist-target`. PNG: per-class bar chart.

Part 2, speed: `hierarchical_kmeans` on N x `--dim` (768) L2-normalised vectors from a mixture of N/50 Gaussians
with Zipf(1.1) sizes, levels `--levels` (finest first), resampling steps `--steps`, `--iterations` Lloyd
iterations, beside FAISS: `faiss.Kmeans(niter=iterations)` per level on the centroids of the level below (no
resampling, no k-means++: FAISS seeds at random), plus the assignment of each level's input, as ours does. Also
our hierarchy with no resampling (like for like with FAISS), and our time split (k-means++ seeding, distance
passes, resampling steps) by wrapping the module's functions in this process (the code under test is unchanged).
The paper-scale workload (N=1M, levels 10k/1k/100/10, steps 1/10/10/10, 50 iterations) is far too big for a
2-core CPU; the defaults scale it down to N=50k, levels 500/50/10, steps 1/10/10, 10 iterations.

`--device auto|cpu|cuda`: cpu hides CUDA from torch (CUDA_VISIBLE_DEVICES=""), so our k-means runs in torch on the
CPU; cuda needs torch to see a GPU (ours then runs there, float16 products) and FAISS's k-means uses its GPU where
faiss has one.
Every timed section records /proc/loadavg at its start and end and the CPU share other processes used.
Results: `benchmarks/results/selection_balance-<cpu|cuda>-<date>.json` and PNGs beside it. Timings are reported,
never asserted; nothing imports this file.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    FASHION_MNIST_DIR,
    cores,
    cpu_model,
    fashion_mnist_installed,
    print_figures,
    read_idx,
    write_result,
    zipf_mixture,
)

RESULTS = Path(__file__).resolve().parent / "results"
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


class Section:
    """A timed section: /proc/loadavg at start and end, and the share of all cores' time other processes used
    (/proc/stat busy time minus this process's own)."""

    log: dict[str, dict[str, Any]] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def _busy() -> tuple[float, float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        own = os.times()
        return busy, own.user + own.system, time.perf_counter()

    def __enter__(self) -> Section:
        self.load_start = loadavg()
        self.start = self._busy()
        print(f"[{self.name}] start, /proc/loadavg: {self.load_start}", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        busy1, own1, wall1 = self._busy()
        busy0, own0, wall0 = self.start
        foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(1e-9, (wall1 - wall0) * cores())
        entry = {"loadavg_start": self.load_start, "loadavg_end": loadavg(), "wall_s": round(wall1 - wall0, 2),
                 "foreign_cpu_share": round(foreign, 3)}  # fmt: skip
        Section.log[self.name] = entry
        print(f"[{self.name}] end after {entry['wall_s']:.1f} s, /proc/loadavg: {entry['loadavg_end']}, "
              f"others' CPU share {foreign:.0%}", flush=True)  # fmt: skip


# --- scores --------------------------------------------------------------------------------------------------
def scores(labels: np.ndarray, classes: int) -> dict[str, float]:
    counts = np.bincount(labels, minlength=classes)
    p = counts[counts > 0] / counts.sum()
    return {"entropy": float(-(p * np.log(p)).sum() / math.log(classes)), "covered": int((counts > 0).sum()),
            "min": int(counts.min()), "max": int(counts.max())}  # fmt: skip


def parse_levels(clusters: str, steps: str, sample_size: int, selection: str):
    from curation.select.kmeans import Level

    ks = [int(v) for v in clusters.split(",")]
    ss = [int(v) for v in steps.split(",")]
    if len(ks) != len(ss):
        raise SystemExit(f"levels {clusters!r} and steps {steps!r} differ in length")
    return [Level(k, s, sample_size, selection) for k, s in zip(ks, ss)]


def select_all(points: np.ndarray, target: int, levels, seed: int, iterations: int) -> dict[str, np.ndarray]:
    """Indices of a `target`-sized subset per method (see the module docstring)."""
    from dataclasses import replace

    from curation.select.balance import hierarchical_sample
    from curation.select.kmeans import hierarchical_kmeans, kmeans

    rng = np.random.default_rng(seed)
    chosen = {"random": np.sort(rng.choice(len(points), target, replace=False))}
    _, flat_labels = kmeans(points, levels[0].clusters, iterations=iterations, seed=seed)
    chosen["flat_kmeans"] = hierarchical_sample(flat_labels[:, None], target, seed=seed)
    paths, centroids = hierarchical_kmeans(points, levels, seed=seed, iterations=iterations)
    chosen["hkmeans"] = hierarchical_sample(paths, target, seed=seed)
    distances = ((points - centroids[0][paths[:, -1]]) ** 2).sum(axis=1)
    chosen["hkmeans_closest"] = hierarchical_sample(paths, target, seed=seed, rule="closest", distances=distances)
    plain = [replace(level, resampling_steps=0) for level in levels]
    paths, _ = hierarchical_kmeans(points, plain, seed=seed, iterations=iterations)
    chosen["hkmeans_noresample"] = hierarchical_sample(paths, target, seed=seed)
    return chosen


METHODS = ["random", "flat_kmeans", "hkmeans", "hkmeans_closest", "hkmeans_noresample"]


def balance_figures(prefix: str, points: np.ndarray, labels: np.ndarray, classes: int, target: int, levels,
                    seeds: int, iterations: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:  # fmt: skip
    from curation.select.balance import water_fill

    figures: dict[str, float] = {}
    per_method: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    first: dict[str, np.ndarray] = {}
    for seed in range(seeds):
        started = time.perf_counter()
        chosen = select_all(points, target, levels, seed, iterations)
        for method, indices in chosen.items():
            assert len(indices) == target, (method, len(indices))
            per_method[method].append(scores(labels[indices], classes))
        first = first or chosen
        row = ", ".join(f"{m} {per_method[m][-1]['entropy']:.3f}" for m in METHODS)
        print(f"  seed {seed}: entropy {row} ({time.perf_counter() - started:.1f} s)", flush=True)
    pool = np.bincount(labels, minlength=classes)
    oracle = water_fill(pool, target, np.random.default_rng(0))
    oracle_labels = np.repeat(np.arange(classes), oracle)
    for name, values in (("pool", scores(labels, classes)), ("oracle", scores(oracle_labels, classes))):
        figures[f"{prefix}_entropy_{name}"] = round(values["entropy"], 4)
        figures[f"{prefix}_min_{name}"], figures[f"{prefix}_max_{name}"] = values["min"], values["max"]
    for method in METHODS:
        runs = per_method[method]
        entropy = np.array([r["entropy"] for r in runs])
        figures[f"{prefix}_entropy_{method}"] = round(float(entropy.mean()), 4)
        figures[f"{prefix}_entropy_{method}_std"] = round(float(entropy.std()), 4)
        for key in ("covered", "min", "max"):
            figures[f"{prefix}_{key}_{method}"] = round(float(np.mean([r[key] for r in runs])), 1)
    return figures, first


# --- part 1a: 2-D toy ------------------------------------------------------------------------------------------
def toy_mixture(count: int, modes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points [n, 2], mode label [n], mode centres): Zipf(1.1) sizes, mode 0 the largest and the densest."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, modes + 1) ** 1.1
    sizes = np.maximum(1, np.round(count * weights / weights.sum()).astype(np.int64))
    centres: list[np.ndarray] = []
    while len(centres) < modes:  # well separated centres, so a point's generating mode is its concept
        candidate = rng.uniform(-12, 12, 2)
        if all(np.linalg.norm(candidate - c) >= 4.5 for c in centres):
            centres.append(candidate)
    spread = rng.uniform(0.5, 1.0, modes)
    spread[0] = 0.12  # the big mode is also very dense
    labels = np.repeat(np.arange(modes), sizes)
    points = np.asarray(centres)[labels] + rng.standard_normal((len(labels), 2)) * spread[labels, None]
    return points.astype(np.float32), labels, np.asarray(centres)


def plot_toy(path: Path, points: np.ndarray, labels: np.ndarray, chosen: dict[str, np.ndarray],
             figures: dict[str, float]) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("data", None), ("random", "random"), ("flat k-means + balanced", "flat_kmeans"),
              ("hierarchical k-means + resampling", "hkmeans")]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.4), sharex=True, sharey=True)
    for ax, (title, method) in zip(axes, panels):
        if method is None:
            ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab20", s=1, alpha=0.5, rasterized=True)
            ax.set_title(f"long-tailed data: {len(points)} points, {labels.max() + 1} modes")
        else:
            ax.scatter(points[:, 0], points[:, 1], c="0.85", s=1, rasterized=True)
            subset = chosen[method]
            ax.scatter(points[subset, 0], points[subset, 1], c=labels[subset], cmap="tab20", s=5,
                       vmin=0, vmax=labels.max())  # fmt: skip
            ax.set_title(f"{title}\n{len(subset)} points, entropy {figures[f'toy_entropy_{method}']:.3f}, "
                         f"min/max {figures[f'toy_min_{method}']:.0f}/{figures[f'toy_max_{method}']:.0f}")  # fmt: skip
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- part 1b: long-tailed Fashion-MNIST -------------------------------------------------------------------------
def fmnist_longtail(top: int, exponent: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [n, 28, 28] uint8, class labels [n], count per class): class at rank r gets top / r^exponent."""
    images = read_idx("train-images-idx3-ubyte")
    labels = read_idx("train-labels-idx1-ubyte").astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(10)  # order[r] = the class at rank r + 1
    counts = np.zeros(10, np.int64)
    counts[order] = np.floor(top / np.arange(1, 11) ** exponent).astype(np.int64)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), counts[c], replace=False) for c in range(10)])
    picked = rng.permutation(picked)
    return images[picked], labels[picked], counts


def embed_builtin(images: np.ndarray) -> np.ndarray:
    from PIL import Image

    from curation.config import EmbedStage
    from curation.embed.registry import create_embedder

    embedder = create_embedder(EmbedStage(model="builtin"))
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, "L").save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    vectors, errors = embedder.embed(encoded)
    failed = [e for e in errors if e]
    if failed:
        raise SystemExit(f"builtin embedder failed on {len(failed)} images, e.g. {failed[0]}")
    return vectors


def plot_fmnist(path: Path, labels: np.ndarray, chosen: dict[str, np.ndarray], figures: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool = np.bincount(labels, minlength=10)
    order = np.argsort(-pool)
    fig, axes = plt.subplots(1, 2, figsize=(16, 5))
    axes[0].bar(range(10), pool[order], color="0.6")
    axes[0].set_title(f"long-tailed Fashion-MNIST pool: {len(labels)} images")
    width = 0.27
    for offset, (method, title) in enumerate([("random", "random"), ("flat_kmeans", "flat k-means + balanced"),
                                              ("hkmeans", "hierarchical k-means + resampling")]):  # fmt: skip
        counts = np.bincount(labels[chosen[method]], minlength=10)[order]
        axes[1].bar(np.arange(10) + (offset - 1) * width, counts, width,
                    label=f"{title} (entropy {figures[f'fmnist_entropy_{method}']:.3f})")  # fmt: skip
    axes[1].set_title(f"class histogram of a {len(chosen['random'])}-image subset (seed 0; builtin embedder)")
    axes[1].legend()
    for ax in axes:
        ax.set_xticks(range(10), [FMNIST_CLASSES[c] for c in order], rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- part 2: speed -----------------------------------------------------------------------------------------------
class Instrumented:
    """Wraps curation.select.kmeans's kmeans_plus_plus, _nearest (the distance pass) and resample (looked up as
    module globals by the code under test) to sum their wall time, in this process only. A call made inside
    another timed one (distance passes inside seeding or a resampling step) counts towards the outer one only."""

    def __init__(self, sync: Callable[[], None]) -> None:
        import curation.select.kmeans as module

        self.inside: str | None = None
        self.reset()

        def wrap(key: str, original):
            def timed(*args, **kwargs):
                outer = self.inside
                self.inside = outer or key
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    sync()
                    self.inside = outer
                    if key == "assign_s":
                        self.assign_calls += 1
                    if outer is None:
                        self.totals[key] += time.perf_counter() - started

            return timed

        module.kmeans_plus_plus = wrap("seeding_s", module.kmeans_plus_plus)
        module._nearest = wrap("assign_s", module._nearest)
        module.resample = wrap("resample_s", module.resample)

    def reset(self) -> None:
        self.totals = {"seeding_s": 0.0, "assign_s": 0.0, "resample_s": 0.0}
        self.assign_calls = 0


def faiss_hierarchy(points: np.ndarray, levels, iterations: int, seed: int, gpu: bool) -> list[np.ndarray]:
    import faiss

    current = np.ascontiguousarray(points, np.float32)
    labels_per_level = []
    for number, level in enumerate(levels, start=1):
        kmeans = faiss.Kmeans(current.shape[1], min(level.clusters, len(current)), niter=iterations,
                              seed=seed + number, max_points_per_centroid=1 << 30, gpu=gpu, verbose=False)  # fmt: skip
        kmeans.train(current)
        _, labels = kmeans.index.search(current, 1)
        labels_per_level.append(labels[:, 0])
        current = np.ascontiguousarray(kmeans.centroids)
    return labels_per_level


def speed_figures(args, levels, sync, suffix: str, notes: list[str]) -> dict[str, float]:
    from dataclasses import replace

    import faiss

    from curation.select.kmeans import hierarchical_kmeans

    figures: dict[str, float] = {}
    gpu = args.device == "cuda" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    figures["faiss_gpu"] = int(gpu)
    timer = Instrumented(sync)
    warm = zipf_mixture(2000, args.dim, args.seed + 1)  # warm-up: BLAS, OpenMP pool, faiss and torch paths
    hierarchical_kmeans(warm, parse_levels("20,5", "1,1", 10, "closest"), iterations=2)
    faiss_hierarchy(warm, parse_levels("20,5", "0,0", 10, "closest"), 2, 0, gpu)
    started = time.perf_counter()
    vectors = zipf_mixture(args.n, args.dim, args.seed)
    figures[f"generate_s_{suffix}"] = round(time.perf_counter() - started, 2)
    print(f"  {args.n} x {args.dim} vectors made in {figures[f'generate_s_{suffix}']:.1f} s", flush=True)

    faiss_s = None
    if not args.skip_faiss:
        times = []
        with Section("speed_faiss_kmeans"):
            for _ in range(args.faiss_repeats):
                started = time.perf_counter()
                faiss_hierarchy(vectors, levels, args.iterations, args.seed, gpu)
                times.append(time.perf_counter() - started)
        faiss_s = min(times)
        figures[f"faiss_kmeans_{args.device_kind}_s_{suffix}"] = round(faiss_s, 2)
        figures[f"faiss_kmeans_{args.device_kind}_s_{suffix}_worst"] = round(max(times), 2)
        print(f"  faiss.Kmeans hierarchy: best {faiss_s:.2f} s of {', '.join(f'{t:.2f}' for t in times)}", flush=True)

    runs = [("hkmeans", levels)]
    if not args.skip_noresample:
        runs.append(("hkmeans_noresample", [replace(level, resampling_steps=0) for level in levels]))
    for name, run_levels in runs:
        timer.reset()
        with Section(f"speed_{name}"):
            started = time.perf_counter()
            _, centroids = hierarchical_kmeans(vectors, run_levels, seed=args.seed, iterations=args.iterations)
            total = time.perf_counter() - started
        figures[f"{name}_centroid_bytes_per_value"] = centroids[0].dtype.itemsize  # 4 = float32, 8 = float64
        split = dict(timer.totals)
        figures[f"{name}_{args.device_kind}_s_{suffix}"] = round(total, 2)
        for key, value in split.items():
            figures[f"{name}_{key}_{suffix}"] = round(value, 2)
        figures[f"{name}_other_s_{suffix}"] = round(total - sum(split.values()), 2)
        figures[f"{name}_assign_calls_{suffix}"] = timer.assign_calls
        if faiss_s:
            figures[f"{name}_vs_faiss_ratio_{suffix}"] = round(total / faiss_s, 2)
        ratio = f" = {total / faiss_s:.2f}x faiss" if faiss_s else ""
        print(f"  {name}: {total:.2f} s{ratio} (seeding {split['seeding_s']:.2f}, assign "
              f"{split['assign_s']:.2f} in {timer.assign_calls} calls, resampling {split['resample_s']:.2f}, "
              f"rest {total - sum(split.values()):.2f})", flush=True)  # fmt: skip
    if faiss_s:
        figures["hkmeans_vs_faiss_ratio"] = figures[f"hkmeans_vs_faiss_ratio_{suffix}"]
    return figures


def size_suffix(n: int) -> str:
    return f"n{n // 1_000_000}m" if n % 1_000_000 == 0 else f"n{n // 1000}k" if n % 1000 == 0 else f"n{n}"


# --- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto (cuda when torch sees one)")
    add("--seeds", type=int, default=3, help="method seeds per balance experiment (default 3)")
    add("--balance-levels", default="200,50,10", help="hierarchy for part 1, finest first (default 200,50,10)")
    add("--balance-steps", default="1,10,10", help="resampling steps per level for part 1 (default 1,10,10)")
    add("--balance-iterations", type=int, default=20, help="Lloyd iterations in part 1 (default 20)")
    add("--sample-size", type=int, default=10, help="points per cluster at each resampling step (default 10)")
    add("--selection", choices=("closest", "random"), default="closest", help="resampling pick (default closest)")
    add("--toy-n", type=int, default=20_000, help="toy points (default 20000)")
    add("--toy-modes", type=int, default=20, help="toy modes (default 20)")
    add("--toy-target", type=int, default=1000, help="toy subset size (default 1000)")
    add("--fmnist-top", type=int, default=3000, help="images in the largest class (default 3000)")
    add("--fmnist-exponent", type=float, default=1.5, help="Zipf exponent of class sizes (default 1.5: 3000..94)")
    add("--fmnist-target", type=int, default=1000, help="Fashion-MNIST subset size (default 1000)")
    add("--n", type=int, default=50_000, help="speed: vectors (default 50000)")
    add("--dim", type=int, default=768, help="speed: dimension (default 768)")
    add("--levels", default="500,50,10", help="speed: clusters per level, finest first (default 500,50,10)")
    add("--steps", default="1,10,10", help="speed: resampling steps per level (default 1,10,10)")
    add("--iterations", type=int, default=10, help="speed: Lloyd iterations, ours and faiss (default 10)")
    add("--skip-noresample", action="store_true", help="speed: skip our no-resampling hierarchy")
    add("--skip-faiss", action="store_true", help="speed: skip the faiss baseline (no ratios)")
    add("--faiss-repeats", type=int, default=3, help="speed: faiss runs, best kept (default 3)")
    add("--skip-balance", action="store_true", help="skip part 1")
    add("--skip-speed", action="store_true", help="skip part 2")
    add("--seed", type=int, default=0, help="data seed (default 0)")
    add("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    add("--no-write", action="store_true", help="print figures only, write no result file or plot")
    args = parser.parse_args(argv)

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: our k-means then runs on the CPU
    import faiss
    import torch  # curation.select.kmeans imports it to look for CUDA: paid once here, outside the timings

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch sees no CUDA device")
    args.device = "cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu"
    args.device_kind = "gpu" if args.device == "cuda" else "cpu"

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    now = datetime.now(UTC)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", __file__, *argv])
    gpu_name = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    device = f"cuda: {gpu_name}" if gpu_name else f"cpu: {cpu_model()}, {cores()} cores"
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
               "cores": cores(), "gpu": gpu_name, "numpy": np.__version__, "faiss": faiss.__version__,
               "faiss_omp_threads": faiss.omp_get_max_threads(), "torch": torch.__version__}  # fmt: skip
    print(f"machine: {machine['platform']}, python {machine['python']}, {machine['cpu']}, {machine['cores']} cores, "
          f"numpy {np.__version__}, faiss {faiss.__version__}, torch {torch.__version__}")  # fmt: skip
    print(f"device:  {device}")
    print(f"date:    {now:%Y-%m-%d %H:%M:%S} UTC")
    print(f"command: {command}")
    print(f"load:    /proc/loadavg {loadavg()}", flush=True)

    figures: dict[str, Any] = {}
    notes: list[str] = []
    stem = f"selection_balance-{args.device}-{now:%Y-%m-%d}"
    plots: list[str] = []
    Section.log = {}
    if not args.skip_balance:
        levels = parse_levels(args.balance_levels, args.balance_steps, args.sample_size, args.selection)
        print(f"\ntoy: {args.toy_n} 2-D points, {args.toy_modes} Zipf(1.1) modes, subset {args.toy_target}", flush=True)
        points, labels, _ = toy_mixture(args.toy_n, args.toy_modes, args.seed)
        with Section("balance_toy"):
            toy, chosen = balance_figures("toy", points, labels, args.toy_modes, args.toy_target, levels,
                                          args.seeds, args.balance_iterations)  # fmt: skip
        figures.update(toy)
        if not args.no_write:
            plot = RESULTS / f"{stem}-toy.png"
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot_toy(plot, points, labels, chosen, toy)
            plots.append(str(plot.relative_to(REPO)))

        if fashion_mnist_installed():
            images, labels, counts = fmnist_longtail(args.fmnist_top, args.fmnist_exponent, args.seed)
            print(f"\nfmnist: {len(images)} images, class sizes {sorted(counts.tolist(), reverse=True)}, subset "
                  f"{args.fmnist_target}", flush=True)  # fmt: skip
            with Section("fmnist_embed"):
                started = time.perf_counter()
                vectors = embed_builtin(images)
                figures["fmnist_embed_img_s"] = round(len(images) / (time.perf_counter() - started), 1)
            figures["fmnist_images"] = len(images)
            with Section("balance_fmnist"):
                fm, chosen = balance_figures("fmnist", vectors, labels, 10, args.fmnist_target, levels, args.seeds,
                                             args.balance_iterations)  # fmt: skip
            figures.update(fm)
            figures["fmnist_entropy_balanced"] = fm["fmnist_entropy_hkmeans"]  # the name for it
            for class_id, size in enumerate(counts):
                figures[f"fmnist_class_size_{class_id}"] = int(size)
            if not args.no_write:
                plot = RESULTS / f"{stem}-fmnist.png"
                plot_fmnist(plot, labels, chosen, fm)
                plots.append(str(plot.relative_to(REPO)))
        else:
            notes.append(
                f"Fashion-MNIST not found under {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist): "
                "part 1b skipped."
            )

    if not args.skip_speed:
        levels = parse_levels(args.levels, args.steps, args.sample_size, args.selection)
        suffix = size_suffix(args.n)
        print(f"\nspeed: N={args.n}, levels {args.levels}, steps {args.steps}, {args.iterations} iterations, "
              f"device {args.device}", flush=True)  # fmt: skip
        figures.update(speed_figures(args, levels, sync, suffix, notes))

    for name, entry in Section.log.items():
        figures[f"loadavg_1m_start_{name}"] = float(entry["loadavg_start"].split()[0])
        figures[f"loadavg_1m_end_{name}"] = float(entry["loadavg_end"].split()[0])
        figures[f"foreign_cpu_share_{name}"] = entry["foreign_cpu_share"]
    if any(entry["foreign_cpu_share"] > 0.1 for entry in Section.log.values()):
        notes.insert(0, "CAUTION: other processes used over 10 % of the machine's CPU time in some timed sections "
                        "(foreign_cpu_share_*; /proc/stat busy time minus this process's): timings are "
                        "pessimistic.")  # fmt: skip
    notes += [
        "Balance (part 1): entropy = H(per-mode or per-class histogram of the subset) / ln(modes), 1 = perfectly "
        f"even; mean over {args.seeds} method seeds (_std = spread), covered/min/max are means too. Methods: random = "
        "uniform sampling; flat_kmeans = curation kmeans (k = finest level) + hierarchical_sample on the one-level "
        "path (water-filling over flat clusters); hkmeans = hierarchical_kmeans (levels "
        f"{args.balance_levels}, steps {args.balance_steps}, sample_size {args.sample_size}, selection "
        f"{args.selection}, {args.balance_iterations} iterations) + hierarchical_sample rule random; hkmeans_closest "
        "= same hierarchy, rule closest; hkmeans_noresample = the hierarchy with 0 resampling steps (ablation); "
        "oracle = water-filling on the true labels; pool = the whole set.",
        f"Toy: {args.toy_n} 2-D points, {args.toy_modes} Gaussian modes, Zipf(1.1) sizes, centres >= 4.5 apart in "
        "[-12, 12]^2, spread 0.5-1.0, mode 0 (the largest) spread 0.12; subset of "
        f"{args.toy_target}.",
        f"Fashion-MNIST: train split, class at rank r gets floor({args.fmnist_top} / r^{args.fmnist_exponent}) "
        "images (ranks by a seeded permutation; fmnist_class_size_<id> per class id, ids in Fashion-MNIST order), "
        "each 28x28 image encoded as PNG and embedded by the builtin embedder: a weight-free 16x16 thumbnail "
        "descriptor (768-d, per-channel z-scored pixels). No pretrained weights are available offline and a "
        "randomly initialised ViT is not a real model, so this pixel-space embedding is what the clustering sees: "
        "balance over classes is limited by how well raw thumbnails separate the classes, not only by the method.",
        f"Speed (part 2): {args.n} x {args.dim} L2-normalised vectors, mixture of N/50 Gaussians with Zipf(1.1) "
        f"sizes; levels {args.levels} (finest first), resampling steps {args.steps}, sample_size {args.sample_size}, "
        f"{args.iterations} Lloyd iterations. The paper-scale workload is N=1M, levels 10000/1000/100/10, steps "
        "1/10/10/10, 50 iterations; on a 2-core CPU it is scaled down to these numbers. Baseline: faiss.Kmeans "
        "(niter equal, max_points_per_centroid unlimited, random init, no resampling) per level on the centroids of "
        "the level below, plus a search of each level's input, as ours does; best of --faiss-repeats runs (_worst: "
        "the slowest), ours run once. hkmeans_vs_faiss_ratio = ours (with resampling) / faiss; "
        "hkmeans_noresample_vs_faiss_ratio is like for like. Split: seeding_s = our k-means++ (on a subsample of "
        "64 x k points, in at most 128 batched D^2 rounds, distance passes included), assign_s = the distance "
        "passes (_nearest) outside seeding and resampling, assign_calls their count, resample_s = the resampling "
        "steps, other_s = the rest (mostly the Lloyd update: index_add_ cluster sums). faiss_gpu = 1 where faiss's "
        "k-means ran on a GPU (a faiss GPU build on CUDA). <run>_centroid_bytes_per_value = itemsize of the finest "
        "centroids hierarchical_kmeans returned (4 = float32). "
        "fmnist_entropy_balanced = fmnist_entropy_hkmeans.",
    ]
    print("\nfigures:")
    print_figures(figures)
    if not args.no_write:
        write_result("selection_balance", args.device, now, device=device, command=command, figures=figures,
                     output=args.output, machine=machine, notes=" ".join(notes), loadavg=Section.log,
                     plots=plots)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
