"""The home directory: catalog, run work files, blobs and (by default) published datasets, in one place.

HOME/catalog.duckdb     the catalog (one writer)
HOME/runs/RUN_ID/       plan.json and per-block outputs (completion markers for resume)
HOME/blobs/ab/cd/SHA    content-addressed image bytes (or storage.blobs, e.g. s3://...)
HOME/datasets/NAME/vN/  published versions (or publish.uri, e.g. s3://...)
"""

from __future__ import annotations

from pathlib import Path

from curation.config import PipelineSpec, S3Settings
from curation.errors import StoreError
from curation.store.blobs import BlobStore
from curation.store.objects import LocalStore, ObjectStore, open_store

DEFAULT_HOME = "./curation-home"


class Home:
    def __init__(self, root: str | Path = DEFAULT_HOME):
        self.root = Path(root).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"home {self.root} is not a folder")

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def runs(self) -> LocalStore:
        return LocalStore(self.root / "runs")

    @property
    def uploads(self) -> BlobStore:
        """Images uploaded with opt-out requests (kept apart from the pools' blobs)."""
        return BlobStore(LocalStore(self.root / "optout-uploads"))

    @property
    def vectors(self) -> LocalStore:
        return LocalStore(self.root / "vectors")

    def blobs(self, spec: PipelineSpec) -> BlobStore:
        return BlobStore(open_store(spec.storage.blobs or self.root / "blobs", spec.s3))

    def datasets(self, spec: PipelineSpec) -> ObjectStore:
        return open_store(spec.publish.uri or self.root / "datasets", spec.s3)

    def staging(self, spec: PipelineSpec, run_id: str) -> Path:
        """Where a release is assembled: inside the target when local (so the commit is one rename)."""
        target = self.datasets(spec)
        if isinstance(target, LocalStore):
            return target.root / spec.name / f".staging-{run_id}"
        return self.root / "tmp" / f"publish-{run_id}"

    def blobs_for(self, spec_json: dict) -> BlobStore:
        """The blob store a stored (redacted) run spec used; S3 credentials come from the environment."""
        from curation.api import s3_settings_of

        stored = (spec_json.get("storage") or {}).get("blobs")
        return BlobStore(open_store(stored or self.root / "blobs", s3_settings_of(spec_json)))

    def version_root(self, uri: str, s3: S3Settings | None = None) -> ObjectStore:
        """The store rooted at a published version's folder (its catalog `uri`)."""
        return open_store(uri, s3)
