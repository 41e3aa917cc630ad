"""What the benchmarks share: the machine, date and command they record, the CPU meter, the Fashion-MNIST
reader, and where results go."""

from __future__ import annotations

import gzip
import json
import lzma
import math
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# Debian's dataset-fashion-mnist; FASHION_MNIST_DIR points elsewhere (e.g. a copy carried to a lent GPU machine)
FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuMeter:
    """CPU seconds used by other processes while we measure (system busy time from /proc/stat minus our own): on a
    shared machine a high share means the row's timings are pessimistic."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self.snapshot()

    def snapshot(self) -> tuple[float, float, float]:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / self.tick  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        own = os.times()
        return busy, own.user + own.system, time.perf_counter()

    def foreign_share(self, since: tuple[float, float, float] | None = None) -> float:
        """Share of all cores' time used by other processes since `since` (default: construction)."""
        busy0, own0, wall0 = since or self.start
        busy1, own1, wall1 = self.snapshot()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(1e-9, (wall1 - wall0) * cores())


def cpu_device() -> str:
    """The result files' `device` for a CPU run."""
    return f"cpu: {cpu_model()}, {cores()} cores"


def fashion_mnist_installed() -> bool:
    return any((FASHION_MNIST_DIR / f"train-images-idx3-ubyte{suffix}").is_file() for suffix in (".gz", ".xz"))


def read_idx(name: str) -> np.ndarray:
    """A Fashion-MNIST IDX array (`train-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, ...) from
    FASHION_MNIST_DIR, gzip-compressed as Debian ships it or xz-compressed (smaller, to carry)."""
    for suffix, opener in ((".gz", gzip.open), (".xz", lzma.open)):
        path = FASHION_MNIST_DIR / f"{name}{suffix}"
        if path.is_file():
            with opener(path) as handle:
                data = handle.read()
            dims = data[3]
            shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
            return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise FileNotFoundError(f"{FASHION_MNIST_DIR}/{name}.gz (apt-get install dataset-fashion-mnist)")


def load_fashion_mnist() -> np.ndarray | None:
    """(count, 28, 28) uint8 training images, or None when the data set is not installed."""
    return read_idx("train-images-idx3-ubyte") if fashion_mnist_installed() else None


def zipf_mixture(count: int, dim: int, seed: int, near_duplicates: float = 0.0) -> np.ndarray:
    """Seeded float32 unit vectors shaped like real embeddings, not uniform noise: count/50 Gaussian clusters with
    Zipf(1.1) sizes, centres sharing a common direction (unrelated vectors have a cosine of ~0.2), each cluster
    with its own spread (member cosine ~0.3-0.7). A `near_duplicates` share of the vectors are 1-4 noisy copies of
    a clustered vector at cosine ~0.85-0.99 to it (copy-detection workloads). Rows come shuffled."""
    rng = np.random.default_rng(seed)
    base_count = count - int(count * near_duplicates)
    clusters = max(1, count // 50)
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    sizes = rng.multinomial(base_count, weights / weights.sum())
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres = 0.45 * common + centres / np.linalg.norm(centres, axis=1, keepdims=True)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.4, 2.3, clusters).astype(np.float32)  # sigma^2 * dim: member cosine ~1/(1+s)
    label = np.repeat(np.arange(clusters), sizes)
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, base_count, 65536):
        part = label[start : start + 65536]
        noise = rng.standard_normal((len(part), dim), dtype=np.float32)
        block = centres[part] + noise * np.sqrt(spread[part] / dim)[:, None]
        vectors[start : start + len(part)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    made = base_count
    while made < count:
        source = int(rng.integers(0, base_count))
        for _ in range(min(int(rng.integers(1, 5)), count - made)):
            cosine = rng.uniform(0.85, 0.99)
            noise = rng.standard_normal(dim, dtype=np.float32) * math.sqrt((1.0 / cosine**2 - 1.0) / dim)
            copy = vectors[source] + noise
            vectors[made] = copy / np.linalg.norm(copy)
            made += 1
    return vectors[rng.permutation(count)]


def command_line(argv: list[str] | None, script: str) -> str:
    """The command as typed (or as a caller passed `argv`), for the result file."""
    return shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", script, *argv])


def print_header(now: datetime, command: str, device: str) -> None:
    print(f"machine: {device}")
    print(f"date:    {now:%Y-%m-%d %H:%M:%S} UTC")
    print(f"command: {command}")


def print_figures(figures: dict[str, float]) -> None:
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"  {name:<{width}}  {value}")


def write_result(benchmark: str, device_kind: str, now: datetime, *, device: str, command: str,
                 figures: dict[str, float], output: Path | None = None, **extra: Any) -> Path:  # fmt: skip
    """benchmarks/results/<benchmark>-<device_kind>-<date>.json (or `output`), with device, date, command and
    the flat figures; `extra` (machine details, notes, ...) goes beside them."""
    output = output or RESULTS / f"{benchmark}-{device_kind}-{now:%Y-%m-%d}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": benchmark, "device": device, "date": now.strftime("%Y-%m-%d"),
              "datetime_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command, "figures": figures,
              **extra}  # fmt: skip
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {output}")
    return output


def utc_now() -> datetime:
    return datetime.now(UTC)
