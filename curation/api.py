"""The Python API: what the CLI does, for notebooks and other tools.

>>> import curation
>>> result = curation.run("pipelines/quickstart.yaml")             # doctest: +SKIP
>>> version = curation.open_version(result.version)                # doctest: +SKIP
>>> version.verify()                                               # doctest: +SKIP
[]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.config import PipelineSpec, S3Settings, load_spec, parse_spec
from curation.store.catalog import Catalog
from curation.store.home import DEFAULT_HOME, Home
from curation.store.objects import ObjectStore, read_parquet


def run(
    spec: str | Path | Mapping[str, Any] | PipelineSpec,
    *,
    home: str | Path = DEFAULT_HOME,
    fresh: bool = False,
    ray_address: str | None = None,
    progress: bool = False,
):
    """Run a pipeline (a YAML path, a mapping or a PipelineSpec) and publish its version. Returns a RunResult.
    A mapping's relative paths are relative to the working directory, resolved now, so that the spec's hash (the
    run's identity for resume) names the folders this run reads."""
    from curation.core.pipeline import run_pipeline
    from curation.embed.torch_models import require_device

    if isinstance(spec, str | Path):
        spec = load_spec(spec)
    elif isinstance(spec, Mapping):
        spec = parse_spec(dict(spec), base_dir=Path.cwd())
    on_this_machine = spec.execution.executor == "local" or not (ray_address or spec.execution.ray_address)
    if spec.stages.embed and on_this_machine:  # the embed actors use this machine's GPUs: check before any work
        require_device(spec.stages.embed)
    return run_pipeline(spec, home=Home(home), fresh=fresh, ray_address=ray_address, progress=progress)


@dataclass
class Version:
    """A published NAME@vN: its manifest, samples and shards, read from wherever it was published."""

    ref: str
    manifest: dict[str, Any]
    root: ObjectStore
    manifest_sha256: str

    def shard_urls(self) -> list[str]:
        """Tar URLs (local paths or s3:// URIs) in manifest order, for webdataset or the trainer."""
        return [self.root.url(shard["tar"]) for shard in self.manifest["shards"]]

    def samples(self) -> pa.Table:
        """Every sample's metadata (the shards' Parquet indexes, concatenated)."""
        from curation.publish.shards import SAMPLE_SCHEMA

        tables = [read_parquet(self.root, shard["index"]) for shard in self.manifest["shards"]]
        return pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table()

    def provenance(self) -> pa.Table:
        """Every input of the run that made this version, and what became of it."""
        return read_parquet(self.root, "provenance.parquet")

    def verify(self) -> list[str]:
        """Re-hash every file; returns the problems (an empty list means the version is intact)."""
        from curation.publish.release import verify

        return verify(self.root, self.manifest_sha256)


def s3_settings_of(spec_json: dict[str, Any]) -> S3Settings:
    """Endpoint and region from a stored (redacted) spec; credentials come from the environment."""
    stored = spec_json.get("s3") or {}
    return S3Settings(endpoint_url=stored.get("endpoint_url"), region=stored.get("region"))


def spec_of_version(catalog: Catalog, row: dict[str, Any]) -> dict[str, Any]:
    """The spec of the run that made a version; for a version this home found in its store (made by another
    home, or recovered), the newest run here of the same dataset, which published to that store and so knows
    how to reach it (S3 endpoint, region); {} when there is none."""
    runs = catalog.rows("SELECT spec_json FROM runs WHERE run_id = ?", [row["run_id"]]) or catalog.rows(
        "SELECT spec_json FROM runs WHERE name = ? ORDER BY started_at DESC LIMIT 1", [row["name"]])  # fmt: skip
    return json.loads(runs[0]["spec_json"]) if runs else {}


def open_version(ref: str, *, home: str | Path = DEFAULT_HOME) -> Version:
    """Open NAME@vN (or NAME@latest) from the home's catalog; a manifest that is not one is a VerifyError."""
    from curation.publish.release import MANIFEST, parse_manifest, resolve

    with Catalog.open(Home(home).catalog_path, read_only=True) as catalog:
        row = resolve(catalog, ref)
        spec_json = spec_of_version(catalog, row)
    root = Home(home).version_root(row["uri"], s3_settings_of(spec_json))
    manifest = parse_manifest(root.get(MANIFEST), root.url(MANIFEST))
    return Version(f"{row['name']}@v{row['version']}", manifest, root, row["manifest_sha256"])
