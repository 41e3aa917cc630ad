"""Atomic, immutable releases of NAME@vN, plus reading them back: resolve, verify, diff.

Commit point: locally, a finished staging folder is renamed to `NAME/vN` (one rename); on S3, every file is
uploaded first and `manifest.json` last. Either way a version exists if and only if its manifest does, so a
crash leaves no visible half version, and a version whose manifest exists is never written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.progress import Progress
from curation.errors import VerifyError, VersionError, VersionExistsError
from curation.publish.manifest import (
    build_manifest,
    file_entry,
    manifest_bytes,
    sha256_stream,
    validate_manifest,
)
from curation.publish.shards import write_shards
from curation.store.blobs import BlobStore
from curation.store.catalog import Catalog
from curation.store.objects import LocalStore, ObjectStore, read_parquet

log = logging.getLogger("curation")

REF_PATTERN = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,63})(?:@(?:v(?P<number>[1-9][0-9]*)|(?P<latest>latest)))?$")
MANIFEST = "manifest.json"
CLAIMS = ".claims"  # NAME/.claims/vN: who took number N (see claim_number)
PROVENANCE = "provenance.parquet"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name@v3' -> ('name', 3); 'name' or 'name@latest' -> ('name', None)."""
    match = REF_PATTERN.match(ref)
    if not match:
        raise VersionError(f"not a version reference: {ref!r} (expected NAME@vN, NAME@latest or NAME)")
    number = match.group("number")
    return match.group("name"), int(number) if number else None


def resolve(catalog: Catalog, ref: str) -> dict[str, Any]:
    name, number = parse_ref(ref)
    known = catalog.versions(name)
    if not known:
        raise VersionError(f"no dataset named {name!r} in this home")
    if number is None:
        return known[-1]
    found = [row for row in known if row["version"] == number]
    if not found:
        raise VersionError(f"{name}@v{number} does not exist; latest is {name}@v{known[-1]['version']}")
    return found[0]


def version_key(name: str, number: int, relative: str) -> str:
    return f"{name}/v{number}/{relative}"


def published_numbers(target: ObjectStore, name: str) -> list[int]:
    """Version numbers whose manifest exists in the target (the store, not the catalog, is the truth)."""
    pattern = re.compile(rf"^{re.escape(name)}/v([1-9][0-9]*)/{MANIFEST}$")
    return sorted(int(m.group(1)) for key in target.list(name) if (m := pattern.match(key)))


@dataclass(frozen=True)
class Release:
    ref: str
    manifest: dict[str, Any]
    unchanged: bool  # True when the content equals the latest version, which is then reused, not duplicated


