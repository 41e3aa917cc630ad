"""The service's writer queue: jobs (pipeline runs, opt-out applications) run one at a time on one thread.

Why one at a time: both publish versions, and the catalog takes one writer; the queue makes that explicit while
reads stay concurrent. Runs execute on Ray (in-process, or the cluster at `ray_address`). Jobs live in the
catalog's `jobs` table and each writes HOME/service/jobs/JOB_ID.log; when the service starts, jobs (and runs)
that a previous service process left running are marked `interrupted`, and resuming one re-runs its spec, which
continues the unfinished run block by block.
"""

from __future__ import annotations

import glob
import json
import logging
import queue
import secrets
import threading
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from curation.config import FolderSource, PipelineSpec, UrlListSource, WebDatasetSource, parse_spec, read_yaml
from curation.core.progress import Progress
from curation.errors import CurationError, RunCancelled, SpecError
from curation.service.settings import ServiceSettings
from curation.store.catalog import Catalog
from curation.store.home import Home

log = logging.getLogger("curation.service")

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, params_json VARCHAR NOT NULL, status VARCHAR NOT NULL,
    submitted_by VARCHAR, submitted_at TIMESTAMPTZ NOT NULL, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0, run_id VARCHAR, version VARCHAR, error VARCHAR, result_json VARCHAR
);
"""
RESUMABLE = ("interrupted", "failed", "cancelled")


class JobError(CurationError):
    """A job request asks for something its state does not allow."""


class JobNotFound(JobError):
    """No job has this id."""


def spec_from_text(text: str, settings: ServiceSettings, home: Home) -> PipelineSpec:
    """A submitted spec (YAML or JSON text), read as if it were a file in `specs_dir`, and confined: local paths
    must lie under `data_root` (inputs, model files) or the home (outputs); S3 credentials must come from the
    server's environment, never from a request (the job record would keep them)."""
    data = read_yaml(text, "<submitted spec>")
    spec = _with_server_s3(parse_spec(data, origin="<submitted spec>", base_dir=settings.specs_dir), settings)
    inputs: list[Path] = []
    sources = list(spec.sources) + list(spec.stages.decontaminate.sets if spec.stages.decontaminate else ())
    for source in sources:
        if isinstance(source, FolderSource | UrlListSource):
            inputs.append(source.path)
        elif isinstance(source, WebDatasetSource):
            inputs += _local_shards(source)
    embed = spec.stages.embed
    if embed and embed.model.startswith("bundled:") and embed.model != "bundled:default":  # default: shipped
        inputs.append(Path(embed.model.removeprefix("bundled:")))
    if embed and embed.weights_file():
        inputs.append(Path(embed.weights_file()))
    for path in inputs:  # parse_spec made every local path absolute: these are the paths the run will open
        _require_inside(path, settings.data_root, "data_root")
    for key, value in (("storage.blobs", spec.storage.blobs), ("publish.uri", spec.publish.uri)):
        if value and not value.startswith("s3://"):
            _require_inside(Path(value), home.root, f"the home ({key})")
    return spec


def _with_server_s3(spec: PipelineSpec, settings: ServiceSettings) -> PipelineSpec:
    """The spec with the server's S3 endpoint and region. A run signs its S3 requests with the server's
    credentials, so a spec that could name another endpoint (or region) could send them to any host."""
    s3 = spec.s3
    if any((s3.access_key_id, s3.secret_access_key, s3.session_token)):
        raise SpecError("<submitted spec>: s3 credentials cannot be sent to the service; set them on the server")
    for key, given, served in (("endpoint_url", s3.endpoint_url, settings.s3_endpoint_url),
                               ("region", s3.region, settings.s3_region)):  # fmt: skip
        if given is not None and given != served:
            raise SpecError(f"<submitted spec>: s3.{key} {given!r} is not the service's "
                            f"({served or 'its environment decides'}); leave it out")  # fmt: skip
    served = s3.model_copy(update={"endpoint_url": settings.s3_endpoint_url, "region": settings.s3_region})
    return spec.model_copy(update={"s3": served})


