"""The HTTP API and the web page, over one home.

Every API route is registered through `route()`, which attaches the token check and writes the role it needs
into the OpenAPI description (`x-role`); `create_app` refuses to build an app with an /api route that did not
come through it, so no route is reachable unchecked by accident. The page (static/) is public: it holds no data
and asks for a token before it calls the API.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from curation.audit.registry import RequestError, status_on_filing
from curation.audit.similar import MAX_K
from curation.errors import CurationError, StoreError, VersionError
from curation.service.jobs import JobError, JobNotFound, JobRunner
from curation.service.settings import ServiceSettings
from curation.service.tokens import ROLES, TokenError, TokenStore, parse_lifetime, role_allows
from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.store.lock import hold_for_process

STATIC = Path(__file__).parent / "static"
SHA256 = re.compile(r"[0-9a-f]{64}")
THUMBNAIL_SIDE = 192
Offset = Annotated[int, Query(ge=0, le=2**53)]  # positions in listings and logs: bounded, so never an overflow
OPTOUT_FIELD_CHARS = {"value": 2048, "reason": 1000, "requester": 200}  # the registry keeps every request forever
FORM_OVERHEAD = 64 * 1024  # bytes a request body may hold beside an upload: its other fields and part headers


@dataclass(frozen=True)
class Caller:
    name: str
    role: str | None  # None: no token (a public route)


class RateLimiter:
    """At most `count` calls per `window` seconds per key (a client address): a sliding window in memory. Keys
    whose window has emptied are dropped, and past `max_keys` the least recently seen go first, so the table
    stays bounded however many addresses call."""

    def __init__(self, count: int, window: float, max_keys: int = 10_000):
        self.count, self.window, self.max_keys = count, window, max_keys
        self._calls: OrderedDict[str, deque[float]] = OrderedDict()  # least recently seen first
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            calls = self._calls.pop(key, None) or deque()
            while calls and calls[0] <= now - self.window:
                calls.popleft()
            allowed = len(calls) < self.count
            if allowed:
                calls.append(now)
            if calls:
                self._calls[key] = calls
            while self._calls and (len(self._calls) > self.max_keys or self._stale(next(iter(self._calls)), now)):
                self._calls.popitem(last=False)
            return allowed

    def __len__(self) -> int:
        return len(self._calls)

    def _stale(self, key: str, now: float) -> bool:
        return self._calls[key][-1] <= now - self.window


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is read (by its Content-Length) or as
    soon as that many bytes have arrived (chunked). Starlette spools a whole multipart body to disk before a
    route sees it, so a check in the route comes after the cost."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": self._too_large()}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._too_large(), headers={"Connection": "close"})
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.limit} bytes"


class RunRequest(BaseModel):
    spec: str | None = None  # YAML or JSON text, read as if it were a file in specs_dir
    spec_file: str | None = None  # or the name of a file in specs_dir
    fresh: bool = False


class TokenRequest(BaseModel):
    name: str
    role: str
    expires: str | None = None  # e.g. 90d, 12h


class SampleCache:
    """Each version's sample rows (for the browser) and image ids (for thumbnails), read once per version: versions
    are immutable, so an entry keyed by ref and manifest hash never goes stale."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: OrderedDict[tuple[str, str], tuple[list[dict[str, Any]], frozenset[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version) -> tuple[list[dict[str, Any]], frozenset[str]]:
        key = (version.ref, version.manifest_sha256)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        rows = version.samples().drop_columns(["provenance"]).to_pylist()
        for row in rows:
            reasons = json.loads(row.pop("selection") or "[]")
            paths = [reason["cluster_path"] for reason in reasons if "cluster_path" in reason]
            row["cluster"] = "/".join(map(str, paths[0])) if paths else None
        entry = (rows, frozenset(row["image_id"] for row in rows))
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry


