"""Audit queries: where an image came from and where it went; what a version is made of; read-only SQL."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from curation.api import open_version
from curation.audit.matching import derived_requests, exclusions_of
from curation.audit.registry import REQUEST_ID, active_requests, list_requests
from curation.errors import CurationError
from curation.ingest.exclusions import canonical_uri
from curation.store.catalog import Catalog
from curation.store.home import Home


class QueryError(CurationError):
    """A read-only SQL query failed (syntax, unknown table, or an attempt to write)."""


def domain_of(uri: str, source: str) -> str:
    """The host of a URL; local paths and other schemes are grouped by source (e.g. 'local:openclipart')."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return (parts.hostname or "").lower()
    if parts.scheme == "s3":
        return f"s3:{parts.netloc}"
    return f"local:{source}"


def _image_ids_for(catalog: Catalog, query: str, local_files: bool) -> tuple[list[str], list[str]]:
    """The image ids a query names, and the recorded spellings of it when it is a URI (else []); a hash (or file)
    that is a re-encoded published file names its original."""
    path = Path(query).expanduser()
    digest = None
    if re.fullmatch(r"[0-9a-fA-F]{64}", query):
        digest = query.lower()
    elif local_files and path.is_file():  # an image file someone holds: its content address
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest:
        return [catalog.originals_of([digest]).get(digest, digest)], []
    spellings = sorted(_recorded_spellings(catalog, query))
    rows = catalog.rows(f"SELECT DISTINCT image_id FROM provenance WHERE (list_contains(?, uri) OR list_contains(?, "
                        f"{catalog.redirected_to_sql()})) AND image_id IS NOT NULL ORDER BY image_id",
                        [spellings] * 2)  # fmt: skip
    return [row["image_id"] for row in rows], spellings


def _recorded_spellings(catalog: Catalog, query: str) -> set[str]:
    """The URIs as the catalog recorded them (inputs' and redirects' targets) that name the place `query` names:
    the query itself when it was recorded so, else every recorded URI of the same canonical spelling (host case,
    default port, escapes), as opt-out matching compares them."""
    column = catalog.redirected_to_sql()
    if catalog.rows(f"SELECT 1 FROM provenance WHERE uri = ? OR {column} = ? LIMIT 1", [query, query]):
        return {query}
    canonical = canonical_uri(query)
    recorded = catalog.db.execute(f"SELECT uri FROM provenance UNION SELECT {column} FROM provenance").fetchall()
    return {uri for (uri,) in recorded if uri and canonical_uri(uri) == canonical} or {query}


def _checkpoint_rows(catalog: Catalog, sql: str, parameters: list[Any]) -> list[dict[str, Any]]:
    """A home last written before the trainer existed has no `checkpoints` table (readers do not create it)."""
    if not catalog.rows("SELECT 1 FROM information_schema.tables WHERE table_name = 'checkpoints'"):
        return []
    return catalog.rows(sql, parameters)


