"""The job runner in a real server: cancel and resume, a killed server, and reads under load during a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

from tests.conftest import REPO
from tests.service.conftest import SPECS, start_service

# Both fixture folders, one input per block: hundreds of small units, so a run is still going when the test acts.
SLOW_SPEC = yaml.safe_dump({
    "name": "slow",
    "sources": [{"name": "clipart", "kind": "folder", "path": "../../fixtures/images/openclipart"},
                {"name": "fashion", "kind": "folder", "path": "../../fixtures/images/fashion-mnist", "license": "MIT"}],
    "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin", "block_size": 8}},
    "execution": {"block_size": 1},
})  # fmt: skip


def wait_for_progress(service, job_id: str, timeout: float = 120) -> dict:
    """The job once it is running and has reported some progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(f"/api/jobs/{job_id}").json()
        stages = (job.get("progress") or {}).get("stages") or []
        if job["status"] == "running" and any(stage.get("done") for stage in stages):
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} showed no progress in {timeout} s")


def test_progress_is_live_and_a_cancelled_run_resumes_where_it_stopped(service):
    job = service.submit(SLOW_SPEC)
    running = wait_for_progress(service, job["job_id"])
    ingest = running["progress"]["stages"][0]
    assert ingest["name"] == "ingest" and ingest["unit"] == "block" and ingest["total"] == 204
    assert 0 < ingest["done"] <= ingest["total"] and ingest["rate"] > 0
    assert service.post(f"/api/jobs/{job['job_id']}/cancel", role="curator").ok
    cancelled = service.wait_job(job["job_id"])
    assert cancelled["status"] == "cancelled", cancelled
    runs = {run["run_id"]: run["status"] for run in service.get("/api/runs").json()}
    assert runs[cancelled["run_id"]] == "cancelled"

    service.post(f"/api/jobs/{job['job_id']}/resume", role="curator").raise_for_status()
    resumed = service.wait_job(job["job_id"])
    assert resumed["status"] == "finished" and resumed["attempts"] == 2
    assert resumed["run_id"] == cancelled["run_id"]  # the same run continued
    assert resumed["result"]["resumed_blocks"] > 0 and resumed["result"]["stats"]["publish"]["samples"] == 204


def test_a_killed_server_shows_the_run_interrupted_and_it_resumes(tmp_path):
    first = start_service(tmp_path / "home")
    job = first.submit(SLOW_SPEC)
    wait_for_progress(first, job["job_id"])
    first.stop(kill=True)

    second = start_service(tmp_path / "home", tokens=first.tokens)
    try:
        interrupted = second.get(f"/api/jobs/{job['job_id']}").json()
        assert interrupted["status"] == "interrupted"
        runs = second.get("/api/runs").json()
        assert [run["status"] for run in runs] == ["interrupted"]
        assert second.post(f"/api/jobs/{job['job_id']}/resume", role="curator").ok
        done = second.wait_job(job["job_id"])
        assert done["status"] == "finished" and done["version"] == "slow@v1", done
        assert done["run_id"] == runs[0]["run_id"] and done["result"]["resumed_blocks"] > 0
        assert second.post("/api/versions/slow@v1/verify").json()["ok"] is True
    finally:
        second.stop()


def test_two_hundred_concurrent_reads_during_a_run_all_succeed_and_change_nothing(service, tmp_path):
    # The same spec run by the CLI in another home, with no server and no load: the reference result.
    reference_home = tmp_path / "reference"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([sys.executable, "-m", "curation.cli", "--home", str(reference_home), "run",
                    str(SPECS / "fashion.yaml")], check=True, env=env, cwd=REPO, capture_output=True)  # fmt: skip
    reference = json.loads((reference_home / "datasets" / "fashion" / "v1" / "manifest.json").read_text())

    job = service.submit((SPECS / "fashion.yaml").read_text())
    wait_for_progress(service, job["job_id"])
    paths = [f"/api/jobs/{job['job_id']}", "/api/jobs", "/api/runs", "/api/versions", "/api/whoami"]

    def read(i: int):
        response = service.get(paths[i % len(paths)], role=("viewer", "curator", "admin")[i % 3])
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(read, range(200)))
    assert [code for code, _ in results] == [200] * 200
    seen_running = [body["status"] for i, (_, body) in enumerate(results) if i % len(paths) == 0]
    assert "running" in seen_running  # the reads overlapped the run's writes

    done = service.wait_job(job["job_id"])
    assert done["status"] == "finished", done
    manifest = service.get(f"/api/versions/{done['version']}/manifest").json()
    assert manifest["content_sha256"] == reference["content_sha256"]
    files = [(item["path"], item["sha256"]) for item in manifest["files"]]
    assert files == [(item["path"], item["sha256"]) for item in reference["files"]] and len(files) > 3


def test_a_cli_run_or_gc_in_the_servers_home_is_refused_naming_the_server(service):
    """The server holds the home for its life (its own jobs run inside it): a CLI run would otherwise get in
    while it is idle and hold the catalog from it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    for command in (["run", str(SPECS / "fashion.yaml")], ["gc", "--delete"]):
        result = subprocess.run([sys.executable, "-m", "curation.cli", "--home", str(service.home), *command],
                                capture_output=True, text=True, env=env, cwd=REPO, timeout=120)  # fmt: skip
        assert result.returncode == 2 and "curate serve (pid" in result.stderr, result.stderr