def _or_404(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except (VersionError, JobNotFound) as error:
        raise HTTPException(404, str(error)) from None


def create_app(home: Home, settings: ServiceSettings, *, start_jobs: bool = True) -> FastAPI:
    tokens = TokenStore(home.root)
    jobs = JobRunner(home, settings)
    limiter = RateLimiter(*settings.optout_limit())
    samples = SampleCache()

    def open_ref(ref: str):
        from curation.api import open_version

        return _or_404(open_version, ref, home=home.root)

    thumbnails = home.root / "service" / "thumbnails"
    optout_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        keeper = Catalog.open(home.catalog_path)  # keeps the database open between requests
        # Request handlers run on this many threads; fewer leave the run's driver thread more of the interpreter.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        if start_jobs:
            jobs.start()
        yield
        jobs.stop()
        keeper.close()

    app = FastAPI(title="curation service", version="1", lifespan=lifespan,
                  description="Runs, versions, samples, provenance audit and opt-outs over one curation home. "
                              "Send `Authorization: Bearer TOKEN` (tokens: `curate token create`); each route's "
                              "`x-role` names the role it needs (viewer < curator < admin).")  # fmt: skip
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + FORM_OVERHEAD)

    def caller(request: Request, role: str, public: bool) -> Caller:
        header = request.headers.get("authorization")
        if not header:
            if public:
                return Caller(request.client.host if request.client else "unknown", None)
            raise HTTPException(401, "an API token is required: Authorization: Bearer TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        scheme, _, token = header.partition(" ")
        record = tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if record is None or record.state() != "active":
            state = record.state() if record else "unknown"
            raise HTTPException(401, f"token {state}", headers={"WWW-Authenticate": "Bearer"})
        if not role_allows(record.role, role):
            raise HTTPException(403, f"this needs the {role} role; token {record.token_id} is {record.role}")
        return Caller(record.name, record.role)

    def route(method: str, path: str, role: str, *, public: bool = False, **kwargs):
        """Register an API route that needs `role` (or none when `public`); the caller lands in request.state."""

        def check(request: Request) -> None:
            request.state.caller = caller(request, role, public)

        def decorate(function):
            app.add_api_route(path, function, methods=[method], dependencies=[Depends(check)],
                              openapi_extra={"x-role": role, "x-public": public}, **kwargs)  # fmt: skip
            return function

        return decorate

    @app.exception_handler(CurationError)
    async def curation_error(_request: Request, error: CurationError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409 if isinstance(error, JobError) else 400)

    # --- public -------------------------------------------------------------------------------------------
    @route("GET", "/api/health", "viewer", public=True)
    def health() -> dict:
        return {"status": "ok"}

    @route("GET", "/api/policy", "viewer", public=True)
    def policy() -> dict:
        """What the page needs before it has a token: whether opt-outs are open to everyone, and the limits."""
        return {"public_optouts": settings.public_optouts, "public_optout_limit": settings.public_optout_limit,
                "max_upload_bytes": settings.max_upload_bytes, "max_upload_pixels": settings.max_upload_pixels,
                "roles": list(ROLES)}  # fmt: skip

    @route("GET", "/api/whoami", "viewer")
    def whoami(request: Request) -> dict:
        return {"name": request.state.caller.name, "role": request.state.caller.role}

    # --- jobs ---------------------------------------------------------------------------------------------
    @route("POST", "/api/jobs", "curator", status_code=201)
    def submit_run(body: RunRequest, request: Request) -> dict:
        """Queue a pipeline run. The spec is text (YAML/JSON) or the name of a file in the service's specs_dir."""
        if (body.spec is None) == (body.spec_file is None):
            raise HTTPException(422, "send exactly one of spec (text) or spec_file (a name from /api/specs)")
        text = body.spec if body.spec is not None else _spec_file(settings, body.spec_file).read_text()
        return jobs.submit_run(text, fresh=body.fresh, user=request.state.caller.name)

    @route("POST", "/api/specs/check", "curator")
    def check_spec(body: RunRequest) -> dict:
        """What a run of the spec would read and do, without running it (`curate check`): errors, warnings, the
        inputs counted per local source and the stages; the spec is confined as a submitted run's would be."""
        from curation.core.check import check_spec
        from curation.service.jobs import spec_from_text

        if (body.spec is None) == (body.spec_file is None):
            raise HTTPException(422, "send exactly one of spec (text) or spec_file (a name from /api/specs)")
        text = body.spec if body.spec is not None else _spec_file(settings, body.spec_file).read_text()
        return check_spec(spec_from_text(text, settings, home), home).as_dict()

    @route("GET", "/api/jobs", "viewer")
    def list_jobs() -> list[dict]:
        return jobs.list()

    @route("GET", "/api/jobs/{job_id}", "viewer")
    def get_job(job_id: str) -> dict:
        """A job with its live progress per stage (done, total, rate, ETA) while it runs."""
        return _or_404(jobs.get, job_id)

    @route("GET", "/api/jobs/{job_id}/log", "viewer")
    def job_log(job_id: str, offset: Offset = 0) -> dict:
        text, next_offset = _or_404(jobs.log_text, job_id, offset)
        return {"text": text, "next_offset": next_offset}

    @route("POST", "/api/jobs/{job_id}/cancel", "curator")
    def cancel_job(job_id: str) -> dict:
        return _or_404(jobs.cancel, job_id)

    @route("POST", "/api/jobs/{job_id}/resume", "curator")
    def resume_job(job_id: str) -> dict:
        return _or_404(jobs.resume, job_id)

    @route("GET", "/api/specs", "curator")
    def list_specs() -> list[str]:
        """Spec files the service offers (specs_dir)."""
        folder = settings.specs_dir
        return sorted(path.name for path in folder.glob("*.y*ml") if path.is_file()) if folder.is_dir() else []

    @route("GET", "/api/specs/{name}", "curator")
    def get_spec(name: str) -> Response:
        return Response(_spec_file(settings, name).read_text(), media_type="text/yaml")

    # --- runs ---------------------------------------------------------------------------------------------
    @route("GET", "/api/runs", "viewer")
    def list_runs() -> list[dict]:
        with Catalog.open(home.catalog_path, read_only=True) as catalog:
            return catalog.rows("SELECT run_id, name, status, version, started_at, finished_at FROM runs "
                                "ORDER BY started_at DESC")  # fmt: skip

    @route("GET", "/api/runs/{run_id}", "viewer")
    def get_run(run_id: str) -> dict:
        from curation.audit.queries import run_rejects

        with Catalog.open(home.catalog_path, read_only=True) as catalog:
            run = catalog.run(_run_id(catalog, run_id))
            run["rejects"] = run_rejects(catalog, run["run_id"], summary=True)
        run["spec"], run["stats"] = json.loads(run.pop("spec_json")), json.loads(run.pop("stats_json") or "{}")
        return run

    @route("GET", "/api/runs/{run_id}/rejects", "viewer")
    def run_rejects(run_id: str, offset: Offset = 0, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict:
        """Every input the run dropped, with stage, reason and detail (paged)."""
        from curation.audit.queries import run_rejects

        with Catalog.open(home.catalog_path, read_only=True) as catalog:
            rows = run_rejects(catalog, _run_id(catalog, run_id), summary=False)
        return {"total": len(rows), "rejects": rows[offset : offset + limit]}

    @route("GET", "/api/runs/{run_id}/duplicates", "viewer")
    def run_duplicates(run_id: str) -> list[dict]:
        """Duplicate and contamination groups: what was kept, what went, by which method and score."""
        from curation.audit.queries import run_duplicates

        with Catalog.open(home.catalog_path, read_only=True) as catalog:
            return run_duplicates(catalog, _run_id(catalog, run_id))

    # --- datasets -----------------------------------------------------------------------------------------
    @route("GET", "/api/versions", "viewer")
    def list_versions(name: str | None = None) -> list[dict]:
        with Catalog.open(home.catalog_path, read_only=True) as catalog:
            rows = catalog.versions(name)
        return [{**row, "ref": f"{row['name']}@v{row['version']}"} for row in rows]

    @route("GET", "/api/versions/{ref}", "viewer")
    def get_version(ref: str) -> dict:
        """The manifest's summary, the selection report and the plots that come with the version."""
        version = open_ref(ref)
        manifest = version.manifest
        paths = {item["path"] for item in manifest["files"]}
        report = json.loads(version.root.get("reports/selection.json")) if "reports/selection.json" in paths else None
        summary = {key: manifest[key] for key in ("ref", "name", "version", "created_at", "run_id", "parent",
                                                   "counts", "changes", "dropped", "content_sha256")}  # fmt: skip
        with Catalog.open(home.catalog_path, read_only=True) as catalog:
            status = catalog.version(manifest["name"], manifest["version"])["status"]
        return {**summary, "status": status, "report": report,
                "lineage": [step["stage"] for step in manifest["lineage"]],
                "plots": sorted(path for path in paths if path.endswith(".png")),
                "removed": manifest.get("removed", [])}  # fmt: skip

    @route("GET", "/api/versions/{ref}/manifest", "viewer")
    def get_manifest(ref: str) -> dict:
        return open_ref(ref).manifest

    @route("GET", "/api/versions/{ref}/files/{path:path}", "viewer")
    def get_file(ref: str, path: str) -> Response:
        """A file the manifest lists (reports, provenance, shards): nothing else is reachable, whatever the path."""
        version = open_ref(ref)
        listed = {item["path"] for item in version.manifest["files"]}
        listed |= {shard[key] for shard in version.manifest["shards"] for key in ("tar", "index")}
        if path not in listed:
            raise HTTPException(404, f"{version.ref} has no file {path!r}")
        media = {"png": "image/png", "json": "application/json"}.get(
            path.rsplit(".", 1)[-1], "application/octet-stream"
        )
        return Response(version.root.get(path), media_type=media)

    @route("POST", "/api/versions/{ref}/verify", "curator")
    def verify_version(ref: str) -> dict:
        version = open_ref(ref)
        problems = version.verify()
        return {"ref": version.ref, "ok": not problems, "files": len(version.manifest["files"]), "problems": problems}

    @route("GET", "/api/versions/{ref}/samples", "viewer")
    def list_samples(ref: str, offset: Offset = 0, limit: Annotated[int, Query(ge=1, le=500)] = 48,
                     part: str | None = None, source: str | None = None, license: str | None = None,
                     cluster: str | None = None) -> dict:  # fmt: skip
        """A page of samples; filters: part, source, licence ('unknown' for none), cluster path prefix ('3/12')."""
        rows, _ids = samples.get(open_ref(ref))

        def keep(row: dict) -> bool:
            return ((part is None or row["part"] == part) and (source is None or source in row["sources"])
                    and (license is None or (row["license"] or "unknown") == license)
                    and (cluster is None or (row["cluster"] or "") == cluster
                         or (row["cluster"] or "").startswith(cluster + "/")))  # fmt: skip

        matching = [row for row in rows if keep(row)]
        facets = {"part": sorted({row["part"] for row in rows}),
                  "source": sorted({source for row in rows for source in row["sources"]}),
                  "license": sorted({row["license"] or "unknown" for row in rows})}  # fmt: skip
        return {"total": len(matching), "offset": offset, "samples": matching[offset : offset + limit],
                "facets": facets}  # fmt: skip

    @route("GET", "/api/versions/{ref}/thumbnails/{image_id}", "viewer")
    def thumbnail(ref: str, image_id: str) -> Response:
        """A small JPEG of one of the version's images, made once from the blob store through the safe decoder."""
        version = open_ref(ref)
        if not SHA256.fullmatch(image_id) or image_id not in samples.get(version)[1]:
            raise HTTPException(404, f"{version.ref} holds no image {image_id!r}")
        path = thumbnails / f"{image_id}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
            temporary.write_bytes(_thumbnail(home, version, image_id))
            temporary.replace(path)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @route("GET", "/api/versions/{ref}/similar", "viewer")
    def similar_to_sample(ref: str, image_id: str | None = None,
                          text: Annotated[str | None, Query(max_length=1000)] = None,
                          k: Annotated[int, Query(ge=1, le=MAX_K)] = 12) -> dict:  # fmt: skip
        """The k samples nearest to one of the version's samples (itself left out) or to a caption (open_clip
        embedders), by the version's embedder."""
        from curation.audit.similar import similar_samples

        return _or_404(similar_samples, home.root, ref, image_id=image_id, text=text, k=k)

    @route("POST", "/api/versions/{ref}/similar", "viewer")
    async def similar_to_upload(ref: str, request: Request) -> dict:
        """The k samples nearest to an uploaded image: a form with the file as 'image' and optionally 'k'."""
        from curation.audit.similar import similar_samples

        form = await request.form(max_files=1, max_fields=2)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "attach the image as the form field 'image'")
        image = await upload.read(settings.max_upload_bytes + 1)
        if len(image) > settings.max_upload_bytes:
            raise HTTPException(413, f"the upload is larger than {settings.max_upload_bytes} bytes")
        _refuse_large_canvas(image, settings.max_upload_pixels)
        try:
            k = int(form.get("k") or 12)
        except ValueError:
            raise HTTPException(422, "k must be a whole number") from None
        return await run_in_threadpool(_or_404, similar_samples, home.root, ref, image=image, k=k)

    @route("GET", "/api/diff", "viewer")
    def diff(first: str, second: str) -> dict:
        from curation.audit.queries import version_diff

        return _or_404(version_diff, home.root, first, second)

    # --- audit and opt-outs -------------------------------------------------------------------------------
    @route("GET", "/api/audit/image", "viewer")
    def audit_image(q: str) -> dict:
        """Where an image came from and where it went: q is its SHA-256 or a source URI."""
        from curation.audit.queries import audit_image

        return audit_image(home.root, q, local_files=False)

    @route("GET", "/api/audit/version/{ref}", "viewer")
    def audit_version(ref: str) -> dict:
        from curation.audit.queries import audit_version

        return _or_404(audit_version, home.root, ref)

    @route("GET", "/api/versions/{ref}/statement", "viewer")
    def statement(ref: str, format: str = "json") -> Response:
        from curation.audit.statement import build_statement, render_markdown

        data = _or_404(build_statement, home.root, ref)
        if format == "markdown":
            return Response(render_markdown(data), media_type="text/markdown")
        return JSONResponse(json.loads(json.dumps(data, default=str)))

    @route("POST", "/api/optouts", "viewer", public=settings.public_optouts, status_code=201)
    async def submit_optout(request: Request) -> dict:
        """An opt-out request: a form with kind (url, url_prefix, domain, sha256, image, withdraw), value or an
        image file, reason and requester. Without a token it is rate-limited per client address. Withdrawing a
        request (kind withdraw) needs the curator role: anyone else could undo anyone's opt-out."""
        from curation import audit

        who: Caller = request.state.caller
        if who.role is None and not limiter.allow(who.name):
            raise HTTPException(429, f"too many opt-out requests from {who.name}; limit {settings.public_optout_limit}")
        form = await request.form(max_files=1, max_fields=8)
        for name, most in OPTOUT_FIELD_CHARS.items():
            given = form.get(name)
            if given is not None and not isinstance(given, str):
                raise HTTPException(422, f"{name} must be a text field")
            if given and len(given) > most:
                raise HTTPException(422, f"{name} is {len(given)} characters; at most {most}")
        kind = str(form.get("kind") or "")
        if kind == "withdraw" and not (who.role and role_allows(who.role, "curator")):
            raise HTTPException(403 if who.role else 401, "withdrawing a request needs the curator role")
        upload = form.get("image")
        image = None
        if kind == "image":
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "kind image: attach the image as the form field 'image'")
            image = await upload.read(settings.max_upload_bytes + 1)
            if len(image) > settings.max_upload_bytes:
                raise HTTPException(413, f"the upload is larger than {settings.max_upload_bytes} bytes")
            _refuse_large_canvas(image, settings.max_upload_pixels)
        fields = {
            "kind": kind,
            "value": str(form.get("value") or "") or None,
            "image": image,
            "reason": str(form.get("reason") or ""),
            "requester": str(form.get("requester") or who.name),
        }

        def add() -> Any:
            with optout_lock:  # the registry is a hash chain: one append at a time
                return audit.add_optout(home.root, **fields)

        try:
            created = await run_in_threadpool(add)
        except RequestError as error:
            raise HTTPException(422, str(error)) from None
        return {"request_id": created.request_id, "kind": created.kind, "status": status_on_filing(created),
                "received_at": created.received_at}  # fmt: skip

    @route("GET", "/api/optouts", "curator")
    def list_optouts() -> list[dict]:
        from curation import audit

        return audit.optouts(home.root)

    @route("GET", "/api/optouts/{request_id}", "viewer", public=settings.public_optouts)
    def optout_status(request_id: str) -> dict:
        """A request's status; without a token only its id, kind, status and date (not what it names or who)."""
        from curation import audit

        found = [item for item in audit.optouts(home.root) if item["request_id"] == request_id]
        if not found:
            raise HTTPException(404, f"no opt-out request {request_id!r}")
        return {key: found[0][key] for key in ("request_id", "kind", "status", "received_at")}

    @route("POST", "/api/datasets/{name}/apply-optouts", "curator", status_code=201)
    def apply_optouts(name: str, request: Request) -> dict:
        """Queue a job that publishes a child of NAME's latest version without what the active requests cover."""
        return jobs.submit_apply(name, user=request.state.caller.name)

    # --- tokens -------------------------------------------------------------------------------------------
    @route("GET", "/api/tokens", "admin")
    def list_tokens() -> list[dict]:
        return [record.public() for record in tokens.list()]

    @route("POST", "/api/tokens", "admin", status_code=201)
    def create_token(body: TokenRequest) -> dict:
        try:
            lifetime = parse_lifetime(body.expires) if body.expires else None
            token, record = tokens.create(body.name, body.role, expires_in=lifetime)
        except TokenError as error:
            raise HTTPException(422, str(error)) from None
        return {"token": token, **record.public()}

    @route("DELETE", "/api/tokens/{token_id}", "admin")
    def revoke_token(token_id: str) -> dict:
        try:
            return tokens.revoke(token_id).public()
        except TokenError as error:
            raise HTTPException(404, str(error)) from None

    # --- the page -----------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    unchecked = [r.path for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api")
                 and "x-role" not in (r.openapi_extra or {})]  # fmt: skip
    if unchecked:
        raise RuntimeError(f"API routes registered without a role: {unchecked}")
    app.state.jobs, app.state.tokens = jobs, tokens
    return app


