"""A run killed mid-ingest (SIGKILL to the whole CLI process group, Ray included) resumes: finished blocks are
not redone, and the result equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import curation
from curation.store.catalog import Catalog
from tests.conftest import write_spec
from tests.corpus import image_bytes

BLOCKS = 60


def test_killed_run_resumes_without_redoing_blocks(ray_local, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for index in range(BLOCKS * 2):
        (pool / f"img-{index:04d}.jpg").write_bytes(image_bytes(index, size=(96, 96)))
    spec = {
        "name": "resumable",
        "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
        "execution": {"executor": "ray", "block_size": 2, "num_cpus": 1},
    }
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    home = tmp_path / "home"
    process = subprocess.Popen(
        [sys.executable, "-m", "curation.cli", "--home", str(home), "run", str(spec_path)],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes Ray's processes with it
    )
    deadline = time.monotonic() + 180
    blocks_dir = home / "runs"
    while time.monotonic() < deadline and len(list(blocks_dir.glob("*/ingest/block-*.parquet"))) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(1.0)  # let orphaned Ray workers notice their raylet is gone

    done_at_kill = len(list(blocks_dir.glob("*/ingest/block-*.parquet")))
    assert 3 <= done_at_kill < BLOCKS, done_at_kill
    assert not (home / "datasets" / "resumable" / "v1").exists()
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        killed = catalog.rows("SELECT run_id, status FROM runs")
    assert [row["status"] for row in killed] == ["running"]

    result = curation.run(spec_path, home=home)
    assert result.run_id == killed[0]["run_id"]
    assert done_at_kill <= result.resumed_blocks < BLOCKS
    assert result.stats["ingest"]["blocks"] == BLOCKS - result.resumed_blocks

    clean = curation.run({**spec, "execution": {"executor": "local", "block_size": 2}}, home=tmp_path / "clean")
    resumed_manifest = curation.open_version(result.version, home=home).manifest
    clean_manifest = curation.open_version(clean.version, home=tmp_path / "clean").manifest
    assert resumed_manifest["content_sha256"] == clean_manifest["content_sha256"]
    assert resumed_manifest["counts"]["samples"] == BLOCKS * 2


def small_pool(tmp_path, images: int):
    pool = tmp_path / "pool"
    pool.mkdir()
    for index in range(images):
        (pool / f"img-{index}.jpg").write_bytes(image_bytes(index, size=(96, 96)))
    return pool


def test_an_unfinished_run_older_than_a_finished_one_is_not_resumed(tmp_path):
    pool = small_pool(tmp_path, 4)
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    spec = {"name": "stale", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "execution": {"executor": "local"}, "publish": {"uri": str(blocker / "datasets")}}  # fmt: skip
    home = tmp_path / "home"
    with pytest.raises(OSError):
        curation.run(spec, home=home)  # planned and ingested 4 images, then failed to publish
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        (stale,) = catalog.rows("SELECT run_id FROM runs")
    blocker.unlink()
    (pool / "img-9.jpg").write_bytes(image_bytes(9, size=(96, 96)))  # the pool grew
    fresh = curation.run(spec, home=home, fresh=True)
    assert fresh.run_id != stale["run_id"]

    later = curation.run(spec, home=home)  # must not go back to the stale plan of 4 images
    assert later.run_id not in (stale["run_id"], fresh.run_id) and later.unchanged
    assert curation.open_version("stale@latest", home=home).samples().num_rows == 5


def test_a_run_resumed_after_an_upgrade_reads_the_blocks_the_old_code_wrote(tmp_path):
    """Block files from before a column was added (here `redirected_to`) still resume: the column is empty."""
    import pyarrow.parquet as pq

    pool = small_pool(tmp_path, 4)
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    spec = {
        "name": "upgraded",
        "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
        "execution": {"executor": "local", "block_size": 2},
        "publish": {"uri": str(blocker / "datasets")},
    }
    home = tmp_path / "home"
    with pytest.raises(OSError):
        curation.run(spec, home=home)  # ingested, then failed to publish: resumable
    old_block = sorted((home / "runs").glob("*/ingest/block-*.parquet"))[0]
    pq.write_table(pq.read_table(old_block).drop_columns(["redirected_to"]), old_block)  # as the old code wrote it
    blocker.unlink()
    result = curation.run(spec, home=home)
    assert result.resumed_blocks == 2
    provenance = curation.open_version(result.version, home=home).provenance()
    assert provenance.num_rows == 4 and provenance["redirected_to"].null_count == 4


def test_a_resumed_run_reads_again_what_a_since_withdrawn_request_refused(tmp_path):
    """The run refused X for a request, failed at publish, and the request was withdrawn before the resume: the
    block that refused X is read again, so X is back."""
    from curation import audit

    pool = small_pool(tmp_path, 6)
    datasets = tmp_path / "datasets"
    spec = {"name": "back", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "execution": {"executor": "local", "block_size": 2}, "publish": {"uri": str(datasets)}}  # fmt: skip
    home = tmp_path / "home"
    curation.run(spec, home=home)
    request = audit.add_optout(home, kind="url", value=str(pool / "img-3.jpg"))
    datasets.rename(tmp_path / "aside")
    datasets.write_bytes(b"")  # publishing fails after the ingest refused img-3
    with pytest.raises(OSError):
        curation.run(spec, home=home)
    datasets.unlink()
    (tmp_path / "aside").rename(datasets)
    audit.add_optout(home, kind="withdraw", value=request.request_id)
    result = curation.run(spec, home=home)
    assert result.resumed_blocks == 2 and result.stats["ingest"]["blocks"] == 1  # the block that refused it
    assert curation.open_version(result.version, home=home).samples().num_rows == 6
