"""The version manifest: every file with SHA-256 and size, counts, the spec, lineage and what was dropped."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

import manifests
from curation import __version__
from curation.errors import VerifyError

HASH_CHUNK = 1 << 20


def sha256_stream(stream) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while piece := stream.read(HASH_CHUNK):
        digest.update(piece)
        size += len(piece)
    return digest.hexdigest(), size


def file_entry(root: Path, relative: str, kind: str) -> dict[str, Any]:
    with (root / relative).open("rb") as handle:
        digest, size = sha256_stream(handle)
    return {"path": relative, "sha256": digest, "bytes": size, "kind": kind}


def content_sha256(files: list[dict[str, Any]], lineage: list[dict[str, Any]]) -> str:
    """Identity of a version's content: equal files made by the same stages (models, thresholds), equal hash,
    independent of when or by whom it was made."""
    content = {"files": sorted(files, key=lambda item: item["path"]), "lineage": lineage}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def creation_time() -> str:
    """Now, or SOURCE_DATE_EPOCH when set (reproducible-builds convention) for byte-identical manifests."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def validate_manifest(manifest: dict[str, Any]) -> None:
    try:
        jsonschema.validate(manifest, manifests.load("manifest"))
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "<root>"
        raise VerifyError(
            f"manifest does not match manifests/manifest.schema.json at {where}: {error.message}"
        ) from None


def build_manifest(
    *,
    name: str,
    version: int,
    parent: dict[str, Any] | None,
    run_id: str,
    spec: dict[str, Any],
    spec_sha256: str,
    lineage: list[dict[str, Any]],
    counts: dict[str, int],
    dropped: dict[str, dict[str, int]],
    changes: dict[str, int],
    files: list[dict[str, Any]],
    shards: list[dict[str, Any]],
    removed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "ref": f"{name}@v{version}",
        "parent": parent,
        "created_at": creation_time(),
        "run_id": run_id,
        "code_version": __version__,
        "spec": spec,
        "spec_sha256": spec_sha256,
        "lineage": lineage,
        "counts": counts,
        "dropped": dropped,
        "changes": changes,
        "files": sorted(files, key=lambda item: item["path"]),
        "shards": shards,
        "content_sha256": content_sha256(files, lineage),
    }
    if removed is not None:  # what opt-outs took from the parent (an apply's child, or a run that honoured them)
        manifest["removed"] = removed
    validate_manifest(manifest)
    return manifest
