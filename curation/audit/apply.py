"""Opt-outs in force: find what the registry covers, and publish a child version without it.

`apply_optouts(home, NAME)` takes the latest NAME@vN, matches every active request against its samples, and
publishes NAME@v(N+1): shards that held a removed sample are rewritten (same order, same fixed tar headers),
every other shard is carried over byte for byte (same SHA-256). The manifest lists each removed image with the
request that removed it; the parent stays readable and verifiable and is marked `superseded_by_optout`.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.api import s3_settings_of, spec_of_version
from curation.audit.matching import HASH_KINDS, Match, MatchSettings, derived_requests, exclusions_of, match_images
from curation.audit.registry import OptOutRequest, active_requests, list_requests
from curation.config import EmbedStage
from curation.dedup.perceptual import phash
from curation.embed.driver import commit_blocks
from curation.embed.registry import create_embedder
from curation.embed.stage import EmbedBlocks
from curation.embed.vectors import load_matrix
from curation.errors import VerifyError, VersionError
from curation.ingest.raw import Block
from curation.publish.manifest import build_manifest, file_entry
from curation.publish.release import (
    MANIFEST,
    PROVENANCE,
    claim_number,
    commit_version,
    parse_manifest,
    parse_ref,
    published_numbers,
    register_version,
    resolve,
    sync_catalog,
)
from curation.store.blobs import BlobStore
from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.store.objects import LocalStore, ObjectStore, open_store
from curation.types import REJECTED, Reason


@dataclass(frozen=True)
class ApplyResult:
    parent: str
    ref: str  # the new version, or the parent when nothing matched
    removed: list[Match]


def embed_stage_of(lineage: list[dict[str, Any]]) -> EmbedStage:
    """The embedder a version was made with (its vectors exist already), else the weight-free builtin."""
    for step in lineage:
        if step["stage"] == "embed":
            return EmbedStage(**{**step["params"], "device": "cpu", "compile": False})
    return EmbedStage(model="builtin")


def covered_images(catalog: Catalog, home: Home, blobs: BlobStore, stage: EmbedStage, image_ids: list[str],
                   uris: list[list[str]], requests: list[OptOutRequest], settings: MatchSettings,
                   ) -> tuple[list[Match], str | None]:  # fmt: skip
    """The images among `image_ids` that active `requests` (or earlier removals for them) cover.

    URL and hash kinds need no pixels. Uploads, and the near-duplicates of whatever matched, use vectors from
    (and missing ones go into) the embedding cache; an image that cannot be embedded still matches the exact
    kinds. Hashes the requests name outside `image_ids` whose vectors are cached take part as seeds, so a copy
    of an opted-out image is caught even where the original never arrived. Returns the matches and the model id
    whose vectors were used (None when none were needed)."""
    if not requests or not image_ids:
        return [], None
    requests = derived_requests(catalog, requests)
    uploads = [request for request in requests if request.kind == "image"]
    exact = match_images(requests, image_ids, uris)
    embedder = create_embedder(stage)
    embedded = catalog.embedded_ids(embedder.model_id)
    named = {request.value for request in requests if request.kind in HASH_KINDS}
    seeds = sorted((named - set(image_ids)) & embedded)
    if not (uploads or exact or seeds):
        return [], None
    missing = sorted(set(image_ids) - embedded)
    failures: set[str] = set()
    if missing:
        run_id = f"optout-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        EmbedBlocks(stage, blobs, home.vectors, run_id)(Block(0, "embed", "embed", tuple(missing)))
        block = Block(0, "embed", "embed", ())
        failures = set(commit_blocks(catalog, home.vectors, embedder.model_id, run_id, [block]))
    everything = [*image_ids, *seeds]
    rows = [i for i, image_id in enumerate(everything) if image_id not in failures]
    vectors = None
    if rows:
        found = load_matrix(catalog, home.vectors, embedder.model_id, [everything[i] for i in rows])
        vectors = np.zeros((len(everything), found.shape[1]), np.float32)  # no vector: only exact kinds match
        vectors[rows] = found
    request_vectors, request_phashes = {}, {}
    for request in uploads:
        data = home.uploads.get(request.value)
        request_vectors[request.request_id] = embedder.embed([data])[0][0]
        request_phashes[request.request_id] = phash(data)
    cache: dict[str, int | None] = {}

    def sample_phash(image_id: str) -> int | None:
        if image_id not in cache:
            try:
                cache[image_id] = phash(blobs.get(image_id))
            except Exception:  # noqa: BLE001 - an undecodable blob simply has no perceptual hash
                cache[image_id] = None
        return cache[image_id]

    matches = match_images(requests, everything, [*uris, *[[] for _ in seeds]], vectors=vectors,
                           request_vectors=request_vectors, phashes=sample_phash if uploads else None,
                           request_phashes=request_phashes, settings=settings)  # fmt: skip
    wanted = set(image_ids)
    return [match for match in matches if match.image_id in wanted], embedder.model_id


def apply_optouts(home: Home, name: str, *, settings: MatchSettings | None = None) -> ApplyResult:
    """Thresholds default to the version's own spec (`stages.optout`)."""
    with Catalog.open(home.catalog_path, wait_s=60) as catalog:
        requests = list_requests(catalog)
        spec_json = spec_of_version(catalog, resolve(catalog, name))
        s3 = s3_settings_of(spec_json)
        target = open_store(spec_json.get("publish", {}).get("uri") or home.root / "datasets", s3)
        sync_catalog(catalog, target, parse_ref(name)[0])  # a child this home (or another) committed is the parent
        parent = resolve(catalog, name)
        parent_ref = f"{parent['name']}@v{parent['version']}"
        latest = catalog.versions(parent["name"])[-1]["version"]
        if parent["version"] != latest:  # a child of an old version would become the latest and undo later runs
            raise VersionError(
                f"{parent_ref} is not the latest version of {parent['name']} (v{latest}): opt-outs "
                "are applied to the latest; older versions holding covered images are superseded"
            )
        settings = settings or MatchSettings(**spec_json.get("stages", {}).get("optout", {}))
        root = open_store(parent["uri"], s3)
        parent_files = ParentFiles(root, parent_ref, parent["manifest_sha256"])
        manifest = parent_files.manifest
        samples = pa.concat_tables([parent_files.table(shard["index"]) for shard in manifest["shards"]])
        blobs = home.blobs_for(spec_json)
        image_ids = samples["image_id"].to_pylist()
        uris = [[where for entry in provenance for where in (entry["uri"], entry.get("redirected_to")) if where]
                for provenance in samples["provenance"].to_pylist()]  # fmt: skip
        stage = embed_stage_of(manifest["lineage"])
        active = active_requests(requests)
        matches, model_id = covered_images(catalog, home, blobs, stage, image_ids, uris, active, settings)
        supersede_covered(catalog, parent["name"])
        if not matches:  # nothing to publish; the check itself is recorded (the trainer stops warning)
            catalog.record_optout_check(parent["name"], parent["version"], requests[-1].seq if requests else 0)
            return ApplyResult(parent_ref, parent_ref, [])
        start = max([parent["version"], *published_numbers(target, parent["name"])]) + 1
        holder = f"optout apply to {parent_ref} at {datetime.now(UTC).isoformat()}"  # no resume: its own each time
        number = claim_number(target, parent["name"], start, holder)
        staging = _staging(home, target, parent["name"], number)
        child = _write_child(parent_files, staging, samples, matches)
        child_manifest = build_manifest(
            name=parent["name"], version=number,
            parent={"ref": parent_ref, "version": parent["version"], "manifest_sha256": parent["manifest_sha256"]},
            run_id=manifest["run_id"], spec=manifest["spec"], spec_sha256=manifest["spec_sha256"],
            lineage=[*manifest["lineage"], optout_step(requests, active, matches, model_id, settings)],
            counts=child["counts"], dropped=child["dropped"],
            changes={"added": 0, "removed": len(matches)}, files=child["files"], shards=child["shards"],
            removed=[match.removal() for match in matches],
        )  # fmt: skip
        commit_version(target, staging, parent["name"], number, child_manifest)
        register_version(catalog, target, child_manifest)  # records its removals; earlier versions superseded
        return ApplyResult(parent_ref, child_manifest["ref"], matches)


