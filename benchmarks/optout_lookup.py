"""Opt-out lookups at registry scale: `Exclusions.covering_uri` (indexed) against a scan of every request, the way
each input was matched before, in the same run. Public opt-out registries hold millions of URLs; every run
checks every input against all of them (at ingest, and again at the optout stage).

    python benchmarks/optout_lookup.py                       # registries of 10k, 100k and 1M URLs: ~1 minute
    python benchmarks/optout_lookup.py --sizes 10000 --no-write

Each registry: N exact URLs, N/100 URL prefixes' worth of domains (N/100 domains) and 10 prefixes. Inputs:
50,000 URLs, a tenth of them covered, in mixed spellings (upper-case scheme, default port, dot segments). The
scan baseline compares an input's canonical spelling with every request's (computed once), as the loop before the
indexes did; it runs on the first 20,000,000 / N inputs (at least 20) and is reported per lookup.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, cpu_device, print_figures, print_header, utc_now, write_result  # noqa: E402, I001
from curation.ingest.exclusions import Exclusions, canonical_uri  # noqa: E402

INPUTS = 50_000
SCAN_BUDGET = 20_000_000  # registry entries x inputs the baseline scans


def registry(size: int) -> Exclusions:
    urls = tuple((f"opt-u{i}", f"https://cdn{i % 97}.example.org/u/{i}/photo.jpg") for i in range(size))
    domains = tuple((f"opt-d{i}", f"site{i}.example.net") for i in range(size // 100))
    prefixes = tuple((f"opt-p{i}", f"https://bucket{i}.example.com/private/") for i in range(10))
    return Exclusions(urls=urls, prefixes=prefixes, domains=domains)


def inputs(size: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    made = []
    for index in range(INPUTS):
        if index % 10 == 0:  # covered, spelled another way
            i = rng.randrange(size)
            made.append(f"HTTPS://cdn{i % 97}.example.org:443/u/./{i}/photo.jpg")
        else:
            made.append(f"https://img{index}.example.com/a/{rng.randrange(10**9)}.jpg")
    return made


class Scan:
    """The baseline: every request's value (canonical, computed once) compared with the input, kind by kind, as
    the loop before the indexes did (it compared raw strings)."""

    def __init__(self, exclusions: Exclusions):
        self.urls = [(request_id, canonical_uri(url)) for request_id, url in exclusions.urls]
        self.prefixes = [(request_id, canonical_uri(prefix)) for request_id, prefix in exclusions.prefixes]
        self.domains = list(exclusions.domains)

    def __call__(self, uri: str) -> str | None:
        canonical = canonical_uri(uri)
        for request_id, url in self.urls:
            if canonical == url:
                return request_id
        for request_id, prefix in self.prefixes:
            if canonical.startswith(prefix):
                return request_id
        host = canonical.split("/")[2] if "://" in canonical else ""
        for request_id, domain in self.domains:
            if host == domain or host.endswith("." + domain):
                return request_id
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda text: [int(x) for x in text.split(",")], default=[10_000, 100_000,
                                                                                               1_000_000])  # fmt: skip
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    now, command = utc_now(), command_line(argv, "benchmarks/optout_lookup.py")
    device = cpu_device()
    print_header(now, command, device)
    figures: dict[str, float] = {"inputs": INPUTS}
    for size in args.sizes:
        started = time.perf_counter()
        exclusions = registry(size)
        figures[f"n{size}_index_build_s"] = round(time.perf_counter() - started, 3)
        uris = inputs(size)
        started = time.perf_counter()
        hits = sum(exclusions.covering_uri(uri) is not None for uri in uris)
        indexed = (time.perf_counter() - started) / len(uris)
        figures[f"n{size}_covered"] = hits
        scan = Scan(exclusions)
        sample = uris[: max(20, SCAN_BUDGET // size)]
        started = time.perf_counter()
        scanned_hits = [scan(uri) for uri in sample]
        scanned = (time.perf_counter() - started) / len(sample)
        assert scanned_hits == [exclusions.covering_uri(uri) for uri in sample]  # the same answers
        figures[f"n{size}_scanned_inputs"] = len(sample)
        figures[f"n{size}_indexed_us_per_lookup"] = round(indexed * 1e6, 2)
        figures[f"n{size}_scan_us_per_lookup"] = round(scanned * 1e6, 1)
        figures[f"n{size}_speedup"] = round(scanned / indexed, 1)
        print_figures({key: value for key, value in figures.items() if key.startswith(f"n{size}_")})
    if not args.no_write:
        write_result("optout_lookup", "cpu", now, device=device, command=command, figures=figures,
                     output=args.output)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
