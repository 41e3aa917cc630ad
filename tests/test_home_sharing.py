"""A long run shares its home: while its workers fetch, other processes read the catalog and file opt-outs (which
the run then honours), and a second run, a gc or a server is refused at once. The second processes are real `curate` CLI
processes; the run fetches from a real HTTP server on 127.0.0.1 that lets the first image through only after
they have finished."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import curation
from curation.errors import CatalogBusyError
from curation.store.gc import collect_garbage
from curation.store.lock import home_lock
from tests.conftest import free_port
from tests.corpus import image_bytes
from tests.web import QuietHandler, serving

IMAGES = {f"/img/{index}.jpg": image_bytes(300 + index) for index in range(4)}


def curate(home: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curation.cli", "--home", str(home), *arguments],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


class WhileIngesting(QuietHandler):
    """The first request runs `during` (other processes at work on the home) before it answers."""

    during = None
    outcomes: dict[str, subprocess.CompletedProcess] = {}
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802 - the http.server API
        with WhileIngesting.lock:
            if WhileIngesting.during is not None:
                WhileIngesting.outcomes = WhileIngesting.during()
                WhileIngesting.during = None
        self.send_body(IMAGES.get(self.path))


@pytest.fixture
def web():
    with serving(WhileIngesting) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_a_running_ingest_lets_readers_and_optouts_in_but_not_another_run(web, tmp_path, home):
    urls = [f"{web}{path}" for path in sorted(IMAGES)]
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    spec = {
        "name": "web",
        "sources": [{"kind": "urls", "name": "web", "path": str(tmp_path / "urls.parquet")}],
        "fetch": {"timeout_s": 120, "concurrency": 1},
        "execution": {"executor": "local", "block_size": 2},
    }
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**spec, "name": "other"}))
    WhileIngesting.during = lambda: {
        "versions": curate(home, "versions"),
        "optout": curate(home, "optout", "add", "--url", urls[3], "--reason", "filed mid-run"),
        "second run": curate(home, "run", str(other)),
        "service": curate(home, "serve", "--port", str(free_port())),  # it would keep the catalog from the run
    }
    version = curation.open_version(curation.run(spec, home=home).version, home=home)

    seen = WhileIngesting.outcomes
    assert seen["versions"].returncode == 0, seen["versions"].stderr
    assert seen["optout"].returncode == 0, seen["optout"].stderr
    for refused in ("second run", "service"):
        assert seen[refused].returncode == 2 and "a run of web" in seen[refused].stderr, seen[refused].stderr
    fates = {row["uri"]: row["reason"] for row in version.provenance().to_pylist()}
    assert fates == {**{url: None for url in urls[:3]}, urls[3]: "opted_out"}  # the run honoured it
    assert curate(home, "versions").returncode == 0  # and let go of the home when it ended


def test_gc_is_refused_while_a_run_holds_the_home(tmp_path):
    with home_lock(tmp_path, "a run of demo"):
        with pytest.raises(CatalogBusyError, match="a run of demo"):
            collect_garbage(tmp_path, delete=True)
    collect_garbage(tmp_path, delete=True)  # free again once the run let go