def _local_shards(source: WebDatasetSource) -> list[Path]:
    """Every local pattern a webdataset source expands to (braces as ingest expands them) and every file its globs
    match now: braces can hide '..' from a check of the unexpanded text, and a match can be a symlink out."""
    found: list[Path] = []
    for pattern in source.urls:
        for url in braceexpand(pattern):
            if url.startswith("s3://"):
                continue
            if ".." in Path(url).parts:
                raise SpecError(f"<submitted spec>: source {source.name!r}: {url} has a '..' part; name shards by "
                                "their place under data_root")  # fmt: skip
            found += [Path(url), *map(Path, glob.glob(url))]
    return found


def _require_inside(path: Path, root: Path, what: str) -> None:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise SpecError(f"<submitted spec>: {path} is outside {what} {root}; the service reads and writes only there")


class _JobLog(logging.Handler):
    """Copies the job thread's log records (the pipeline's and the service's) into the job's log file."""

    def __init__(self, path: Path, thread_id: int):
        super().__init__(logging.INFO)
        self.file = path.open("a")
        self.thread_id = thread_id
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self.file.write(self.format(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()
        super().close()


class JobRunner:
    def __init__(self, home: Home, settings: ServiceSettings):
        self.home, self.settings = home, settings
        self.logs = home.root / "service" / "jobs"
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._current: tuple[str, Progress] | None = None
        self._thread = threading.Thread(target=self._work, name="curation-jobs", daemon=True)

    def start(self) -> None:
        """Mark what a previous service left running as interrupted, then start the worker thread."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with Catalog.open(self.home.catalog_path) as catalog:
            catalog.db.execute(JOBS_SCHEMA)
            catalog.db.execute("UPDATE jobs SET status = 'interrupted' WHERE status IN ('queued', 'running')")
            catalog.db.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    # --- requests -----------------------------------------------------------------------------------------
    def submit_run(self, text: str, *, fresh: bool, user: str) -> dict[str, Any]:
        spec = spec_from_text(text, self.settings, self.home)
        return self._enqueue("run", {"spec": spec.public_dict(), "fresh": fresh, "name": spec.name}, user)

    def submit_apply(self, name: str, *, user: str) -> dict[str, Any]:
        with Catalog.open(self.home.catalog_path, read_only=True) as catalog:
            if not catalog.versions(name):
                raise JobNotFound(f"no published dataset {name!r}")
        return self._enqueue("apply", {"name": name}, user)

    def _enqueue(self, kind: str, params: dict[str, Any], user: str) -> dict[str, Any]:
        job_id = f"job-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        with Catalog.open(self.home.catalog_path) as catalog:
            catalog.db.execute(
                "INSERT INTO jobs (job_id, kind, params_json, status, submitted_by, submitted_at) VALUES (?, ?, ?, ?, "
                "?, ?)",
                [job_id, kind, json.dumps(params, sort_keys=True), "queued", user, datetime.now(UTC)],
            )
        self._queue.put(job_id)
        return self.get(job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] == "queued":
            self._set(job_id, status="cancelled", finished_at=datetime.now(UTC))
        elif job["status"] == "running" and self._current and self._current[0] == job_id:
            self._current[1].cancel()  # takes effect at the run's next progress report
        else:
            raise JobError(f"{job_id} is {job['status']}: only queued or running jobs can be cancelled")
        return self.get(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] not in RESUMABLE:
            raise JobError(f"{job_id} is {job['status']}: only {', '.join(RESUMABLE)} jobs can be resumed")
        self._set(job_id, status="queued", error=None)
        self._queue.put(job_id)
        return self.get(job_id)

    # --- reads --------------------------------------------------------------------------------------------
    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        with Catalog.open(self.home.catalog_path, read_only=True) as catalog:
            rows = catalog.rows("SELECT * FROM jobs ORDER BY submitted_at DESC LIMIT ?", [limit])
        return [self._public(row) for row in rows]

    def get(self, job_id: str) -> dict[str, Any]:
        with Catalog.open(self.home.catalog_path, read_only=True) as catalog:
            rows = catalog.rows("SELECT * FROM jobs WHERE job_id = ?", [job_id])
        if not rows:
            raise JobNotFound(f"no job {job_id!r}")
        return self._public(rows[0])

    def log_text(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        """The job's log from byte `offset` on, and the offset to ask for next (for live tailing)."""
        self.get(job_id)  # unknown ids are an error, not an empty log
        path = self.logs / f"{job_id}.log"
        if not path.exists():
            return "", 0
        offset = min(max(offset, 0), path.stat().st_size)  # a position past the end reads nothing
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
        return data.decode(errors="replace"), offset + len(data)

    def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        params, result = json.loads(row.pop("params_json")), json.loads(row.pop("result_json") or "null")
        job = {**row, "params": params, "result": result}
        job["progress"] = self._current[1].snapshot() if self._current and self._current[0] == row["job_id"] else None
        return job

    def _set(self, job_id: str, **fields: Any) -> None:
        assignments = ", ".join(f"{key} = ?" for key in fields)
        with Catalog.open(self.home.catalog_path) as catalog:
            catalog.db.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", [*fields.values(), job_id])

    # --- the worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self.get(job_id)
            if job["status"] != "queued":  # cancelled while it waited
                continue
            progress = Progress()
            self._current = (job_id, progress)
            self._set(job_id, status="running", started_at=datetime.now(UTC), attempts=job["attempts"] + 1)
            handler = _JobLog(self.logs / f"{job_id}.log", threading.get_ident())
            logging.getLogger().addHandler(handler)
            try:
                log.info("%s: %s job started (attempt %d)", job_id, job["kind"], job["attempts"] + 1)
                outcome = self._execute(job, progress)
                self._set(job_id, status="finished", finished_at=datetime.now(UTC), **outcome)
                log.info("%s: finished: %s", job_id, outcome.get("version"))
            except RunCancelled as error:
                log.info("%s: %s", job_id, error)
                self._set(job_id, status="cancelled", finished_at=datetime.now(UTC), run_id=progress.run_id)
            except Exception as error:  # the job fails, the service goes on
                message = str(error) if isinstance(error, CurationError) else f"{type(error).__name__}: {error}"
                log.error("%s: failed: %s\n%s", job_id, message, traceback.format_exc())
                self._set(job_id, status="failed", finished_at=datetime.now(UTC), error=message,
                          run_id=progress.run_id)  # fmt: skip
            finally:
                self._current = None
                logging.getLogger().removeHandler(handler)
                handler.close()

    def _execute(self, job: dict[str, Any], progress: Progress) -> dict[str, Any]:
        params = job["params"]
        if job["kind"] == "apply":
            from curation.audit.apply import apply_optouts

            progress.stage("optout apply")
            result = apply_optouts(self.home, params["name"])
            summary = {"parent": result.parent, "removed": [vars(match) for match in result.removed]}
            return {"version": result.ref, "result_json": json.dumps(summary, default=str)}
        from curation.core.pipeline import run_pipeline

        spec = parse_spec(params["spec"], origin=f"job {job['job_id']}")
        fresh = params["fresh"] and job["attempts"] == 0  # a resumed job continues its run
        result = run_pipeline(spec, home=self.home, fresh=fresh, ray_address=self.settings.ray_address,
                              progress=progress)  # fmt: skip
        summary = {"unchanged": result.unchanged, "resumed_blocks": result.resumed_blocks, "stats": result.stats}
        return {"run_id": result.run_id, "version": result.version, "result_json": json.dumps(summary, default=str)}