def audit_image(home: str | Path, query: str, *, local_files: bool = True) -> dict[str, Any]:
    """Every pool, provenance row, run decision and version that holds an image (given as a file path, a SHA-256
    or a URI), the versions that removed it and the requests that did. The service passes `local_files=False`:
    a query from the network must not read the server's files."""
    with Catalog.open(Home(home).catalog_path, read_only=True, wait_s=30) as catalog:
        image_ids, spellings = _image_ids_for(catalog, query, local_files)
        report: dict[str, Any] = {"query": query, "image_ids": image_ids}
        if not image_ids:  # a URI no bytes came from (opted out before fetching, failed, ...)
            by_uri = catalog.rows("SELECT * FROM outcomes WHERE list_contains(?, uri)", [spellings])
            covered_by = _covering_requests(catalog, [query], [])
            report.update(found=bool(by_uri), decisions=by_uri, provenance=[], versions=[], removed_from=[],
                          covered_by=covered_by, requests=_requests(catalog, by_uri, [], covered_by), images=[],
                          checkpoints=[])  # fmt: skip
            return report
        marks = ", ".join("?" * len(image_ids))
        report["images"] = catalog.rows(f"SELECT * FROM images WHERE image_id IN ({marks})", image_ids)
        report["provenance"] = catalog.rows(
            f"SELECT run_id, source, uri, {catalog.redirected_to_sql()} AS redirected_to, license, attribution, "
            "caption, seen_at FROM provenance "
            f"WHERE image_id IN ({marks}) ORDER BY seen_at, source, uri",
            image_ids,
        )
        report["decisions"] = catalog.rows(
            f"SELECT run_id, source, uri, stage, status, reason, detail FROM outcomes WHERE image_id IN ({marks}) "
            "ORDER BY run_id, source, uri",
            image_ids,
        )
        report["versions"] = catalog.rows(
            f"SELECT s.name || '@v' || s.version AS ref, s.shard, v.status FROM version_samples s "
            f"JOIN versions v USING (name, version) WHERE s.image_id IN ({marks}) ORDER BY s.name, s.version",
            image_ids,
        )
        report["removed_from"] = catalog.rows(
            f"SELECT name || '@v' || version AS ref, request_id, method, similarity, via_image_id FROM optout_removals "
            f"WHERE image_id IN ({marks}) ORDER BY name, version",
            image_ids,
        )
        uris = sorted({row["uri"] for row in report["provenance"]} | ({query} if "://" in query else set()))
        report["covered_by"] = _covering_requests(catalog, uris, image_ids)
        report["requests"] = _requests(catalog, report["decisions"], report["removed_from"], report["covered_by"])
        report["checkpoints"] = _checkpoint_rows(
            catalog,
            f"SELECT DISTINCT c.path, c.name || '@v' || c.version AS dataset, c.step, c.created_at FROM checkpoints c "
            f"JOIN version_samples s USING (name, version) WHERE s.image_id IN ({marks}) ORDER BY c.created_at, c.path",
            image_ids,
        )
        report["found"] = bool(report["provenance"] or report["versions"])
        return report


def _covering_requests(catalog: Catalog, uris: list[str], image_ids: list[str]) -> list[str]:
    """Requests in force now that cover one of these URIs or hashes (and so would keep it out of the next run),
    whether or not a run or an apply has acted on them yet. Uploaded images match by pixels: see `requests`."""
    active = active_requests(list_requests(catalog))
    exclusions = exclusions_of(derived_requests(catalog, active))
    found = {exclusions.covering_uri(uri) for uri in uris} | {exclusions.covering_hash(i) for i in image_ids}
    return sorted(request_id for request_id in found if request_id)


def _requests(catalog: Catalog, decisions: list[dict], removed_from: list[dict], covered_by: list[str]) -> list[dict]:
    """The registry rows of every request that removed it, rejected one of its inputs, or covers it now."""
    request_ids = sorted({row["request_id"] for row in removed_from} | set(covered_by) | {
        match for row in decisions if row["reason"] == "opted_out"
        for match in REQUEST_ID.findall(row["detail"] or "")})  # fmt: skip
    return [row for request_id in request_ids
            for row in catalog.rows("SELECT request_id, kind, value, reason, requester, received_at FROM "
                                    "optout_requests WHERE request_id = ?", [request_id])]  # fmt: skip


def run_rejects(catalog: Catalog, run_id: str, *, summary: bool) -> list[dict[str, Any]]:
    """What a run dropped: every rejected input with its reason, or counts per stage and reason."""
    if summary:
        return catalog.rows(
            "SELECT stage, reason, count(*) AS inputs FROM outcomes WHERE run_id = ? AND status = 'rejected' "
            "GROUP BY ALL ORDER BY inputs DESC, reason",
            [run_id],
        )
    return catalog.rows(
        "SELECT source, uri, image_id, stage, reason, detail FROM outcomes "
        "WHERE run_id = ? AND status = 'rejected' ORDER BY source, uri",
        [run_id],
    )