def supersede_covered(catalog: Catalog, name: str) -> list[int]:
    """Mark `superseded_by_optout` every version of `name` but the latest that still holds an image a request in
    force covers by its hash (named, uploaded, removed before, or seen at a covered URL): an older version an
    apply never touched (the image left it another way, or a later run honoured the request) must not stay
    trainable. Returns the version numbers it marked."""
    versions = catalog.versions(name)
    exclusions = exclusions_of(derived_requests(catalog, active_requests(list_requests(catalog))))
    if len(versions) < 2 or not exclusions.hashes:
        return []
    rows = catalog.db.execute("SELECT DISTINCT version, image_id FROM version_samples WHERE name = ? AND "
                              "version < ?", [name, versions[-1]["version"]]).fetchall()  # fmt: skip
    current = {row["version"] for row in versions if row["status"] == "current"}
    covered = sorted({number for number, image_id in rows if number in current and exclusions.covering_hash(image_id)})
    catalog.mark_superseded(name, covered)
    return covered


def removals_by_run(catalog: Catalog, matches: list[Match]) -> Callable[[set[str]], list[dict[str, Any]]]:
    """For a run's release: which of the parent version's images that the new version lacks left for an opt-out,
    as manifest `removed` entries, so that the parent is superseded (the trainer refuses it) and the requests
    show as applied, as after `optout apply`. Known from the run's optout stages (`matches`) and, for images
    never read again (excluded at ingest), from the requests' hashes and the URLs the catalog saw them at."""

    def removed(absent: set[str]) -> list[dict[str, Any]]:
        found = {match.image_id: match for match in matches}
        for request in derived_requests(catalog, active_requests(list_requests(catalog))):
            if request.kind in (*HASH_KINDS, "image") and request.value not in found:
                method = "exact" if request.kind == "image" else request.kind
                found[request.value] = Match(request.value, request.request_id, method)
        return [found[image_id].removal() for image_id in sorted(absent) if image_id in found]

    return removed


