"""k-NN copy-detection graph speed: `curation.dedup.graph.knn_edges` (flat and IVF) + components, beside plain
FAISS flat search as the baseline, on synthetic clustered unit vectors.

    python benchmarks/knn_graph.py                         # N = 20k and 100k, 768-d, k=64: several minutes on 2 cores
    python benchmarks/knn_graph.py --large                 # also N = 1M (IVF only; flat extrapolated): long
    python benchmarks/knn_graph.py --sizes 5000 --nprobes 8 --no-write     # smoke run

Vectors (float32, L2-normalised, seeded): a mixture of Gaussians, not uniform noise. Cluster sizes follow a Zipf
law (weight ~ 1/rank^1.1, N/50 clusters); cluster centres share a common direction (unrelated vectors have a
cosine of ~0.2, as real embeddings do); each cluster has its own spread (cosine between its members ~0.3-0.7).
20 % of the vectors are near-duplicates: 1-4 noisy copies of a clustered vector, at cosine ~0.85-0.99 to it, so
the threshold (default 0.9) cuts through them and the graph has real edges and groups.

Per N, in one process, after a warm-up (torch imported up front, since knn_edges imports torch to look for CUDA;
its import time is reported apart as `torch_import_s`):

* `faiss_flat_<N>_s`: the baseline: `faiss.IndexFlatIP`, add all, search all at k (one call).
* `flat_<N>_s`: `knn_edges(vectors, threshold, DedupStage(k, index="flat"))`, split into `_build_s` (index
  construction), `_search_s` (the batched searches) and `_post_s` (the rest: thresholding, pair dedup);
  `flat_<N>_ratio_vs_faiss_flat`.
* `ivf_np<P>_<N>_s` for each nprobe P: `knn_edges(..., index="ivf", nprobe=P)`: the inverted-file self-join
  (nlist = `ivf_cells(N)` ~ 2 sqrt(N) cells from FAISS k-means on 64 vectors per cell, 10 iterations; each cell
  scanned once as a matrix product), with the same split (`_build_s` = k-means + cell assignment), the ratio vs
  the baseline and `_edge_recall`: the share of flat's edges that IVF also finds.
* `faiss_ivf_np<P>_<N>_s` (first nprobe only; `--no-faiss-ivf` skips it): FAISS's own `IndexIVFFlat` over cells
  trained the same way, add + search of all N: the IVF baseline; `ivf_np<P>_<N>_ratio_vs_faiss_ivf` and its
  `_edge_recall` (same edge definition, from its k+1 search).
* `ivf_np<P>_<N>_float16_file_s` (first nprobe; `--no-ray` skips it): the same IVF on the vectors as a run hands
  them over, a memory-mapped float16 file read in batches, and `_ray_tasks_s` with its cells scanned by Ray
  tasks (`stages.dedup.distributed`; Ray started before any timing, `ray_start_s`), with the ratios and
  `_ray_tasks_same_edges` (1: the edges are identical).
* `components_<N>_s` and `group_duplicates_<N>_s`: `curation.dedup.groups` on flat's edges.
* `dense_t<T>_<N>_*`: IVF at each nprobe at a low threshold (`--dense-threshold`, default 0.5, near
  decontamination's 0.45): up to N x k edges, where IVF misses neighbours and per-edge costs (pair dedup in
  knn_edges, the Python loop in group_duplicates, timed on the first nprobe's edges) show. Its `_edge_recall` is
  against the edges of the baseline's own k-NN result (no extra search). `flat_<N>_missing_vs_faiss_edges`
  checks knn_edges' flat edges against the baseline's (0 = none missing).

Flat is skipped where its time, extrapolated quadratically from the smallest N, would pass `--flat-limit-s`
(then the `_est_s` figures are that extrapolation and IVF recall is not measured there). The script waits (up
to `--wait-idle` seconds) for the 1-minute load average to fall below `--idle-load` before timing and records
it. Timings are reported, never asserted; nothing imports this file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import CpuMeter, cores, cpu_model, write_result, zipf_mixture  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_N, TARGET_S, TARGET_RECALL = 100_000, 15.0, 0.95  # the target on this machine
NEAR_DUPLICATES = 0.2  # share of the vectors that are noisy copies: the graph has real edges and groups


def wait_for_idle(limit_s: float, below: float) -> tuple[float, float]:
    """Poll the 1-minute load average until it is below `below` or `limit_s` passed: (load, seconds waited)."""
    started = time.perf_counter()
    load = os.getloadavg()[0]
    while load >= below and time.perf_counter() - started < limit_s:
        print(f"waiting: 1-minute load average {load:.2f} >= {below} ...", flush=True)
        time.sleep(min(15.0, max(0.0, limit_s - (time.perf_counter() - started))))
        load = os.getloadavg()[0]
    return load, time.perf_counter() - started


# --- timing ----------------------------------------------------------------------------------------------------
def timed_edges(vectors: np.ndarray, threshold: float, settings,
                runner=None) -> tuple[tuple[np.ndarray, ...], dict[str, float]]:  # fmt: skip
    """knn_edges and its own split of the time (index build, search, post-processing)."""
    from curation.dedup.graph import knn_edges

    split: dict[str, float] = {}
    started = time.perf_counter()
    edges = knn_edges(vectors, threshold, settings, timings=split, runner=runner)
    return edges, {"s": time.perf_counter() - started, **split}


def faiss_ivf_search(vectors: np.ndarray, cells: int, nprobe: int, k: int) -> tuple[float, tuple[np.ndarray, ...]]:
    """The FAISS baseline for IVF: IndexIVFFlat over the same cells, trained as knn_edges trains them, then one
    search of every vector (seconds, (values, indices))."""
    import faiss

    from curation.dedup.graph import cell_quantizer

    started = time.perf_counter()
    quantizer = cell_quantizer(vectors, cells)
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], cells, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.add(vectors)
    index.nprobe = nprobe
    result = index.search(vectors, k)
    return time.perf_counter() - started, result


def ray_figures(figures: dict, vectors: np.ndarray, count: int, nprobe: int, args, runner) -> None:
    """IVF at `nprobe` on the vectors as a pipeline run hands them over (a memory-mapped float16 file, read in
    batches), in this process and as Ray tasks over blocks of cells (`stages.dedup.distributed`), against the
    in-memory float32 run timed just before."""
    from curation.config import DedupStage

    settings = DedupStage(k=args.k, index="ivf", nprobe=nprobe)
    prefix = f"ivf_np{nprobe}_{count}"
    with tempfile.TemporaryDirectory(prefix="knn-graph-") as folder:
        np.save(Path(folder) / "pool.npy", vectors.astype(np.float16))
        matrix = np.load(Path(folder) / "pool.npy", mmap_mode="r")
        in_process, split = timed_edges(matrix, args.threshold, settings)
        figures[f"{prefix}_float16_file_s"] = round(split["s"], 2)
        figures[f"{prefix}_float16_file_vs_float32_ratio"] = round(split["s"] / figures[f"{prefix}_s"], 3)
        if runner is None:
            return
        on_ray, split = timed_edges(matrix, args.threshold, settings, runner=runner)
    figures[f"{prefix}_ray_tasks_s"] = round(split["s"], 2)
    figures[f"{prefix}_ray_tasks_vs_in_process_ratio"] = round(split["s"] / figures[f"{prefix}_float16_file_s"], 3)
    figures[f"{prefix}_ray_tasks_same_edges"] = int(all(np.array_equal(a, b) for a, b in zip(in_process, on_ray)))
    print(f"  knn_edges ivf nprobe {nprobe} on the float16 file: {figures[f'{prefix}_float16_file_s']:.2f} s in "
          f"process, {figures[f'{prefix}_ray_tasks_s']:.2f} s as Ray tasks (same edges: "
          f"{bool(figures[f'{prefix}_ray_tasks_same_edges'])})", flush=True)  # fmt: skip


def pair_keys(i: np.ndarray, j: np.ndarray, count: int) -> np.ndarray:
    return np.asarray(i, np.int64) * count + np.asarray(j, np.int64)


def threshold_pairs(values: np.ndarray, indices: np.ndarray, threshold: float, count: int) -> np.ndarray:
    """Unique (low, high) pair keys of a k-NN result at or over `threshold`, self-matches excluded."""
    rows = np.arange(len(values))[:, None].repeat(values.shape[1], axis=1)
    keep = (values >= threshold) & (indices >= 0) & (indices != rows)
    low = np.minimum(rows[keep], indices[keep]).astype(np.int64)
    high = np.maximum(rows[keep], indices[keep]).astype(np.int64)
    return np.unique(low * count + high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,100000", help="comma-separated N (default 20000,100000)")
    parser.add_argument("--large", action="store_true", help="also N = 1,000,000 (IVF; flat extrapolated)")
    parser.add_argument("--dim", type=int, default=768, help="vector dimension (default 768)")
    parser.add_argument("--k", type=int, default=64, help="neighbours per vector (default 64)")
    parser.add_argument("--threshold", type=float, default=0.9, help="cosine edge threshold (default 0.9)")
    parser.add_argument("--nprobes", default="8,4,16", help="IVF nprobe sweep (default 8,4,16)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--dense-threshold", type=float, default=0.5,
                        help="also a many-edge graph at this cosine (IVF); 0 skips (default 0.5)")  # fmt: skip
    parser.add_argument("--no-faiss-ivf", dest="faiss_ivf", action="store_false",
                        help="skip the IndexIVFFlat baseline (default: run it at the first nprobe)")  # fmt: skip
    parser.add_argument("--flat-limit-s", type=float, default=300.0,
                        help="skip flat where its extrapolated time passes this (default 300)")  # fmt: skip
    parser.add_argument("--wait-idle", type=float, default=300.0,
                        help="seconds to wait for an idle machine before timing (default 300)")  # fmt: skip
    parser.add_argument("--idle-load", type=float, default=0.5, help="idle = 1-minute load below this (default 0.5)")
    parser.add_argument("--no-ray", dest="ray", action="store_false",
                        help="skip IVF on the float16 file and as Ray tasks (default: first nprobe)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    parser.add_argument("--no-write", action="store_true", help="print figures only, write no result file")
    args = parser.parse_args(argv)
    sizes = sorted({int(n) for n in args.sizes.split(",")} | ({1_000_000} if args.large else set()))
    nprobes = [int(p) for p in args.nprobes.split(",")]

    started = time.perf_counter()
    import torch  # knn_edges imports it to look for CUDA: paid once here, outside the timings

    torch_import_s = time.perf_counter() - started
    import faiss
    import scipy

    from curation.config import DedupStage
    from curation.dedup.graph import ivf_cells
    from curation.dedup.groups import Edges, components, group_duplicates

    now = datetime.now(UTC)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", __file__, *argv])
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    device = f"cuda: {gpu}" if cuda else f"cpu: {cpu_model()}, {cores()} cores"
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
               "cores": cores(), "gpu": gpu, "faiss": faiss.__version__, "faiss_omp_threads":
               faiss.omp_get_max_threads(), "numpy": np.__version__, "scipy": scipy.__version__}  # fmt: skip
    print(f"machine: {machine['platform']}, python {machine['python']}, {machine['cpu']}, {machine['cores']} cores, "
          f"faiss {faiss.__version__} ({machine['faiss_omp_threads']} OpenMP threads)")  # fmt: skip
    print(f"device:  {device}")
    print(f"date:    {now:%Y-%m-%d %H:%M:%S} UTC")
    print(f"command: {command}")
    if cuda:  # knn_edges searches exactly in torch there, whatever the index settings: nothing to sweep
        nprobes, args.faiss_ivf, args.dense_threshold = [], False, 0.0
        print("CUDA: knn_edges runs its exact torch search (flat_* figures); IVF sweeps skipped; the FAISS baseline "
              "runs on this machine's CPU cores")  # fmt: skip
    load_seen = os.getloadavg()[0]
    load_start, waited = wait_for_idle(args.wait_idle, args.idle_load)
    print(f"load:    {load_start:.2f} (1-minute load average at start; {load_seen:.2f} before waiting {waited:.0f} s)")
    runner = None
    if args.ray and not cuda:
        from curation.executors.ray import RayExecutor

        t0 = time.perf_counter()
        runner = RayExecutor(num_cpus=cores())  # started before any timing
        figures_ray_start_s = round(time.perf_counter() - t0, 2)
    meter = CpuMeter()

    figures: dict[str, Any] = {"dim": args.dim, "k": args.k, "threshold": args.threshold,
                               "torch_import_s": round(torch_import_s, 2)}  # fmt: skip
    notes: list[str] = []
    if runner is not None:
        figures["ray_start_s"] = figures_ray_start_s
    # warm-up: BLAS, OpenMP pool and faiss code paths
    warm = zipf_mixture(2000, args.dim, args.seed + 1, NEAR_DUPLICATES)
    timed_edges(warm, args.threshold, DedupStage(k=args.k, index="flat"))
    for nprobe in nprobes[:1]:
        timed_edges(warm, args.threshold, DedupStage(k=args.k, index="ivf", nprobe=nprobe))
    flat_rate: float | None = None  # seconds / N^2 of our flat path, from the smallest N
    faiss_rate: float | None = None
    for count in sizes:
        since = meter.snapshot()
        t0 = time.perf_counter()
        vectors = zipf_mixture(count, args.dim, args.seed, NEAR_DUPLICATES)
        figures[f"generate_{count}_s"] = round(time.perf_counter() - t0, 2)
        lists = ivf_cells(count)
        figures[f"ivf_nlist_{count}"] = lists
        print(f"\nN = {count}: {args.dim}-d clustered unit vectors made in {figures[f'generate_{count}_s']:.1f} s; "
              f"IVF nlist {lists}", flush=True)  # fmt: skip

        faiss_estimate = faiss_rate * count**2 if faiss_rate else 0.0
        flat_estimate = flat_rate * count**2 if flat_rate else 0.0
        flat_edges = reference = None
        if faiss_estimate <= args.flat_limit_s:
            index = faiss.IndexFlatIP(args.dim)
            t0 = time.perf_counter()
            index.add(vectors)
            reference = index.search(vectors, args.k)
            baseline = time.perf_counter() - t0
            del index
            figures[f"faiss_flat_{count}_s"] = round(baseline, 2)
            faiss_rate = faiss_rate or baseline / count**2
            print(f"  faiss IndexFlatIP add+search k={args.k}: {baseline:8.2f} s", flush=True)
        else:
            baseline = faiss_estimate
            figures[f"faiss_flat_{count}_est_s"] = round(baseline, 1)
            notes.append(f"N={count}: faiss flat not run: {baseline:.0f} s by quadratic extrapolation from "
                         f"N={sizes[0]} > --flat-limit-s {args.flat_limit_s:.0f}; ratios are against that "
                         "estimate.")  # fmt: skip
            print(f"  faiss flat skipped: extrapolated {baseline:.0f} s", flush=True)
        if flat_estimate <= args.flat_limit_s:
            flat_edges, split = timed_edges(vectors, args.threshold, DedupStage(k=args.k, index="flat"))
            flat_rate = flat_rate or split["s"] / count**2
            for key, value in split.items():
                figures[f"flat_{count}_{key}"] = round(value, 2)
            figures[f"flat_{count}_ratio_vs_faiss_flat"] = round(split["s"] / baseline, 3)
            figures[f"flat_{count}_edges"] = len(flat_edges[0])
            if reference is not None:
                expected = threshold_pairs(*reference, args.threshold, count)
                found = pair_keys(flat_edges[0], flat_edges[1], count)
                figures[f"flat_{count}_missing_vs_faiss_edges"] = int((~np.isin(expected, found)).sum())
            print(f"  knn_edges {'torch CUDA' if cuda else 'flat'}: {split['s']:8.2f} s (build {split['build_s']:.2f}, "
                  f"search {split['search_s']:.2f}, post {split['post_s']:.2f}) = {split['s'] / baseline:.3f}x faiss "
                  f"flat; {len(flat_edges[0])} edges", flush=True)  # fmt: skip
        else:
            figures[f"flat_{count}_est_s"] = round(flat_estimate, 1)
            notes.append(f"N={count}: our flat search not run: {flat_estimate:.0f} s by quadratic extrapolation > "
                         f"--flat-limit-s {args.flat_limit_s:.0f}; IVF edge recall is not measured there.")  # fmt: skip
            print(f"  knn_edges flat skipped: extrapolated {flat_estimate:.0f} s", flush=True)
        best_ivf = None
        for nprobe in nprobes:
            edges, split = timed_edges(vectors, args.threshold, DedupStage(k=args.k, index="ivf", nprobe=nprobe))
            prefix = f"ivf_np{nprobe}_{count}"
            for key, value in split.items():
                figures[f"{prefix}_{key}"] = round(value, 2)
            figures[f"{prefix}_ratio_vs_faiss_flat"] = round(split["s"] / baseline, 3)
            figures[f"{prefix}_edges"] = len(edges[0])
            recall = None
            if flat_edges is not None:
                truth = pair_keys(flat_edges[0], flat_edges[1], count)
                found = pair_keys(edges[0], edges[1], count)
                recall = float(np.isin(truth, found).mean()) if len(truth) else 1.0
                figures[f"{prefix}_edge_recall"] = round(recall, 4)
            if best_ivf is None:
                best_ivf = edges
            print(f"  knn_edges ivf nprobe {nprobe:>3}: {split['s']:7.2f} s (build {split['build_s']:.2f}, search "
                  f"{split['search_s']:.2f}, post {split['post_s']:.2f}) = {split['s'] / baseline:.3f}x faiss flat; "
                  f"{len(edges[0])} edges, list imbalance {split.get('imbalance', float('nan')):.2f}"
                  + (f", edge recall {recall:.4f}" if recall is not None else ""), flush=True)  # fmt: skip
            if count == TARGET_N and recall is not None:  # only where flat gave the reference edges
                figures[f"{prefix}_meets_target"] = int(split["s"] <= TARGET_S and recall >= TARGET_RECALL)
        if args.faiss_ivf:  # FAISS's own IVF search over the same cells, at the first nprobe: the IVF baseline
            nprobe = nprobes[0]
            seconds, (values, indices) = faiss_ivf_search(vectors, lists, nprobe, args.k + 1)
            prefix = f"faiss_ivf_np{nprobe}_{count}"
            figures[f"{prefix}_s"] = round(seconds, 2)
            figures[f"ivf_np{nprobe}_{count}_ratio_vs_faiss_ivf"] = round(
                figures[f"ivf_np{nprobe}_{count}_s"] / seconds, 3
            )
            if flat_edges is not None:
                truth = pair_keys(flat_edges[0], flat_edges[1], count)
                found = threshold_pairs(values, indices, args.threshold, count)
                figures[f"{prefix}_edge_recall"] = round(float(np.isin(truth, found).mean()) if len(truth) else 1.0, 4)
            print(f"  faiss IndexIVFFlat nprobe {nprobe}: {seconds:7.2f} s (train + add + search); knn_edges ivf = "
                  f"{figures[f'ivf_np{nprobe}_{count}_ratio_vs_faiss_ivf']:.3f}x of it", flush=True)  # fmt: skip
            del values, indices
        if args.ray and nprobes:  # what a run does: the float16 vector file, in process and as Ray tasks
            ray_figures(figures, vectors, count, nprobes[0], args, runner)
        if flat_edges is None and best_ivf is None:
            continue
        i, j, similarity = flat_edges if flat_edges is not None else best_ivf
        graph = [Edges("copy_detection", i, j, similarity, args.threshold)]
        t0 = time.perf_counter()
        labels = components(count, graph)
        figures[f"components_{count}_s"] = round(time.perf_counter() - t0, 3)
        graph_s = figures[f"flat_{count}_s"] if flat_edges is not None else figures[f"ivf_np{nprobes[0]}_{count}_s"]
        figures[f"graph_and_components_{count}_s"] = round(graph_s + figures[f"components_{count}_s"], 2)
        ids = [f"{n:09d}" for n in range(count)]
        pixels = [1] * count
        t0 = time.perf_counter()
        members = group_duplicates(ids, pixels, graph)
        figures[f"group_duplicates_{count}_s"] = round(time.perf_counter() - t0, 3)
        sizes_of = np.bincount(labels)
        figures[f"groups_{count}"] = int((sizes_of > 1).sum())
        figures[f"largest_group_{count}"] = int(sizes_of.max())
        figures[f"dropped_{count}"] = len(members)
        figures[f"foreign_cpu_share_{count}"] = round(meter.foreign_share(since), 3)
        print(f"  components: {figures[f'components_{count}_s']:.3f} s; group_duplicates: "
              f"{figures[f'group_duplicates_{count}_s']:.3f} s ({figures[f'groups_{count}']} groups, largest "
              f"{figures[f'largest_group_{count}']}, {len(members)} dropped); others' CPU "
              f"{figures[f'foreign_cpu_share_{count}']:.0%}", flush=True)  # fmt: skip
        if args.dense_threshold > 0:  # many edges (decontamination's regime): per-edge costs and IVF recall show
            truth = threshold_pairs(*reference, args.dense_threshold, count) if reference is not None else None
            prefix = f"dense_t{args.dense_threshold}_{count}"
            for position, nprobe in enumerate(nprobes):
                dense = DedupStage(k=args.k, index="ivf", nprobe=nprobe)
                (i, j, similarity), split = timed_edges(vectors, args.dense_threshold, dense)
                for key, value in split.items():
                    figures[f"{prefix}_ivf_np{nprobe}_{key}"] = round(value, 2)
                figures[f"{prefix}_ivf_np{nprobe}_edges"] = len(i)
                recall = None
                if truth is not None:
                    recall = float(np.isin(truth, pair_keys(i, j, count)).mean()) if len(truth) else 1.0
                    figures[f"{prefix}_ivf_np{nprobe}_edge_recall"] = round(recall, 4)
                tail = f", edge recall {recall:.4f} vs faiss flat" if recall is not None else ""
                print(f"  dense graph at {args.dense_threshold}, ivf nprobe {nprobe:>3}: {split['s']:7.2f} s (post "
                      f"{split['post_s']:.2f}), {len(i)} edges{tail}", flush=True)  # fmt: skip
                if position == 0:
                    graph = [Edges("copy_detection", i, j, similarity, args.dense_threshold)]
                    t0 = time.perf_counter()
                    components(count, graph)
                    figures[f"{prefix}_components_s"] = round(time.perf_counter() - t0, 3)
                    t0 = time.perf_counter()
                    group_duplicates(ids, pixels, graph)
                    figures[f"{prefix}_group_duplicates_s"] = round(time.perf_counter() - t0, 3)
                    print(f"    components {figures[f'{prefix}_components_s']:.3f} s; group_duplicates "
                          f"{figures[f'{prefix}_group_duplicates_s']:.3f} s", flush=True)  # fmt: skip
                    del graph
                del i, j, similarity
            if truth is not None:
                figures[f"{prefix}_faiss_flat_edges"] = len(truth)
        del vectors, flat_edges, best_ivf, reference

    figures["loadavg_1m_before_wait"] = round(load_seen, 2)
    figures["loadavg_1m_start"] = round(load_start, 2)
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    figures["waited_for_idle_s"] = round(waited, 1)
    figures["foreign_cpu_share"] = round(meter.foreign_share(), 3)
    if load_start >= args.idle_load:
        notes.insert(0, f"CAUTION: the machine did not become idle within {args.wait_idle:.0f} s (1-minute load "
                        f"{load_start:.2f} at start): timings are pessimistic.")  # fmt: skip
    if figures["foreign_cpu_share"] > 0.1:
        share = figures["foreign_cpu_share"]
        notes.insert(0, f"CAUTION: other processes used {share:.0%} of the machine's CPU time during the run "
                        "(/proc/stat busy time minus this process's): timings are pessimistic.")  # fmt: skip
    notes += [
        f"Vectors: {args.dim}-d float32 unit vectors, seed {args.seed}: Zipf-sized Gaussian clusters (N/50, weight "
        "~1/rank^1.1) around centres sharing a common direction, per-cluster spread, plus 20 % near-duplicates "
        "(1-4 copies of a clustered vector at cosine ~0.85-0.99).",
        f"k={args.k}, threshold {args.threshold}. faiss_flat = IndexFlatIP add + one search of all N at k={args.k} "
        "(the baseline); flat/ivf = curation.dedup.graph.knn_edges with DedupStage(index=flat|ivf, nprobe, default "
        "batch_size 16384), which searches k+1 (itself included) and keeps each vector's k best others. _build_s "
        "= index construction (IVF: FAISS k-means on 64 x nlist vectors, 10 iterations, + cell assignment), "
        "_search_s = the searches (IVF: one matrix product per cell, of the vectors probing it against those it "
        "holds), _post_s = the rest of knn_edges (top-k per vector, np.unique pair dedup); _ratio_vs_faiss_flat = "
        "total / baseline. faiss_ivf = IndexIVFFlat over cells trained the same way, at the first nprobe (the IVF "
        "baseline). _imbalance = the cells' imbalance factor (faiss's definition: 1 = equal cells). _edge_recall = "
        "share of flat's edges IVF also found. components/group_duplicates = curation.dedup.groups "
        "on flat's edges (IVF's where flat was not run); dense_t<T>_* = IVF at a low threshold (many edges), recall "
        "against the edges of the baseline's own k-NN result (top k=64 with itself, so one neighbour fewer than "
        "knn_edges' k+1 search: a slightly smaller reference set). torch is imported up front (torch_import_s) because "
        "knn_edges imports it to look for CUDA on every call.",
        f"Issue target: IVF <= {TARGET_S:.0f} s at edge recall >= {TARGET_RECALL} for N={TARGET_N} "
        "(ivf_np<P>_100000_meets_target: 1 = met). Warm-up: one flat and one IVF run on 2,000 vectors first.",
        f"faiss {faiss.__version__} with {machine['faiss_omp_threads']} OpenMP threads, numpy {np.__version__}.",
    ]
    if not args.no_write:
        write_result("knn_graph", "cuda" if cuda else "cpu", now, device=device, command=command, figures=figures,
                     output=args.output, machine=machine, notes=" ".join(notes))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