def run_duplicates(catalog: Catalog, run_id: str) -> list[dict[str, Any]]:
    """A run's duplicate and contamination groups: each dropped image with the kept one, method and score.
    `kept_uri`: where the kept image was seen (this run, else an earlier run for a published one; for a
    contamination group, the evaluation image it matched); `kept_dropped_for`: the reason a later stage dropped
    the kept image itself (e.g. contamination, opted_out), else null."""
    return catalog.rows(
        "SELECT d.stage, d.group_id, d.representative, d.image_id, d.method, d.similarity, d.threshold, "
        "d.model_id, (SELECT min(uri) FROM provenance p WHERE p.run_id = d.run_id AND p.image_id = d.image_id) "
        "AS uri, CASE WHEN d.stage = 'decontaminate' THEN (SELECT min(json_extract_string(o.detail, "
        "'$.evaluation_uri')) FROM outcomes o WHERE o.run_id = d.run_id AND o.image_id = d.image_id) ELSE "
        "coalesce((SELECT min(uri) FROM provenance p WHERE p.run_id = d.run_id AND p.image_id = d.representative),"
        " (SELECT min(uri) FROM provenance p WHERE p.image_id = d.representative)) END AS kept_uri, "
        "CASE WHEN d.stage = 'decontaminate' THEN NULL ELSE (SELECT min(o.reason) FROM outcomes o WHERE "
        "o.run_id = d.run_id AND o.image_id = d.representative AND o.status = 'rejected') END AS kept_dropped_for "
        "FROM duplicates d WHERE d.run_id = ? ORDER BY d.stage, d.group_id, d.image_id",
        [run_id],
    )


def version_diff(home: str | Path, first: str, second: str) -> dict[str, Any]:
    """Image ids added and removed going from version `first` to version `second`."""
    before = set(open_version(first, home=home).samples()["image_id"].to_pylist())
    after = set(open_version(second, home=home).samples()["image_id"].to_pylist())
    return {"from": first, "to": second, "added": sorted(after - before), "removed": sorted(before - after)}


def audit_version(home: str | Path, ref: str) -> dict[str, Any]:
    """Composition by source, licence, domain and part; what was dropped and why; opt-outs applied."""
    version = open_version(ref, home=home)
    samples = version.samples().to_pylist()
    manifest = version.manifest
    by_source, by_license, by_domain, by_part = Counter(), Counter(), Counter(), Counter()
    for sample in samples:
        by_source.update(sample["sources"])
        by_license[sample["license"] or "unknown"] += 1
        by_domain.update({domain_of(entry["uri"], entry["source"]) for entry in sample["provenance"]})
        by_part[sample["part"]] += 1
    with Catalog.open(Home(home).catalog_path, read_only=True, wait_s=30) as catalog:
        status = catalog.version(manifest["name"], manifest["version"])["status"]
        removed = catalog.removals_in_lineage(manifest["name"], manifest["version"])  # its ancestors' too
        checkpoints = _checkpoint_rows(
            catalog,
            "SELECT path, step, manifest_sha256, created_at FROM checkpoints WHERE name = ? AND version = ? "
            "ORDER BY created_at, path",
            [manifest["name"], manifest["version"]],
        )
    return {
        "ref": version.ref,
        "status": status,
        "samples": len(samples),
        "counts": manifest["counts"],
        "by_source": dict(by_source.most_common()),
        "by_license": dict(by_license.most_common()),
        "by_domain": dict(by_domain.most_common()),
        "by_part": dict(by_part.most_common()),
        "dropped": manifest["dropped"],
        "optouts_applied": removed,
        "lineage": manifest["lineage"],
        "checkpoints": checkpoints,
    }


def read_only_sql(home: str | Path, query: str) -> tuple[list[str], list[tuple]]:
    """Run SQL on a read-only connection to the catalog: writes fail there, loudly."""
    import duckdb

    with Catalog.open(Home(home).catalog_path, read_only=True, wait_s=30) as catalog:
        if not catalog.read_only:
            raise QueryError("SQL is offered only on a read-only connection (not inside the service)")
        try:
            cursor = catalog.db.execute(query)
            columns = [column[0] for column in cursor.description] if cursor.description else []
            return columns, cursor.fetchall()
        except duckdb.Error as error:
            raise QueryError(f"query failed: {error}") from None
