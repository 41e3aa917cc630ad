"""`curate gc`: what a home holds that can go, and removing it.

Derived files are rebuilt on demand by whatever needs them, so removing them loses nothing:

- vector matrices gathered for a run or a search (`vectors/MODEL/matrix-*.npy`: `load_matrix` rebuilds them from
  the per-block vectors; one is written per distinct set of images, so every run of a growing pool adds one);
- temporaries a killed process left behind (`.tmp-*` files, `*.tmp.npy`, staging folders of releases that never
  committed, `HOME/tmp/`), when older than an hour;
- the service's thumbnails;
- the selection work of finished runs (k-means levels kept so that an unfinished run can resume).

With `blobs=True`, also the image bytes that no published version holds (rejected, duplicate, not selected or
opted-out images) and no unfinished run has read (its resume needs them): a later run reads them from their
source again; provenance rows and vectors stay. `HOME/blobs` only (not a `storage.blobs` elsewhere or on S3).
The catalog is opened for writing first: a run or a server using the home makes gc wait, then refuse.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.store.lock import home_lock

TEMPORARY_AGE_S = 3600  # a temporary younger than this may belong to a process that is still writing it


@dataclass
class Category:
    name: str
    why: str  # what it is and why it can go
    paths: list[Path] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(_size(path) for path in self.paths)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size if path.exists() else 0


def _old(path: Path, now: float) -> bool:
    return now - path.stat().st_mtime > TEMPORARY_AGE_S


def find_garbage(home: Home, catalog: Catalog, *, blobs: bool = False) -> list[Category]:
    """Everything gc would remove, by category."""
    now = time.time()
    root = home.root
    matrices = Category("vector matrices", "gathered per run or search; rebuilt from the per-block vectors")
    matrices.paths = sorted(path for path in (root / "vectors").glob("*/matrix-*.npy") if ".tmp" not in path.name)
    temporaries = Category("temporaries", "left by a process that stopped mid-write (older than an hour)")
    temporaries.paths = sorted(
        path
        for pattern in (
            "**/.tmp-*",
            "vectors/**/*.tmp.npy",
            "runs/**/*.tmp.npy",
            "service/thumbnails/*.tmp",
            "datasets/*/.staging-*",
            "tmp/*",
        )  # fmt: skip
        for path in root.glob(pattern)
        if _old(path, now)
    )
    thumbnails = Category("thumbnails", "the service's previews; made again on the next view")
    thumbnails.paths = sorted((root / "service" / "thumbnails").glob("*.jpg"))
    finished = {row["run_id"] for row in catalog.rows("SELECT run_id FROM runs WHERE status = 'finished'")}
    selection = Category("finished runs' selection work", "k-means levels kept for a resume that will not come")
    selection.paths = sorted(path for path in (root / "runs").glob("*/select") if path.parent.name in finished)
    categories = [matrices, temporaries, thumbnails, selection]
    if blobs:
        held = {row["image_id"] for row in catalog.rows("SELECT DISTINCT image_id FROM version_samples")}
        held |= _held_by_unfinished_runs(root, catalog)
        unheld = Category("unpublished image bytes", "in no published version; a later run reads them again")
        unheld.paths = sorted(path for path in (root / "blobs").glob("*/*") if path.is_file()
                              and not path.name.startswith(".tmp-") and path.name not in held)  # fmt: skip
        categories.append(unheld)
    return categories


def _held_by_unfinished_runs(root: Path, catalog: Catalog) -> set[str]:
    """Images an unfinished run has read, committed or not (its resume embeds them from the blob store), and
    the published forms it has derived (publish.image: its resume writes them into shards)."""
    unfinished = [row["run_id"] for row in catalog.rows("SELECT run_id FROM runs WHERE status <> 'finished'")]
    held = set()
    for run_id in unfinished:
        rows = catalog.rows("SELECT DISTINCT image_id FROM provenance WHERE run_id = ? AND image_id IS NOT NULL",
                            [run_id])  # fmt: skip
        held |= {row["image_id"] for row in rows}
        ingested = [*(root / "runs").glob(f"{run_id}/ingest/block-*.parquet"),  # and its evaluation sets':
                    *(root / "runs").glob(f"{run_id}-*/ingest/block-*.parquet")]  # fmt: skip
        outputs = [(block, "image_id") for block in ingested]
        outputs += [(block, "sha256") for block in (root / "runs" / run_id / "publish").glob("derive-*.parquet")]
        for block, column in outputs:  # done, not yet committed
            held |= {key for key in pq.read_table(block, columns=[column])[column].to_pylist() if key}
    return held


def collect_garbage(home: str | Path, *, blobs: bool = False, delete: bool = False,
                    wait_s: float = 10.0) -> dict[str, Any]:  # fmt: skip
    """A report of what can go (and, with `delete`, what went): per category its files and bytes."""
    home = Home(home)
    # no run in the home (it may be writing blobs without the catalog), and the catalog's writer
    with home_lock(home.root, "a garbage collection"), Catalog.open(home.catalog_path, wait_s=wait_s) as catalog:
        categories = find_garbage(home, catalog, blobs=blobs)
        report = [{"category": category.name, "why": category.why, "files": len(category.paths),
                   "bytes": category.bytes} for category in categories]  # fmt: skip
        if delete:
            for category in categories:
                for path in category.paths:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return {"home": str(home.root), "deleted": delete, "categories": report,
            "bytes": sum(item["bytes"] for item in report)}  # fmt: skip
