"""`curate gc`: lists and removes only what is derived or stale; a version still verifies, searches and reruns
after it; blobs go only with --blobs and never those a version or an unfinished run holds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import curation
from curation import audit
from curation.cli import cli
from curation.errors import CatalogBusyError, SpecError
from curation.store.catalog import Catalog
from curation.store.gc import collect_garbage
from tests.conftest import FIXTURE_IMAGES
from tests.corpus import image_bytes


def by_category(report: dict) -> dict[str, int]:
    return {row["category"]: row["files"] for row in report["categories"]}


@pytest.fixture
def used_home(tmp_path):
    """A home after a composed run (select work, not-selected blobs), a search (a matrix) and some litter."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for path in sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:24]:
        shutil.copyfile(path, pool / path.name)
    (pool / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # rejected at decode: no blob at all
    spec = {"name": "mix", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"embed": {"model": "builtin"}, "select": {"mode": "compose", "parts": [
                {"kind": "balanced", "name": "balanced", "target": 10, "levels": [{"clusters": 4}]}]}},
            "execution": {"executor": "local"}}  # fmt: skip
    home = tmp_path / "home"
    result = curation.run(spec, home=home)
    audit.search(home, result.version, image=next(pool.glob("*.png")).read_bytes())
    stale, fresh = home / "blobs" / "ab" / ".tmp-1-2-abc", home / "vectors" / "x.tmp.npy"
    for path in (stale, fresh, home / "datasets" / "mix" / ".staging-dead" / "shards" / "a.tar"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    hour_ago = time.time() - 7200
    for path in (stale, home / "datasets" / "mix" / ".staging-dead"):
        os.utime(path, (hour_ago, hour_ago))
    (home / "service" / "thumbnails").mkdir(parents=True)
    (home / "service" / "thumbnails" / ("0" * 64 + ".jpg")).write_bytes(image_bytes(1))
    return home, spec, result.version, fresh


def test_gc_lists_then_removes_only_derived_and_stale_files(used_home):
    home, spec, ref, fresh = used_home
    blobs_before = sorted((home / "blobs").rglob("*"))
    listed = collect_garbage(home)
    assert by_category(listed) == {"vector matrices": 2, "temporaries": 2, "thumbnails": 1,
                                   "finished runs' selection work": 1}  # fmt: skip
    assert listed["bytes"] > 0 and not listed["deleted"]
    assert sorted((home / "blobs").rglob("*")) == blobs_before and list((home / "vectors").glob("*/matrix-*"))
    # one matrix for the run's images, one for the version's (the search): every distinct set adds one

    removed = collect_garbage(home, delete=True)
    assert removed["bytes"] == listed["bytes"] and by_category(collect_garbage(home)) == {
        "vector matrices": 0, "temporaries": 0, "thumbnails": 0, "finished runs' selection work": 0}  # fmt: skip
    assert fresh.exists()  # a young temporary may belong to a live writer
    assert not (home / "datasets" / "mix" / ".staging-dead").exists()
    version = curation.open_version(ref, home=home)
    assert version.verify() == []
    assert audit.search(home, ref, image_id=version.samples()["image_id"][0].as_py(), k=3)["neighbours"]
    assert curation.run(spec, home=home, fresh=True).unchanged  # reruns from the sources, same version


def test_blobs_go_only_when_asked_and_never_those_held(used_home, tmp_path):
    home, spec, ref, _fresh = used_home
    samples = set(curation.open_version(ref, home=home).samples()["image_id"].to_pylist())
    stored = {path.name for path in (home / "blobs").glob("*/*") if not path.name.startswith(".tmp-")}
    assert len(stored) == 24 and len(samples) == 10  # 14 images kept at ingest were not selected

    other = tmp_path / "other"
    other.mkdir()
    for index in range(3):
        (other / f"{index}.jpg").write_bytes(image_bytes(100 + index))
    failing = {"name": "fails", "sources": [{"kind": "folder", "name": "other", "path": str(other)}],
               "stages": {"embed": {"model": f"bundled:{tmp_path / 'absent.json'}"}},
               "execution": {"executor": "local"}}  # fmt: skip
    with pytest.raises(SpecError):
        curation.run(failing, home=home)  # ingested, then failed at embed: unfinished, resumable
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert catalog.rows("SELECT status FROM runs WHERE name = 'fails'")[0]["status"] == "failed"

    report = collect_garbage(home, blobs=True, delete=True)
    assert by_category(report)["unpublished image bytes"] == 14
    left = {path.name for path in (home / "blobs").glob("*/*") if not path.name.startswith(".tmp-")}
    assert samples <= left and len(left - samples) == 3  # the failed run's three images stay for its resume
    assert curation.open_version(ref, home=home).verify() == []


def test_gc_refuses_while_another_process_writes(used_home):
    """A run or a server holds the catalog's writer: gc waits, then refuses, and removes nothing."""
    home, *_ = used_home
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from curation.store.catalog import Catalog; "
                               "c = Catalog.open(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(home / "catalog.duckdb")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        matrices = list((home / "vectors").glob("*/matrix-*"))
        with pytest.raises(CatalogBusyError):
            collect_garbage(home, delete=True, wait_s=0.5)
        assert list((home / "vectors").glob("*/matrix-*")) == matrices
    finally:
        holder.kill()
        holder.wait()
    shown = CliRunner().invoke(cli, ["--home", str(home), "gc"])
    assert (
        shown.exit_code == 0 and "would free (run with --delete)" in shown.output and "vector matrices" in shown.output
    )
    assert json.loads(CliRunner().invoke(cli, ["--home", str(home), "gc", "--json"]).output)["deleted"] is False


def test_an_unfinished_runs_published_forms_stay(used_home, tmp_path):
    home, *_ = used_home
    other = tmp_path / "other"
    other.mkdir()
    for index in range(3):
        (other / f"{index}.jpg").write_bytes(image_bytes(200 + index, (80, 60)))
    (tmp_path / "a-file").write_bytes(b"")
    failing = {"name": "fails", "sources": [{"kind": "folder", "name": "other", "path": str(other)}],
               "execution": {"executor": "local"},
               "publish": {"uri": str(tmp_path / "a-file" / "datasets"), "image": {"size": 20}}}  # fmt: skip
    with pytest.raises(OSError):
        curation.run(failing, home=home)  # derived, then failed at publish: unfinished, resumable
    outputs = sorted((home / "runs").glob("*/publish/derive-*.parquet"))
    derived = {row["sha256"] for path in outputs for row in pq.read_table(path).to_pylist()}
    assert len(derived) == 3 and not derived & {path.name for path in (home / "blobs").glob("*/*")} == set()

    collect_garbage(home, blobs=True, delete=True)
    assert derived <= {path.name for path in (home / "blobs").glob("*/*")}


def test_an_unfinished_runs_evaluation_images_stay(used_home, tmp_path):
    home, *_ = used_home
    pool, evaluation = tmp_path / "pool-2", tmp_path / "eval"
    for folder, seed in ((pool, 300), (evaluation, 400)):
        folder.mkdir()
        for index in range(2):
            (folder / f"{index}.jpg").write_bytes(image_bytes(seed + index, (80, 60)))
    (tmp_path / "a-file").write_bytes(b"")
    failing = {"name": "decon", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
               "stages": {"embed": {"model": "builtin"},
                          "decontaminate": {"sets": [{"kind": "folder", "name": "eval", "path": str(evaluation)}]}},
               "execution": {"executor": "local"},
               "publish": {"uri": str(tmp_path / "a-file" / "datasets")}}  # fmt: skip
    with pytest.raises(OSError):
        curation.run(failing, home=home)  # evaluation set ingested, then failed at publish: unfinished
    evaluation_ids = {hashlib.sha256(path.read_bytes()).hexdigest() for path in evaluation.iterdir()}
    collect_garbage(home, blobs=True, delete=True)
    assert evaluation_ids <= {path.name for path in (home / "blobs").glob("*/*")}
