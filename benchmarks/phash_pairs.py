"""pHash near-pair search speed: `curation.dedup.perceptual.near_pairs` beside brute-force binary search.

    python benchmarks/phash_pairs.py                 # N = 100k and 300k hashes, d = 4 and 8: a few minutes
    python benchmarks/phash_pairs.py --sizes 20000 --no-write

Hashes: half uniform random 64-bit values, half copies of those with 1-3 bits flipped (the planted pairs). The
baseline, in the same run, is FAISS `IndexBinaryFlat.range_search` over all hashes (exact, every pair compared in
C++). near_pairs uses multi-index hashing up to d = 5 and that same brute force past it, so at d = 8 the two are
the same search; `_pairs_found` must equal the planted pairs plus any chance pairs the baseline also finds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    command_line,
    cores,
    cpu_model,
    print_figures,
    print_header,
    utc_now,
    write_result,
)
from curation.dedup.perceptual import near_pairs  # noqa: E402


def planted_hashes(count: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, count // 2, dtype=np.uint64)
    copies = base.copy()
    for _ in range(3):
        copies ^= np.uint64(1) << rng.integers(0, 64, count // 2).astype(np.uint64)
    return [int(value) for value in np.concatenate([base, copies])]


def brute_force_pairs(hashes: list[int], max_distance: int) -> int:
    import faiss

    codes = np.array(hashes, dtype=np.uint64).view(np.uint8).reshape(-1, 8)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    limits, _distances, neighbours = index.range_search(codes, max_distance + 1)
    queries = np.repeat(np.arange(len(codes)), np.diff(limits).astype(np.int64))
    return int((queries < neighbours).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda text: [int(x) for x in text.split(",")], default=[100_000, 300_000])
    parser.add_argument("--distances", type=lambda text: [int(x) for x in text.split(",")], default=[4, 8])
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    now, command = utc_now(), command_line(argv, __file__)
    device = f"cpu: {cpu_model()}, {cores()} cores"
    print_header(now, command, device)
    load_start = round(os.getloadavg()[0], 2)
    figures: dict[str, float] = {}
    for count in args.sizes:
        hashes = planted_hashes(count)
        for distance in args.distances:
            started = time.perf_counter()
            found = len(near_pairs(hashes, distance)[0])
            ours = time.perf_counter() - started
            started = time.perf_counter()
            expected = brute_force_pairs(hashes, distance)
            baseline = time.perf_counter() - started
            name = f"n{count}_d{distance}"
            figures.update({f"{name}_near_pairs_s": round(ours, 3), f"{name}_brute_force_s": round(baseline, 3),
                            f"{name}_speedup_vs_brute_force": round(baseline / ours, 2),
                            f"{name}_pairs_found": found, f"{name}_pairs_missing": expected - found})  # fmt: skip
            print_figures({key: value for key, value in figures.items() if key.startswith(name)})
    if not args.no_write:
        write_result("phash_pairs", "cpu", now, device=device, command=command, figures=figures, output=args.output,
                     loadavg_1m_start=load_start, loadavg_1m_end=round(os.getloadavg()[0], 2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