def publish(
    *,
    catalog: Catalog,
    target: ObjectStore,
    staging: Path,
    blobs: BlobStore,
    samples: list[dict[str, Any]],
    provenance: pa.Table,
    name: str,
    run_id: str,
    spec: dict[str, Any],
    spec_sha256: str,
    lineage: list[dict[str, Any]],
    counts: dict[str, int],
    dropped: dict[str, dict[str, int]],
    max_samples: int,
    max_bytes: int,
    reports: dict[str, bytes] | None = None,
    optout_removals: Callable[[set[str]], list[dict[str, Any]]] | None = None,
    progress: Progress | None = None,
) -> Release:
    """Write and commit NAME@vN (or find it unchanged). `optout_removals` names, of the parent's images this
    version lacks, those an opt-out took: they go into the manifest's `removed`, which supersedes the parent."""
    sync_catalog(catalog, target, name)
    versions = catalog.versions(name)
    mine = [row for row in versions if row["run_id"] == run_id]
    if mine:  # a resumed run whose release committed before the crash: do not publish twice
        ref = f"{name}@v{mine[-1]['version']}"
        return Release(ref, _read_manifest(target, name, mine[-1]["version"]), unchanged=False)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shard_files = write_shards(samples, blobs, staging, max_samples=max_samples, max_bytes=max_bytes,
                               progress=progress or Progress())  # fmt: skip
    pq.write_table(provenance, staging / PROVENANCE)
    files = [file_entry(staging, PROVENANCE, "provenance")]
    for relative, data in sorted((reports or {}).items()):  # selection reports: numbers and plots
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_bytes(data)
        files.append(file_entry(staging, relative, "report"))
    for shard in shard_files:
        files += [file_entry(staging, shard.tar, "shard"), file_entry(staging, shard.index, "shard_index")]

    parent_row = versions[-1] if versions else None
    # past every number the store holds, even one sync_catalog would not register (an unreadable manifest)
    number = max([parent_row["version"] if parent_row else 0, *published_numbers(target, name)]) + 1
    parent = None
    if parent_row:
        parent = {
            "ref": f"{name}@v{parent_row['version']}",
            "version": parent_row["version"],
            "manifest_sha256": parent_row["manifest_sha256"],
        }
    image_ids = {sample["image_id"] for sample in samples}
    parent_ids = set(_image_ids(catalog, name, parent_row["version"])) if parent_row else set()
    removed = optout_removals(parent_ids - image_ids) if optout_removals and parent_ids - image_ids else []

    def manifest_numbered(number: int) -> dict[str, Any]:
        return build_manifest(
            name=name,
            version=number,
            parent=parent,
            run_id=run_id,
            spec=spec,
            spec_sha256=spec_sha256,
            lineage=lineage,
            counts={**counts, "samples": len(samples), "shards": len(shard_files)},
            dropped=dropped,
            changes={"added": len(image_ids - parent_ids), "removed": len(parent_ids - image_ids)},
            files=files,
            shards=[{"tar": s.tar, "index": s.index, "samples": s.samples} for s in shard_files],
            removed=removed or None,
        )

    manifest = manifest_numbered(number)
    if parent_row and parent_row["content_sha256"] == manifest["content_sha256"]:
        shutil.rmtree(staging, ignore_errors=True)
        return Release(parent["ref"], _read_manifest(target, name, parent_row["version"]), unchanged=True)
    dead = frozenset(f"run {row['run_id']}" for row in catalog.rows("SELECT run_id FROM runs WHERE run_id <> ?",
                                                                    [run_id]))  # fmt: skip
    claimed = claim_number(target, name, number, f"run {run_id}", dead)
    if claimed != number:  # another publisher of this name took it meanwhile
        manifest = manifest_numbered(claimed)
    commit_version(target, staging, name, claimed, manifest)
    register_version(catalog, target, manifest)
    return Release(manifest["ref"], manifest, unchanged=False)


def claim_number(target: ObjectStore, name: str, start: int, holder: str, dead: frozenset[str] = frozenset()) -> int:
    """The first version number from `start` that this publisher wins. Each number is claimed once, by an atomic
    create-if-absent of NAME/.claims/vN (O_EXCL locally, a conditional PUT on S3), so two publishers of one name
    to one store never write the same version: the later takes the next number. A number claimed by this same
    `holder` is its own (a resumed run). One claimed by a holder in `dead` (a run of this home that has ended:
    the home lock lets one run at a time) is taken over; any other publisher's is skipped, never reused."""
    record = json.dumps({"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
                         "at": datetime.now(UTC).isoformat()}).encode()  # fmt: skip
    number = start
    while not target.put_new(key := f"{name}/{CLAIMS}/v{number}", record):
        claimant = _claimant(target, name, number)
        if claimant == holder:
            break
        if claimant in dead:
            target.delete(key)
            continue  # and claim it again, still atomically: another publisher may get there first
        number += 1
    return number


def _claimant(target: ObjectStore, name: str, number: int) -> str | None:
    try:
        return json.loads(target.get(f"{name}/{CLAIMS}/v{number}"))["holder"]
    except (ValueError, KeyError, TypeError):  # a damaged claim is nobody's: its number is skipped
        return None


def commit_version(target: ObjectStore, staging: Path, name: str, number: int, manifest: dict[str, Any]) -> None:
    if target.exists(version_key(name, number, MANIFEST)):
        raise VersionExistsError(f"{name}@v{number} already exists; versions are immutable")
    write_manifest(staging, manifest)
    if isinstance(target, LocalStore):
        stage_key = staging.relative_to(target.root).as_posix()
        target.rename_prefix(stage_key, f"{name}/v{number}")
        return
    target.delete_prefix(f"{name}/v{number}")  # what a failed earlier attempt left: no manifest, so no version
    for item in manifest["files"]:
        target.put_file(version_key(name, number, item["path"]), staging / item["path"])
    target.put_file(version_key(name, number, MANIFEST), staging / MANIFEST)  # last: the commit point
    shutil.rmtree(staging, ignore_errors=True)


