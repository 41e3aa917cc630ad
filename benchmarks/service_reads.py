"""Read throughput and latency of `curate serve`, idle and while a run writes; and the run's slowdown under load.

    python benchmarks/service_reads.py                    # 2,000 reads at concurrency 32, writes results/...json
    python benchmarks/service_reads.py --requests 500 --no-write

A real server process on 127.0.0.1 with Ray in-process, over a home with one published version (120 Fashion-MNIST
images). The reads are a mix of what the page does: versions list, a sample page, a thumbnail, an image audit and
a job's progress. Client and server share this machine's cores, so the figures are a floor. Baselines in the
same run: reads against the idle server, and the same-size run without reads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
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
from tests.service.conftest import SPECS, start_service  # noqa: E402


def run_spec(name: str) -> str:
    """Both fixture folders, one input per block and no embedding: a run of a few hundred small writes."""
    return yaml.safe_dump({
        "name": name,
        "sources": [{"name": "clipart", "kind": "folder", "path": "../../fixtures/images/openclipart"},
                    {"name": "fashion", "kind": "folder", "path": "../../fixtures/images/fashion-mnist"}],
        "stages": {"decode": {"min_side": 16}},
        "execution": {"block_size": 1},
    })  # fmt: skip


def read_paths(service, ref: str, job_id: str) -> list[str]:
    samples = service.get(f"/api/versions/{ref}/samples", params={"limit": 48}).json()["samples"]
    image_ids = [sample["image_id"] for sample in samples]
    return [
        "/api/versions",
        f"/api/versions/{ref}/samples?limit=48&offset=24",
        f"/api/versions/{ref}/thumbnails/{image_ids[0]}",
        f"/api/audit/image?q={image_ids[1]}",
        f"/api/jobs/{job_id}",
    ]


def load(service, paths: list[str], count: int, concurrency: int) -> dict[str, float]:
    """`count` GETs cycling through `paths` from `concurrency` threads (one HTTP session each)."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {service.tokens['viewer']}"}

    def one(i: int) -> float:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.perf_counter()
        response = session.get(service.base + paths[i % len(paths)], headers=headers, timeout=60)
        response.raise_for_status()
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = sorted(pool.map(one, range(count)))
    seconds = time.perf_counter() - started
    return {"req_s": round(count / seconds, 1), "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)}  # fmt: skip


def run_seconds(job: dict) -> float:
    """The run's own duration, from the job record (started -> finished)."""
    started, finished = (datetime.fromisoformat(job[key]) for key in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    now, command = utc_now(), command_line(argv, __file__)
    device = f"cpu: {cpu_model()}, {cores()} cores"
    print_header(now, command, device)

    with tempfile.TemporaryDirectory() as folder:
        service = start_service(Path(folder) / "home")
        try:
            published = service.wait_job(service.submit((SPECS / "fashion.yaml").read_text())["job_id"])
            paths = read_paths(service, published["version"], published["job_id"])
            load(service, paths, 100, args.concurrency)  # warm-up: thumbnails made, versions cached
            idle = load(service, paths, args.requests, args.concurrency)

            quiet_run_s = run_seconds(service.wait_job(service.submit(run_spec("quiet"), fresh=True)["job_id"]))

            job_id = service.submit(run_spec("busy"), fresh=True)["job_id"]
            busy = load(service, paths, args.requests, args.concurrency)
            still_running = service.get(f"/api/jobs/{job_id}").json()["status"] == "running"
            busy_run_s = run_seconds(service.wait_job(job_id))
        finally:
            service.stop()

    figures = {
        "reads_idle_req_s": idle["req_s"],
        "reads_idle_p50_ms": idle["p50_ms"],
        "reads_idle_p99_ms": idle["p99_ms"],
        "reads_during_run_req_s": busy["req_s"],
        "reads_during_run_p50_ms": busy["p50_ms"],
        "reads_during_run_p99_ms": busy["p99_ms"],
        "reads_during_run_vs_idle": round(busy["req_s"] / idle["req_s"], 3),
        "run_quiet_s": round(quiet_run_s, 2),
        "run_under_reads_s": round(busy_run_s, 2),
        "run_slowdown_under_reads": round(busy_run_s / quiet_run_s, 3),
        "requests_per_phase": args.requests,
        "concurrency": args.concurrency,
    }
    print_figures(figures)
    notes = ("The reads started with the run and it was still writing when they finished: reads_during_run "
             "is all under writes, the run only partly under reads." if still_running else
             "The reads started with the run and outlasted it: the whole run was under reads, and the reads "
             "after it finished ran against an idle server.")  # fmt: skip
    print(notes)
    if not args.no_write:
        write_result("service_reads", "cpu", now, device=device, command=command, figures=figures,
                     output=args.output, notes=notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
