"""Selection on a pool left in its memory-mapped file, against the same work on a pool copied into memory, in
the same run: seconds and peak anonymous memory (RssAnon: the process's own memory, not the file's page cache) of
each, each in a fresh process.

- k-means: `StreamedPoints` (read chunk by chunk in every pass) against `Points` (copied to the device once),
  and `ShardedPoints` (`--shards` Ray actors on this machine, each holding its share; the driver's memory is
  reported, the actors' is not, and Ray's start-up is not timed).
- sample-based retrieval: the chunked exact top-k scan against a FAISS flat index over a float32 copy (with a GPU
  both modes are the scan on the GPU: our FAISS is the CPU build).

Streaming is what lets a pool larger than memory be curated; the price is reading the file once per pass. Both
ways give the same answer (tests/select/test_selection.py).

    .venv/bin/python benchmarks/selection_streaming.py                 # 1M x 768 float16 (1.5 GB): ~6 min
    .venv/bin/python benchmarks/selection_streaming.py --n 100000 --no-write
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    command_line,
    cores,
    cpu_model,
    print_figures,
    print_header,
    utc_now,
    write_result,
    zipf_mixture,
)


def rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(matrix_path: str, task: str, mode: str, args: argparse.Namespace) -> dict[str, float]:
    """One k-means or one retrieval in this process, `mode` resident or streamed; peak RssAnon sampled every
    20 ms."""
    import torch

    import curation.select.kmeans as kmeans_module
    from curation.select.retrieval import sample_based

    torch.set_num_threads(cores())
    matrix = np.load(matrix_path, mmap_mode="r")
    seeds = np.asarray(matrix[:: max(1, len(matrix) // args.seeds)][: args.seeds], np.float32)
    baseline, peak, running = rss_anon_bytes(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], rss_anon_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if mode == "streamed":
        kmeans_module.RESIDENT_BUDGET_BYTES = 0
    pool = None
    if mode == "sharded":
        from curation.executors.ray import RayExecutor
        from curation.select.sharded import ShardPool

        pool = ShardPool(RayExecutor(num_cpus=cores()), matrix, args.shards)  # started before the clock
    started = time.perf_counter()
    if task == "kmeans":
        points = pool.points() if pool else kmeans_module.Points.of(matrix)
        assert isinstance(points, kmeans_module.StreamedPoints) == (mode == "streamed")
        _, labels = kmeans_module.kmeans(points, args.k, iterations=args.iterations, seed=0)
        result = {"clusters_used": int(len(np.unique(labels)))}
    else:
        pulls = sample_based(seeds, matrix, k=args.retrieval_k)
        result = {"pulls": len(pulls)}
    seconds = time.perf_counter() - started
    running[0] = False
    sampler.join()
    return {"seconds": round(seconds, 2), "peak_rss_anon_mb": round((peak[0] - baseline) / 2**20, 1), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2000, help="retrieval: seed images (taken from the pool)")
    parser.add_argument("--retrieval-k", type=int, default=4, help="retrieval: neighbours per seed")
    parser.add_argument("--shards", type=int, default=2, help="k-means: Ray actors of the sharded mode")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--measure", nargs=3, metavar=("MATRIX", "TASK", "MODE"), help=argparse.SUPPRESS)  # child
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, args)))
        return 0
    now, command = utc_now(), command_line(argv, "benchmarks/selection_streaming.py")
    import torch

    cuda = torch.cuda.is_available()  # k-means and the retrieval scan run there; FAISS stays on the CPU
    device = f"cuda: {torch.cuda.get_device_name(0)}" if cuda else f"cpu: {cpu_model()}, {cores()} cores"
    print_header(now, command, device)
    figures: dict[str, float] = {"n": args.n, "dim": args.dim, "k": args.k, "iterations": args.iterations,
                                 "seeds": args.seeds, "retrieval_k": args.retrieval_k}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="selection-streaming-") as folder:
        path = Path(folder) / "pool.npy"
        matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(args.n, args.dim))
        for start in range(0, args.n, 200_000):
            count = min(200_000, args.n - start)
            matrix[start : start + count] = zipf_mixture(count, args.dim, seed=start)
        matrix.flush()
        del matrix
        figures["matrix_float16_mb"] = round(path.stat().st_size / 2**20, 1)
        passthrough = ["--k", str(args.k), "--iterations", str(args.iterations), "--seeds", str(args.seeds),
                       "--retrieval-k", str(args.retrieval_k), "--shards", str(args.shards)]  # fmt: skip
        figures["shards"] = args.shards
        sharded = importlib.util.find_spec("ray") is not None  # a lent GPU machine has no Ray: the mode is skipped
        for task in ("kmeans", "retrieval"):
            for mode in ("resident", "streamed", "sharded")[: 3 if task == "kmeans" and sharded else 2]:
                child = [sys.executable, __file__, "--measure", str(path), task, mode, *passthrough]
                result = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
                for key, value in result.items():
                    figures[f"{task}_{mode}_{key}"] = value
            resident, streamed = f"{task}_resident", f"{task}_streamed"
            figures[f"{task}_streamed_vs_resident_time_ratio"] = round(
                figures[f"{streamed}_seconds"] / figures[f"{resident}_seconds"], 3
            )
            figures[f"{task}_streamed_vs_resident_memory_ratio"] = round(
                figures[f"{streamed}_peak_rss_anon_mb"] / max(figures[f"{resident}_peak_rss_anon_mb"], 0.1), 3
            )
        if sharded:
            figures["kmeans_sharded_vs_resident_time_ratio"] = round(
                figures["kmeans_sharded_seconds"] / figures["kmeans_resident_seconds"], 3
            )
            figures["kmeans_sharded_driver_vs_resident_memory_ratio"] = round(
                figures["kmeans_sharded_peak_rss_anon_mb"] / max(figures["kmeans_resident_peak_rss_anon_mb"], 0.1), 3
            )
    print_figures(figures)
    if not args.no_write:
        write_result("selection_streaming", "cuda" if cuda else "cpu", now, device=device, command=command,
                     figures=figures)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
