"""The DuckDB catalog: one writer at a time (a second process gets a clear error), schema created on demand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from curation.errors import RunError
from curation.store.catalog import Catalog


def test_fresh_home_reads_as_empty(tmp_path):
    with Catalog.open(tmp_path / "catalog.duckdb", read_only=True) as catalog:
        assert catalog.versions() == [] and catalog.rows("SELECT * FROM runs") == []


def test_a_second_writer_process_gets_a_clear_error(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with Catalog.open(path):
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from curation.store.catalog import Catalog; Catalog.open(sys.argv[1])",
             str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert probe.returncode != 0
    assert "CatalogBusyError" in probe.stderr and "one writer at a time" in probe.stderr


def test_runs_lifecycle(tmp_path):
    with Catalog.open(tmp_path / "catalog.duckdb") as catalog:
        catalog.start_run("r1", "demo", "h" * 64, {"name": "demo"})
        assert catalog.unfinished_run("h" * 64) == "r1"
        catalog.mark_run("r1", status="finished", version="demo@v1", stats={"x": 1})
        assert catalog.unfinished_run("h" * 64) is None
        assert catalog.run("latest")["version"] == "demo@v1"
        with pytest.raises(RunError, match="no run"):
            catalog.run("r2")


def test_a_catalog_file_still_being_created_is_waited_for(tmp_path):
    """Several processes opening a fresh home at once: one creates the file, the others find it before its header
    exists. They wait (within wait_s) instead of failing; an old unreadable file is corrupt and fails at once."""
    import os
    import threading
    import time

    import duckdb

    path = tmp_path / "catalog.duckdb"
    path.write_bytes(b"")  # what a creator's open leaves for a moment

    def finish_creating() -> None:
        time.sleep(0.5)
        ready = tmp_path / "ready.duckdb"
        Catalog.open(ready).close()
        ready.replace(path)

    creator = threading.Thread(target=finish_creating)
    creator.start()
    with Catalog.open(path, wait_s=10) as catalog:
        assert catalog.rows("SELECT count(*) AS n FROM runs") == [{"n": 0}]
    creator.join()

    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"\0" * 100)
    os.utime(corrupt, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(duckdb.IOException, match="not a valid DuckDB database file"):
        Catalog.open(corrupt, wait_s=10)  # not retried until the deadline: that would be a CatalogBusyError


def test_a_version_is_registered_with_its_samples_or_not_at_all(tmp_path):
    import pyarrow as pa

    manifest = {"name": "demo", "version": 1, "parent": None, "content_sha256": "c" * 64, "run_id": "r",
                "created_at": "2026-01-01T00:00:00Z", "counts": {"samples": 1},
                "files": [{"path": "shards/a.tar", "sha256": "a" * 64, "bytes": 10}],
                "shards": [{"tar": "shards/a.tar", "index": "shards/a.parquet", "samples": 1}]}  # fmt: skip
    unreadable = pa.table({"image_id": ["x" * 64], "shard": ["shards/a.tar"]})  # no `part` column: the insert fails
    with Catalog.open(tmp_path / "catalog.duckdb") as catalog:
        with pytest.raises(Exception, match="part"):
            catalog.register_version(manifest, "/d/demo/v1", "m" * 64, unreadable)
        assert catalog.versions("demo") == []  # not a version without its samples (gc would take their bytes)
        samples = unreadable.append_column("part", pa.array(["pool"]))
        catalog.register_version(manifest, "/d/demo/v1", "m" * 64, samples)
        rows = catalog.rows("SELECT image_id, part FROM version_samples WHERE name = 'demo' AND version = 1")
        assert [row["version"] for row in catalog.versions("demo")] == [1] and rows == [{"image_id": "x" * 64,
                                                                                         "part": "pool"}]  # fmt: skip
