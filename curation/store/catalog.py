"""The DuckDB catalog: runs, sources, images, provenance, stage decisions, versions and shards.

One writer: only the driver process opens it read-write, and Ray workers never touch it (they write block
Parquet files that the driver commits here). Readers (CLI listings, audits) open it read-only. A run closes it
while its workers ingest, embed or derive (`released`), so that other processes' readers and short writers get
in during a long run; a second run or a gc of the home is kept out by the home lock (curation/store/lock.py).

The service (`curate serve`) is the home's one writer process: it calls `Catalog.serve_in_process()` so that
every open in the process, reader or writer, shares one read-write database (DuckDB refuses to mix read-only
and read-write connections to a file in one process, and another process cannot open it while the service runs).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation.errors import CatalogBusyError, RunError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, spec_sha256 VARCHAR NOT NULL, spec_json VARCHAR NOT NULL,
    status VARCHAR NOT NULL,              -- running | finished | failed
    started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ,
    version VARCHAR,                      -- NAME@vN the run published (or found unchanged)
    stats_json VARCHAR                    -- per-stage counts, seconds and rates
);
CREATE TABLE IF NOT EXISTS sources (
    run_id VARCHAR NOT NULL, name VARCHAR NOT NULL, kind VARCHAR NOT NULL, config_json VARCHAR NOT NULL,
    inputs BIGINT, PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS images (
    image_id VARCHAR PRIMARY KEY, bytes BIGINT, format VARCHAR, width INTEGER, height INTEGER, mode VARCHAR,
    frames INTEGER, first_seen_at TIMESTAMPTZ
);
-- One row per input of a run: where it came from and under what terms (image_id null if no bytes were had).
CREATE TABLE IF NOT EXISTS provenance (
    run_id VARCHAR NOT NULL, block INTEGER NOT NULL, position INTEGER NOT NULL, source VARCHAR NOT NULL,
    uri VARCHAR NOT NULL, image_id VARCHAR, bytes BIGINT, format VARCHAR, width INTEGER, height INTEGER,
    license VARCHAR, attribution VARCHAR, caption VARCHAR, seen_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, block, position)
);
-- Where a URL's redirects led (null: it did not redirect): added in place.
ALTER TABLE provenance ADD COLUMN IF NOT EXISTS redirected_to VARCHAR;
-- What each stage decided about each input. The final fate of an input is its last stage's row.
CREATE TABLE IF NOT EXISTS decisions (
    run_id VARCHAR NOT NULL, block INTEGER NOT NULL, position INTEGER NOT NULL, stage VARCHAR NOT NULL,
    stage_order INTEGER NOT NULL, status VARCHAR NOT NULL, reason VARCHAR, detail VARCHAR,
    PRIMARY KEY (run_id, block, position, stage)
);
CREATE TABLE IF NOT EXISTS versions (
    name VARCHAR NOT NULL, version INTEGER NOT NULL, uri VARCHAR NOT NULL, manifest_sha256 VARCHAR NOT NULL,
    content_sha256 VARCHAR NOT NULL, parent INTEGER, run_id VARCHAR, created_at TIMESTAMPTZ NOT NULL,
    samples BIGINT NOT NULL, status VARCHAR NOT NULL DEFAULT 'current', PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS shards (
    name VARCHAR NOT NULL, version INTEGER NOT NULL, path VARCHAR NOT NULL, sha256 VARCHAR NOT NULL,
    bytes BIGINT NOT NULL, samples BIGINT NOT NULL, PRIMARY KEY (name, version, path)
);
CREATE TABLE IF NOT EXISTS version_samples (
    name VARCHAR NOT NULL, version INTEGER NOT NULL, image_id VARCHAR NOT NULL, shard VARCHAR NOT NULL,
    part VARCHAR NOT NULL, PRIMARY KEY (name, version, image_id)
);
-- The published file's SHA-256 where publish.image re-encoded it (else the image id): added in place.
ALTER TABLE version_samples ADD COLUMN IF NOT EXISTS sha256 VARCHAR;
-- Which images have a vector for which model, and where it is (HOME/vectors/FILE, row).
CREATE TABLE IF NOT EXISTS embeddings (
    image_id VARCHAR NOT NULL, model_id VARCHAR NOT NULL, file VARCHAR NOT NULL, row INTEGER NOT NULL,
    run_id VARCHAR NOT NULL, PRIMARY KEY (image_id, model_id)
);
-- Perceptual hashes, computed once per image (signed 64-bit; -1 when the image has none).
CREATE TABLE IF NOT EXISTS phashes (image_id VARCHAR PRIMARY KEY, phash BIGINT NOT NULL);
-- Duplicate and contamination groups of a run: every non-kept member, its representative and why.
CREATE TABLE IF NOT EXISTS duplicates (
    run_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, image_id VARCHAR NOT NULL, group_id VARCHAR NOT NULL,
    representative VARCHAR NOT NULL, method VARCHAR NOT NULL, similarity DOUBLE, threshold DOUBLE,
    neighbour VARCHAR, model_id VARCHAR, PRIMARY KEY (run_id, stage, image_id)
);
-- The opt-out registry: append-only and hash-chained (curation/audit/registry.py).
CREATE TABLE IF NOT EXISTS optout_requests (
    request_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, kind VARCHAR NOT NULL, value VARCHAR NOT NULL,
    reason VARCHAR NOT NULL, requester VARCHAR NOT NULL, received_at TIMESTAMPTZ NOT NULL,
    prev_sha256 VARCHAR NOT NULL, record_sha256 VARCHAR NOT NULL
);
-- Which image each opt-out removed from which version, and how it matched.
CREATE TABLE IF NOT EXISTS optout_removals (
    name VARCHAR NOT NULL, version INTEGER NOT NULL, image_id VARCHAR NOT NULL, request_id VARCHAR NOT NULL,
    method VARCHAR NOT NULL, similarity DOUBLE, via_image_id VARCHAR, PRIMARY KEY (name, version, image_id)
);
-- Opt-out applies that found nothing to remove: the version was checked against the registry up to seq.
CREATE TABLE IF NOT EXISTS optout_checks (
    name VARCHAR NOT NULL, version INTEGER NOT NULL, registry_seq BIGINT NOT NULL, checked_at TIMESTAMPTZ NOT NULL
);
-- Trainer checkpoints and the version each read (lineage: checkpoint -> NAME@vN -> images).
CREATE TABLE IF NOT EXISTS checkpoints (
    path VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, version INTEGER NOT NULL, manifest_sha256 VARCHAR NOT NULL,
    step BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL
);
CREATE OR REPLACE VIEW outcomes AS
SELECT p.run_id, p.block, p.position, p.source, p.uri, p.image_id, d.stage, d.status, d.reason, d.detail
FROM provenance p JOIN (
    SELECT *, row_number() OVER (PARTITION BY run_id, block, position ORDER BY stage_order DESC) AS latest
    FROM decisions
) d USING (run_id, block, position) WHERE d.latest = 1;
"""