def _staging(home: Home, target: ObjectStore, name: str, number: int) -> Path:
    if isinstance(target, LocalStore):
        staging = target.root / name / f".staging-optout-v{number}"
    else:
        staging = home.root / "tmp" / f"optout-{name}-v{number}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "shards").mkdir(parents=True)
    return staging


class ParentFiles:
    """The parent version's files, each checked against its manifest as it is read: a child must not carry a
    damaged or altered parent file on under a fresh hash (its own verify would then pass)."""

    def __init__(self, root: ObjectStore, ref: str, manifest_sha256: str):
        self.root, self.ref = root, ref
        raw = root.get(MANIFEST)
        if hashlib.sha256(raw).hexdigest() != manifest_sha256:
            self._refuse(f"{MANIFEST} differs from the one recorded at publish time")
        self.manifest = parse_manifest(raw, root.url(MANIFEST))
        self.entries = {item["path"]: item for item in self.manifest["files"]}

    def get(self, relative: str) -> bytes:
        data = self.root.get(relative)
        if hashlib.sha256(data).hexdigest() != self.entries[relative]["sha256"]:
            self._refuse(f"{relative} differs from its manifest")
        return data

    def table(self, relative: str) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.get(relative)))

    def _refuse(self, problem: str) -> None:
        raise VerifyError(f"{self.ref}: {problem}; no opt-out child is built from a damaged version: see "
                          f"`curate verify {self.ref}` and restore its files first")  # fmt: skip


