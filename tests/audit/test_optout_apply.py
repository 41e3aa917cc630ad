"""Opt-outs end to end on Ray: an uploaded, transformed copy removes the original and its near-duplicates in a
child version that reuses untouched shards; domain opt-outs stick across later runs; audits name the request."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

import curation
from curation import audit
from curation.audit.queries import audit_image
from curation.cli import cli
from curation.store.catalog import Catalog
from tests.conftest import FIXTURE_IMAGES


def transformed(data: bytes, scale: float, quality: int) -> bytes:
    """A re-encoded (JPEG), resized copy, transparency flattened on white like a screenshot would."""
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    flat = flat.resize((max(1, round(flat.width * scale)), max(1, round(flat.height * scale))))
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture
def published(ray_local, tmp_path, home):
    """demo@v1: 40 clip-art images, plus a planted near-duplicate (a 90% JPEG copy) of the one we will target."""
    pool = tmp_path / "pool"
    pool.mkdir()
    files = sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:40]
    for path in files:
        shutil.copyfile(path, pool / f"{path.parent.name}-{path.name}")
    target = files[7].read_bytes()
    (pool / "planted-copy.jpg").write_bytes(transformed(target, 0.9, 90))
    spec = {"name": "demo", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"}},
            "execution": {"executor": "ray", "block_size": 8}, "publish": {"shard_max_samples": 8}}  # fmt: skip
    result = curation.run(spec, home=home)
    return {"spec": spec, "pool": pool, "target": target, "result": result}


def test_uploaded_copy_removes_original_and_near_duplicates(published, home):
    target_id = hashlib.sha256(published["target"]).hexdigest()
    copy_id = hashlib.sha256((published["pool"] / "planted-copy.jpg").read_bytes()).hexdigest()
    upload = transformed(published["target"], 0.6, 55)  # what the requester has: a smaller, lossy copy
    request = audit.add_optout(home, kind="image", image=upload, reason="my drawing", requester="artist@example.org")

    result = audit.apply_optouts(home, "demo")
    assert (result.parent, result.ref) == ("demo@v1", "demo@v2")
    assert {match.image_id for match in result.removed} == {target_id, copy_id}
    assert all(match.request_id == request.request_id for match in result.removed)

    parent, child = curation.open_version("demo@v1", home=home), curation.open_version("demo@v2", home=home)
    assert parent.verify() == [] and child.verify() == []
    child_ids = set(child.samples()["image_id"].to_pylist())
    assert not child_ids & {target_id, copy_id}
    assert child_ids == set(parent.samples()["image_id"].to_pylist()) - {target_id, copy_id}

    parent_files = {item["path"]: item["sha256"] for item in parent.manifest["files"]}
    child_files = {item["path"]: item["sha256"] for item in child.manifest["files"]}
    touched = {sample["shard"] for sample in parent.samples().to_pylist() if sample["image_id"] in {target_id, copy_id}}
    for shard in parent.manifest["shards"]:
        same = parent_files[shard["tar"]] == child_files.get(shard["tar"])
        assert same == (shard["tar"] not in touched), shard["tar"]  # only the touched shards were rewritten
    assert {item["image_id"]: item["request_id"] for item in child.manifest["removed"]} == {
        target_id: request.request_id, copy_id: request.request_id}  # fmt: skip
    assert child.manifest["lineage"][-1]["stage"] == "optout"

    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert catalog.version("demo", 1)["status"] == "superseded_by_optout"
    report = audit_image(home, target_id)
    assert [row["ref"] for row in report["versions"]] == ["demo@v1"]  # the old version still holds it
    assert report["removed_from"][0]["ref"] == "demo@v2"
    assert report["requests"][0]["request_id"] == request.request_id
    assert audit.optouts(home)[0]["status"] == "applied in demo@v2"

    again = audit.apply_optouts(home, "demo")  # idempotent: v2 holds nothing the request covers
    assert again.ref == "demo@v2" and again.removed == []
    rerun = curation.run(published["spec"], home=home)  # a later run of the same pool keeps them out too
    rerun_ids = set(curation.open_version(rerun.version, home=home).samples()["image_id"].to_pylist())
    assert not rerun_ids & {target_id, copy_id}


def test_cli_add_apply_audit_and_statement(published, home, tmp_path):
    upload = tmp_path / "mine.jpg"
    upload.write_bytes(transformed(published["target"], 0.5, 60))
    runner = CliRunner()
    added = runner.invoke(cli, ["--home", str(home), "optout", "add", "--image", str(upload), "--reason", "mine",
                                "--json"])  # fmt: skip
    assert added.exit_code == 0, added.output
    request_id = json.loads(added.output)["request_id"]
    applied = runner.invoke(cli, ["--home", str(home), "optout", "apply", "demo", "--json"])
    assert applied.exit_code == 0, applied.output
    assert json.loads(applied.output)["version"] == "demo@v2"
    trail = runner.invoke(cli, ["--home", str(home), "audit", "image", str(upload)])  # the upload itself is unknown
    assert "nothing known" in trail.output
    target_id = hashlib.sha256(published["target"]).hexdigest()
    trail = json.loads(runner.invoke(cli, ["--home", str(home), "audit", "image", target_id, "--json"]).output)
    assert trail["removed_from"][0]["request_id"] == request_id
    exported = tmp_path / "registry.jsonl"
    assert runner.invoke(cli, ["--home", str(home), "optout", "export", str(exported)]).exit_code == 0
    assert json.loads(exported.read_text().splitlines()[0])["request_id"] == request_id
    version_report = json.loads(runner.invoke(cli, ["--home", str(home), "audit", "version", "demo@v2",
                                                    "--json"]).output)  # fmt: skip
    assert version_report["optouts_applied"] == {request_id: 2}


class Sites(BaseHTTPRequestHandler):
    """Serves the same images on 127.0.0.1 and 127.0.0.2 (two 'domains'), counting requests per host."""

    images: dict[str, bytes] = {}
    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802
        host = self.server.server_address[0]
        Sites.hits[host] = Sites.hits.get(host, 0) + 1
        body = Sites.images.get(f"{host}{self.path}")
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_domain_optout_sticks_across_runs(ray_local, tmp_path, home):
    servers = [ThreadingHTTPServer((host, 0), Sites) for host in ("127.0.0.1", "127.0.0.2")]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = []
    files = sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:12]
    for index, path in enumerate(files):
        server = servers[index % 2]
        host, port = server.server_address
        Sites.images[f"{host}/img/{index}.png"] = path.read_bytes()
        urls.append(f"http://{host}:{port}/img/{index}.png")
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    spec = {"name": "web", "sources": [{"kind": "urls", "name": "web", "path": str(tmp_path / "urls.parquet")}],
            "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "ray", "block_size": 4}}  # fmt: skip
    try:
        curation.run(spec, home=home)
        audit.add_optout(home, kind="domain", value="127.0.0.2", reason="site owner")
        result = audit.apply_optouts(home, "web")
        assert result.ref == "web@v2" and len(result.removed) == 6
        assert {match.method for match in result.removed} == {"domain"}
        child = curation.open_version("web@v2", home=home)
        hosts = {
            entry["uri"].split("/")[2].split(":")[0] for s in child.samples().to_pylist() for entry in s["provenance"]
        }
        assert hosts == {"127.0.0.1"}

        Sites.hits.clear()
        later = curation.run(spec, home=home)  # the same pool again: the opted-out domain is not even fetched
        assert Sites.hits.get("127.0.0.2", 0) == 0 and Sites.hits["127.0.0.1"] == 6
        later_version = curation.open_version(later.version, home=home)
        fates = {row["uri"]: (row["reason"], row["detail"]) for row in later_version.provenance().to_pylist()}
        assert sum(reason == "opted_out" for reason, _ in fates.values()) == 6
        assert later_version.samples().num_rows == 6
    finally:
        for server in servers:
            server.shutdown()


def test_statement_figures_agree_with_the_catalog(published, home, tmp_path):
    import duckdb

    from curation.audit.statement import write_statement

    markdown, json_path, statement = write_statement(home, "demo@v1", tmp_path / "statement")
    assert markdown.read_text().startswith("# Data statement: demo@v1")
    assert json.loads(json_path.read_text())["dataset"]["ref"] == "demo@v1"
    shards = Path(home) / "datasets" / "demo" / "v1" / "shards" / "*.parquet"
    db = duckdb.connect(str(home / "catalog.duckdb"), read_only=True)
    samples = db.execute("SELECT count(*) FROM version_samples WHERE name = 'demo' AND version = 1").fetchone()[0]
    assert statement["dataset"]["samples"] == samples == 41
    inputs = db.execute("SELECT count(*) FROM provenance WHERE run_id = ?", [published["result"].run_id]).fetchone()[0]
    assert statement["inputs"]["total"] == inputs
    licences = dict(
        duckdb.sql(f"SELECT coalesce(license, 'unknown'), count(*) FROM read_parquet('{shards}') GROUP BY 1").fetchall()
    )
    assert statement["licenses"] == licences
    assert statement["known_gaps"]["samples_without_license"] == licences.get("unknown", 0)
    rejected = db.execute("SELECT count(*) FROM outcomes WHERE run_id = ? AND status = 'rejected'",
                          [published["result"].run_id]).fetchone()[0]  # fmt: skip
    assert statement["inputs"]["rejected"] == rejected
    assert [step["stage"] for step in statement["lineage"]] == ["ingest", "license", "embed", "select"]


def test_quickstart_statement_is_complete(ray_local, home, tmp_path):
    from tests.conftest import REPO

    result = curation.run(REPO / "pipelines" / "quickstart.yaml", home=home)
    out = CliRunner().invoke(cli, ["--home", str(home), "statement", result.version, "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    text = (tmp_path / f"{result.version.replace('@', '-')}.statement.md").read_text()
    for section in ("## Identity", "## Sources and collection", "## Licences", "## Curation lineage",
                    "## What was dropped", "## Opt-outs", "## Known gaps"):  # fmt: skip
        assert section in text
    assert "| MIT | 120 |" in text and "fashion-mnist" in text