def _run_id(catalog: Catalog, run_id: str) -> str:
    """The run id (or the latest run's for 'latest'); 404 when there is no such run."""
    try:
        return catalog.run(run_id)["run_id"]
    except CurationError as error:
        raise HTTPException(404, str(error)) from None


def _spec_file(settings: ServiceSettings, name: str | None) -> Path:
    """A spec file by plain name from specs_dir; any path component is refused."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.ya?ml", name) or ".." in name:
        raise HTTPException(404, f"no spec {name!r}: give a file name from /api/specs")
    path = settings.specs_dir / name
    if not path.is_file():
        raise HTTPException(404, f"no spec {name!r} in the service's specs folder")
    return path


def _refuse_large_canvas(image: bytes, max_pixels: int) -> None:
    """413 for an upload whose header declares more than `max_pixels`, before any pixel is decoded: the safe
    decoder's limit is sized for ingest, not for a request handler's memory."""
    try:
        with Image.open(io.BytesIO(image)) as opened:  # reads the header only
            width, height = opened.size
    except Exception:  # noqa: BLE001 - not an image, or Pillow's own bomb guard: the safe decoder says which
        return
    if width * height > max_pixels:
        raise HTTPException(413, f"the upload is {width}x{height} = {width * height} pixels; the service takes at "
                                 f"most {max_pixels}")  # fmt: skip


def _thumbnail(home: Home, version, image_id: str) -> bytes:
    from curation.decode.safe import open_rgb

    with Catalog.open(home.catalog_path, read_only=True) as catalog:
        runs = catalog.rows("SELECT spec_json FROM runs WHERE run_id = ?", [version.manifest["run_id"]])
    spec_json = json.loads(runs[0]["spec_json"]) if runs else {}
    try:
        data = home.blobs_for(spec_json).get(image_id)
    except StoreError as error:
        raise HTTPException(404, f"image {image_id} is not in the blob store: {error}") from None
    image = open_rgb(data, draft_side=THUMBNAIL_SIDE * 2)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def serve(home: Home, settings: ServiceSettings) -> None:
    """Run the service in this process, which becomes the home's one catalog writer until it stops."""
    import logging

    import uvicorn

    from curation.executors.ray import RayExecutor

    hold_for_process(home.root, "curate serve")  # a running `curate run` holds the home: say so, now
    Catalog.open(home.catalog_path, wait_s=5).close()  # and so may a reader or a short writer, for a moment
    Catalog.serve_in_process()
    logging.getLogger("curation").setLevel(logging.INFO)
    RayExecutor(address=settings.ray_address)  # started once here (main thread); every run reuses it
    app = create_app(home, settings)
    print(f"curation service on http://{settings.host}:{settings.port}/  (home {home.root})", flush=True)
    if not any(record.state() == "active" for record in TokenStore(home.root).list()):
        print("no active API token yet: `curate token create --name YOU --role admin` prints one", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", proxy_headers=settings.proxy_headers,
                forwarded_allow_ips=settings.forwarded_allow_ips)  # fmt: skip