def _write_child(parent: ParentFiles, staging: Path, samples: pa.Table, matches: list[Match]) -> dict:
    removed = {match.image_id: match for match in matches}
    manifest = parent.manifest
    files, shards = [], []
    for shard in manifest["shards"]:
        index = parent.table(shard["index"])
        gone = set(index["image_id"].to_pylist()) & set(removed)
        if not gone:  # carried over unchanged: same bytes, same SHA-256 as in the parent
            for relative, kind in ((shard["tar"], "shard"), (shard["index"], "shard_index")):
                (staging / relative).write_bytes(parent.get(relative))
                files.append(file_entry(staging, relative, kind))
            shards.append(shard)
            continue
        survivors = index.filter(pc.invert(pc.is_in(index["image_id"], pa.array(sorted(gone)))))
        if survivors.num_rows == 0:
            continue
        _rewrite_tar(parent.get(shard["tar"]), staging / shard["tar"], gone)
        pq.write_table(survivors, staging / shard["index"])
        files += [file_entry(staging, shard["tar"], "shard"), file_entry(staging, shard["index"], "shard_index")]
        shards.append({**shard, "samples": survivors.num_rows})
    provenance = parent.table(PROVENANCE)
    provenance, opted_out_inputs = _mark_removed(provenance, removed)
    pq.write_table(provenance, staging / PROVENANCE)
    files.append(file_entry(staging, PROVENANCE, "provenance"))
    before = manifest["dropped"].get("optout", {}).get(str(Reason.OPTED_OUT), 0)  # the run's, earlier applies'
    dropped = {**manifest["dropped"], "optout": {str(Reason.OPTED_OUT): before + opted_out_inputs}}
    counts = {**manifest["counts"], "samples": samples.num_rows - len(removed), "shards": len(shards),
              "kept_inputs": manifest["counts"]["kept_inputs"] - opted_out_inputs,
              "rejected_inputs": manifest["counts"]["rejected_inputs"] + opted_out_inputs}  # fmt: skip
    return {"files": files, "shards": shards, "counts": counts, "dropped": dropped}


def _rewrite_tar(data: bytes, path: Path, gone: set[str]) -> None:
    """The same members in the same order, minus the removed keys; headers copied as written (deterministic)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as source, tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for member in source:
            if member.name.split(".", 1)[0] in gone:
                continue
            out.addfile(member, source.extractfile(member))


def _mark_removed(provenance: pa.Table, removed: dict[str, Match]) -> tuple[pa.Table, int]:
    """The provenance with the removed images' kept inputs marked opted out, and how many inputs that marked."""
    rows = provenance.to_pylist()
    marked = 0
    for row in rows:
        match = removed.get(row["image_id"])
        if match and row["status"] == "kept":
            row.update(status=REJECTED, stage="optout", reason=str(Reason.OPTED_OUT),
                       detail=f"{match.request_id} ({match.method})")  # fmt: skip
            marked += 1
    return pa.Table.from_pylist(rows, schema=provenance.schema), marked


def optout_step(requests: list[OptOutRequest], active: list[OptOutRequest], matches: list[Match],
                 model_id: str | None, settings: MatchSettings) -> dict[str, Any]:  # fmt: skip
    """The lineage step of a run's opt-out check or of an apply: the registry state it read and what it did."""
    return {
        "stage": "optout",
        "params": {
            "registry_seq": requests[-1].seq if requests else 0,
            "registry_head_sha256": requests[-1].record_sha256 if requests else None,
            "active_requests": [request.request_id for request in active],
            "applied_requests": sorted({match.request_id for match in matches}),
            "phash_max_distance": settings.phash_max_distance,
            "embedding_threshold": settings.embedding_threshold,
            "as_of": requests[-1].received_at if requests else None,
        },
        **({"model_id": model_id} if model_id else {}),
    }
