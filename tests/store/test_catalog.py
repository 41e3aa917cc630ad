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