CREATION_GRACE_S = 5.0  # a catalog file younger than this that DuckDB cannot read yet is still being created


def _being_created(path: Path, error: Exception) -> bool:
    """Whether DuckDB refused a file because another process is creating it right now (the file exists before
    its header is written): a fresh home opened by several processes at once. An old unreadable file is corrupt."""
    if "not a valid DuckDB database file" not in str(error):
        return False
    try:
        return time.time() - path.stat().st_mtime < CREATION_GRACE_S
    except FileNotFoundError:
        return True


class Catalog:
    """A DuckDB file. Use `Catalog.open(path)` for the writer, `Catalog.open(path, read_only=True)` for readers."""

    _in_process: bool = False  # set by serve_in_process()

    def __init__(self, connection: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool = False):
        self.db = connection
        self.path = path
        self.read_only = read_only  # whether the connection itself refuses writes

    @classmethod
    def serve_in_process(cls) -> None:
        """From now on this process is the catalog's only user: read-only opens share the read-write database."""
        cls._in_process = True

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False, wait_s: float = 0.0) -> Catalog:
        """Open the catalog; with `wait_s`, wait that long for another process's lock (short writers queue)."""
        path = Path(path)
        if read_only and cls._in_process:
            return cls(duckdb.connect(str(path)), path)
        if read_only and not path.exists():
            writer = cls.open(path, wait_s=wait_s)  # create the schema once so readers of a fresh home see tables
            writer.close()
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        return cls(cls._connect(path, read_only, wait_s), path, read_only=read_only)

    @staticmethod
    def _connect(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                connection = duckdb.connect(str(path), read_only=read_only)
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() and not _being_created(path, error):
                    raise
                if time.monotonic() >= deadline:
                    raise CatalogBusyError(
                        f"{path} is in use by another process (a running `curate run`, or `curate serve`: then "
                        f"submit through it): one writer at a time. {error}"
                    ) from None
                time.sleep(0.05 + random.random() * 0.1)
        if not read_only:
            connection.execute(SCHEMA)
        return connection

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    @property
    def connected(self) -> bool:
        """False after `released` could not reopen the file: nothing can be recorded through this object."""
        return self.db is not None

    @contextmanager
    def released(self, wait_s: float = 600.0) -> Iterator[None]:
        """Close the file while this process works without it (the executor ingests, embeds or derives), so that
        other processes' readers and short writers get in; reopen after, waiting up to `wait_s` for them. (Not
        in the service, whose one process shares the database.)"""
        if Catalog._in_process or self.read_only:
            yield
            return
        self.db.close()
        self.db = None
        try:
            yield
        finally:
            self.db = self._connect(self.path, False, wait_s)

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.db.execute("BEGIN TRANSACTION")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def rows(self, sql: str, parameters: list[Any] | None = None) -> list[dict[str, Any]]:
        cursor = self.db.execute(sql, parameters or [])
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    # --- runs -------------------------------------------------------------------------------------------
    def unfinished_run(self, spec_sha256: str) -> str | None:
        """The latest run of this exact spec that did not finish, unless a run of it finished since: the one a
        new `curate run` resumes. (An older unfinished run holds an older plan of the pool.)"""
        found = self.db.execute(
            "SELECT run_id FROM runs r WHERE spec_sha256 = ? AND status <> 'finished' AND started_at > coalesce("
            "(SELECT max(started_at) FROM runs f WHERE f.spec_sha256 = r.spec_sha256 AND f.status = 'finished'), "
            "'-infinity'::TIMESTAMPTZ) ORDER BY started_at DESC LIMIT 1",
            [spec_sha256],
        ).fetchone()
        return found[0] if found else None

    def start_run(self, run_id: str, name: str, spec_sha256: str, spec_json: dict) -> None:
        self.db.execute(
            "INSERT INTO runs (run_id, name, spec_sha256, spec_json, status, started_at) VALUES (?, ?, ?, ?, ?, ?)",
            [run_id, name, spec_sha256, json.dumps(spec_json, sort_keys=True), "running", datetime.now(UTC)],
        )

    def mark_run(self, run_id: str, *, status: str, version: str | None = None, stats: dict | None = None) -> None:
        self.db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, version = coalesce(?, version), stats_json = ? "
            "WHERE run_id = ?",
            [status, datetime.now(UTC), version, json.dumps(stats or {}, sort_keys=True), run_id],
        )

    def run(self, run_id: str) -> dict[str, Any]:
        if run_id == "latest":
            found = self.rows("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")
        else:
            found = self.rows("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not found:
            known = [row["run_id"] for row in self.rows("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5")]
            raise RunError(f"no run {run_id!r} in this home; recent runs: {', '.join(known) or 'none'}")
        return found[0]

    # --- ingest outputs ---------------------------------------------------------------------------------
    def commit_inputs(self, run_id: str, inputs: pa.Table, sources: list[dict]) -> None:
        """Record a run's ingest rows (idempotent: a resumed run replaces what it wrote before)."""
        with self.transaction() as db:
            db.register("staged_inputs", inputs)
            for table in ("provenance", "decisions", "sources"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            db.execute(
                "INSERT INTO provenance SELECT ?, block, position, source, uri, image_id, bytes, format, width, "
                "height, license, attribution, caption, seen_at, redirected_to FROM staged_inputs",
                [run_id],
            )
            db.execute(
                "INSERT INTO decisions SELECT ?, block, position, 'ingest', 0, status, reason, detail "
                "FROM staged_inputs",
                [run_id],
            )
            db.execute(
                "INSERT INTO images SELECT image_id, any_value(bytes), any_value(format), any_value(width), "
                "any_value(height), any_value(mode), any_value(frames), min(seen_at) FROM staged_inputs "
                "WHERE status = 'kept' AND image_id NOT IN (SELECT image_id FROM images) GROUP BY image_id"
            )
            for source in sources:
                db.execute(
                    "INSERT INTO sources VALUES (?, ?, ?, ?, (SELECT count(*) FROM staged_inputs WHERE source = ?))",
                    [
                        run_id,
                        source["name"],
                        source["kind"],
                        json.dumps(source, sort_keys=True),
                        source["name"],
                    ],
                )
            db.unregister("staged_inputs")

    def _insert_staged(self, rows: pa.Table, delete: tuple[str, list[Any]] | None, insert: str,
                       parameters: list[Any]) -> None:  # fmt: skip
        """In one transaction: optionally DELETE (sql, params), then run `insert`, which reads `rows` as `staged`."""
        with self.transaction() as db:
            db.register("staged", rows)
            if delete:
                db.execute(*delete)
            db.execute(insert, parameters)
            db.unregister("staged")

    def record_stage(self, run_id: str, stage: str, order: int, decisions: pa.Table) -> None:
        """Decisions of a stage over some inputs: columns block, position, status, reason, detail."""
        self._insert_staged(
            decisions,
            ("DELETE FROM decisions WHERE run_id = ? AND stage = ?", [run_id, stage]),
            "INSERT INTO decisions SELECT ?, block, position, ?, ?, status, reason, detail FROM staged",
            [run_id, stage, order],
        )

    # --- embeddings -------------------------------------------------------------------------------------
    def embedded_ids(self, model_id: str) -> set[str]:
        rows = self.db.execute("SELECT image_id FROM embeddings WHERE model_id = ?", [model_id]).fetchall()
        return {row[0] for row in rows}

    def embedding_locations(self, model_id: str, image_ids: list[str]) -> dict[str, tuple[str, int]]:
        wanted = pa.table({"image_id": pa.array(image_ids, pa.string())})
        self.db.register("wanted_ids", wanted)
        rows = self.db.execute(
            "SELECT e.image_id, e.file, e.row FROM embeddings e JOIN wanted_ids w USING (image_id) "
            "WHERE e.model_id = ?",
            [model_id],
        ).fetchall()
        self.db.unregister("wanted_ids")
        return {image_id: (file, row) for image_id, file, row in rows}

    def embedding_files(self, model_id: str) -> dict[str, int]:
        """{vectors file: rows it must hold} for a model's cached vectors."""
        found = self.db.execute("SELECT file, max(row) + 1 FROM embeddings WHERE model_id = ? GROUP BY file",
                                [model_id]).fetchall()  # fmt: skip
        return dict(found)

    def forget_embeddings(self, model_id: str, files: list[str]) -> set[str]:
        """Drop the cache rows that point into `files`; returns their image ids (to be embedded again)."""
        with self.transaction() as db:
            found = db.execute("SELECT image_id FROM embeddings WHERE model_id = ? AND list_contains(?, file)",
                               [model_id, files]).fetchall()  # fmt: skip
            db.execute("DELETE FROM embeddings WHERE model_id = ? AND list_contains(?, file)", [model_id, files])
        return {row[0] for row in found}

    def commit_embeddings(self, model_id: str, run_id: str, rows: pa.Table) -> None:
        """Columns image_id, file, row of successfully embedded images (idempotent per image and model)."""
        self._insert_staged(
            rows,
            None,
            "INSERT INTO embeddings SELECT image_id, ?, file, row, ? FROM staged ON CONFLICT DO NOTHING",
            [model_id, run_id],
        )

    # --- dedup ---------------------------------------------------------------------------------------------
    def phashes(self, image_ids: list[str]) -> dict[str, int | None]:
        wanted = pa.table({"image_id": pa.array(image_ids, pa.string())})
        self.db.register("wanted_phashes", wanted)
        rows = self.db.execute(
            "SELECT p.image_id, p.phash FROM phashes p JOIN wanted_phashes USING (image_id)"
        ).fetchall()
        self.db.unregister("wanted_phashes")
        return {image_id: None if value == -1 else value % (1 << 64) for image_id, value in rows}

    def record_phashes(self, pairs: list[tuple[str, int | None]]) -> None:
        signed = [-1 if value is None else (value - (1 << 64) if value >= 1 << 63 else value) for _, value in pairs]
        rows = pa.table({"image_id": [image_id for image_id, _ in pairs], "phash": pa.array(signed, pa.int64())})
        self._insert_staged(
            rows, None, "INSERT INTO phashes SELECT image_id, phash FROM staged ON CONFLICT DO NOTHING", []
        )

    def record_duplicates(self, run_id: str, stage: str, members, model_id: str | None) -> None:
        rows = pa.Table.from_pylist(
            [{"image_id": m.image_id, "group_id": m.group_id, "representative": m.representative, "method": m.method,
              "similarity": m.similarity, "threshold": m.threshold, "neighbour": m.neighbour} for m in members],
            schema=pa.schema([("image_id", pa.string()), ("group_id", pa.string()), ("representative", pa.string()),
                              ("method", pa.string()), ("similarity", pa.float64()), ("threshold", pa.float64()),
                              ("neighbour", pa.string())]),
        )  # fmt: skip
        self._insert_staged(
            rows,
            ("DELETE FROM duplicates WHERE run_id = ? AND stage = ?", [run_id, stage]),
            "INSERT INTO duplicates SELECT ?, ?, image_id, group_id, representative, method, similarity, threshold, "
            "neighbour, ? FROM staged",
            [run_id, stage, model_id],
        )

    # --- opt-outs -----------------------------------------------------------------------------------------
    # --- versions ---------------------------------------------------------------------------------------
    def register_version(self, manifest: dict, uri: str, manifest_sha256: str, samples: pa.Table | None) -> None:
        """The version, its shards, its samples (columns image_id, shard, part) and its removals, all or none."""
        name, number = manifest["name"], manifest["version"]
        with self.transaction() as db:
            db.execute("DELETE FROM versions WHERE name = ? AND version = ?", [name, number])
            db.execute("DELETE FROM shards WHERE name = ? AND version = ?", [name, number])
            db.execute("DELETE FROM version_samples WHERE name = ? AND version = ?", [name, number])
            parent = manifest["parent"]["version"] if manifest.get("parent") else None
            db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'current')",
                [
                    name,
                    number,
                    self._stored_uri(uri),
                    manifest_sha256,
                    manifest["content_sha256"],
                    parent,
                    manifest["run_id"],
                    manifest["created_at"],
                    manifest["counts"]["samples"],
                ],
            )
            for shard in manifest["shards"]:
                tar = next(item for item in manifest["files"] if item["path"] == shard["tar"])
                db.execute(
                    "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?)",
                    [name, number, shard["tar"], tar["sha256"], tar["bytes"], shard["samples"]],
                )
            if samples is not None:
                db.register("staged_samples", samples)
                published = "sha256" if "sha256" in samples.column_names else "image_id"  # older shard indexes
                db.execute("INSERT INTO version_samples (name, version, image_id, shard, part, sha256) SELECT ?, ?, "
                           f"image_id, shard, part, {published} FROM staged_samples", [name, number])  # fmt: skip
                db.unregister("staged_samples")
            self._register_removals(db, manifest)

    @staticmethod
    def _register_removals(db, manifest: dict) -> None:
        """What an opt-out child removed (its manifest's `removed`), and the status it implies: a child supersedes
        every earlier version, and an earlier version registered after its child (a catalog catching up with a
        shared store) is superseded as well. The store, not one catalog, is the truth."""
        name, number = manifest["name"], manifest["version"]
        db.execute("DELETE FROM optout_removals WHERE name = ? AND version = ?", [name, number])
        for item in manifest.get("removed", []):
            db.execute("INSERT INTO optout_removals VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [name, number, item["image_id"], item["request_id"], item["method"], item["similarity"],
                        item["via_image_id"]])  # fmt: skip
        db.execute(
            "UPDATE versions SET status = 'superseded_by_optout' WHERE name = ? AND version < "
            "(SELECT max(version) FROM optout_removals WHERE name = ?)",
            [name, name],
        )

    def mark_superseded(self, name: str, numbers: list[int]) -> None:
        if numbers:
            self.db.execute("UPDATE versions SET status = 'superseded_by_optout' WHERE name = ? AND "
                            "list_contains(?, version)", [name, numbers])  # fmt: skip

    def removals_in_lineage(self, name: str, number: int) -> dict[str, int]:
        """{request id: images it removed} over NAME@vN and its ancestors (parent, grandparent, ...), counting only
        images still absent from NAME@vN (one a later run took back, its request withdrawn, is not)."""
        rows = self.db.execute(
            "WITH RECURSIVE chain(version) AS (SELECT ?::INTEGER UNION ALL SELECT v.parent FROM versions v JOIN "
            "chain c ON v.name = ? AND v.version = c.version WHERE v.parent IS NOT NULL) "
            "SELECT request_id, count(DISTINCT image_id) FROM optout_removals WHERE name = ? AND version IN "
            "(SELECT version FROM chain) AND image_id NOT IN (SELECT image_id FROM version_samples WHERE name = ? "
            "AND version = ?) GROUP BY request_id ORDER BY request_id",
            [number, name, name, name, number],
        ).fetchall()
        return dict(rows)

    def record_optout_check(self, name: str, number: int, registry_seq: int) -> None:
        """An apply matched nothing in NAME@vN against the registry up to `registry_seq` (it publishes no child)."""
        self.db.execute("INSERT INTO optout_checks VALUES (?, ?, ?, ?)",
                        [name, number, registry_seq, datetime.now(UTC)])  # fmt: skip

    def originals_of(self, published: list[str]) -> dict[str, str]:
        """{published file SHA-256: its image id} for the hashes that are re-encoded published files (a reader of
        a catalog written before publish.image existed finds none)."""
        if not published or not self.has_column("version_samples", "sha256"):
            return {}
        rows = self.db.execute("SELECT DISTINCT sha256, image_id FROM version_samples WHERE sha256 <> image_id AND "
                               "list_contains(?, sha256)", [published]).fetchall()  # fmt: skip
        return dict(rows)

    def seen_uris(self) -> list[tuple[str, str]]:
        """(image id, URI) for every place an image was seen, in order: each input's URI and, for a URL that
        redirected, the URL the bytes came from."""
        redirected = self.redirected_to_sql()
        sql = (
            f"SELECT DISTINCT image_id, uri FROM (SELECT image_id, uri FROM provenance UNION SELECT image_id, "
            f"{redirected} FROM provenance) WHERE image_id IS NOT NULL AND uri IS NOT NULL ORDER BY image_id, uri"
        )
        return self.db.execute(sql).fetchall()

    def redirected_to_sql(self) -> str:
        """How SQL names provenance's `redirected_to`: NULL in a catalog made before it, which a reader does not
        add, so every query reads old and new catalogs alike."""
        return "redirected_to" if self.has_column("provenance", "redirected_to") else "NULL"

    def has_column(self, table: str, column: str) -> bool:
        """Whether this catalog has a column added in place since it was made (a reader does not add it)."""
        return bool(self.rows("SELECT 1 FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                              [table, column]))  # fmt: skip

    def optout_checked_seq(self, name: str, number: int) -> int:
        found = self.db.execute("SELECT max(registry_seq) FROM optout_checks WHERE name = ? AND version = ?",
                                [name, number]).fetchone()  # fmt: skip
        return int(found[0] or 0)

    def record_checkpoint(self, path: str, name: str, number: int, manifest_sha256: str, step: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
                       [path, name, number, manifest_sha256, step, datetime.now(UTC)])  # fmt: skip

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        where, parameters = ("WHERE name = ?", [name]) if name else ("", [])
        rows = self.rows(f"SELECT * FROM versions {where} ORDER BY name, version", parameters)
        return [{**row, "uri": self._located_uri(row["uri"])} for row in rows]

    def version(self, name: str, number: int) -> dict[str, Any] | None:
        found = [row for row in self.versions(name) if row["version"] == number]
        return found[0] if found else None

    def _stored_uri(self, uri: str) -> str:
        """A version inside this home is recorded relative to it, so a moved or copied home reads its own files
        (not the original's); S3 and other local places stay as they are."""
        if uri.startswith("s3://"):
            return uri
        try:
            return Path(uri).resolve().relative_to(self.path.resolve().parent).as_posix()
        except ValueError:
            return uri

    def _located_uri(self, stored: str) -> str:
        if stored.startswith("s3://") or Path(stored).is_absolute():
            return stored
        return str(self.path.resolve().parent / stored)