def write_manifest(staging: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into the staging folder (kept separate: it is the step right before the commit)."""
    (staging / MANIFEST).write_bytes(manifest_bytes(manifest))


def register_version(catalog: Catalog, target: ObjectStore, manifest: dict[str, Any]) -> None:
    """Record a committed version, its shards and which image sits where, in one catalog transaction: a crash
    half way must not leave a version the catalog knows without its samples (gc would take their bytes)."""
    name, number = manifest["name"], manifest["version"]
    raw = target.get(version_key(name, number, MANIFEST))
    rows = [read_parquet(target, version_key(name, number, shard["index"])) for shard in manifest["shards"]]
    wanted = ["image_id", "shard", "part", "sha256"]
    rows = [table.select([column for column in wanted if column in table.column_names]) for table in rows]
    samples = pa.concat_tables(rows) if rows else None
    catalog.register_version(manifest, target.url(f"{name}/v{number}"), hashlib.sha256(raw).hexdigest(), samples)


def sync_catalog(catalog: Catalog, target: ObjectStore, name: str) -> None:
    """The store is the truth: register versions whose manifest exists but the catalog lacks (a crash between
    the commit and its registration, a lost catalog, another home publishing to the same store), so numbering
    and parents follow what is published."""
    known = {row["version"] for row in catalog.versions(name)}
    for number in published_numbers(target, name):
        if number in known:
            continue
        try:
            manifest = _read_manifest(target, name, number)
        except VerifyError as error:  # a damaged or stray file is no version: it must not stop publishing
            log.warning("not registering %s@v%d: %s", name, number, error)
            continue
        register_version(catalog, target, manifest)


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """A manifest read back, checked against its schema: a corrupt one is a VerifyError naming it."""
    try:
        manifest = json.loads(raw)
        validate_manifest(manifest)
    except (ValueError, VerifyError) as error:
        raise VerifyError(f"{where}: {error}") from None
    return manifest


def _read_manifest(target: ObjectStore, name: str, number: int) -> dict[str, Any]:
    """NAME@vN's manifest, which must say it is NAME@vN (a version folder copied to another number is not)."""
    key = version_key(name, number, MANIFEST)
    manifest = parse_manifest(target.get(key), target.url(key))
    if (manifest["name"], manifest["version"]) != (name, number):
        raise VerifyError(f"{target.url(key)}: says it is {manifest['ref']}, not {name}@v{number}")
    return manifest


def _image_ids(catalog: Catalog, name: str, number: int) -> list[str]:
    found = catalog.db.execute(
        "SELECT image_id FROM version_samples WHERE name = ? AND version = ?", [name, number]
    ).fetchall()
    return [row[0] for row in found]


def verify(version_root: ObjectStore, expected_manifest_sha256: str | None) -> list[str]:
    """Re-hash every file of a version (its root folder) against its manifest; returns the problems found, which
    include files the manifest does not list (a reader that globs `shards/*.tar` would take them)."""
    problems = []
    raw = version_root.get(MANIFEST)
    if expected_manifest_sha256 and hashlib.sha256(raw).hexdigest() != expected_manifest_sha256:
        problems.append(f"{MANIFEST}: SHA-256 differs from the one recorded in the catalog at publish time")
    try:
        manifest = parse_manifest(raw, MANIFEST)
    except VerifyError as error:
        return [*problems, str(error)]
    listed = {item["path"] for item in manifest["files"]}
    problems += [f"{key}: not in the manifest" for key in version_root.list() if key not in listed | {MANIFEST}]
    for item in manifest["files"]:
        if not version_root.exists(item["path"]):
            problems.append(f"{item['path']}: missing")
            continue
        with version_root.open(item["path"]) as stream:
            digest, size = sha256_stream(stream)
        if size != item["bytes"]:
            problems.append(f"{item['path']}: {size} bytes, manifest says {item['bytes']}")
        if digest != item["sha256"]:
            problems.append(f"{item['path']}: SHA-256 {digest[:16]}... manifest says {item['sha256'][:16]}...")
    return problems
