"""Opt-outs end to end on Ray: an uploaded, transformed copy removes the original and its near-duplicates in a
child version that reuses untouched shards; domain opt-outs stick across later runs; audits name the request."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

import curation
from curation import audit
from curation.audit.apply import covered_images
from curation.audit.matching import MatchSettings
from curation.audit.queries import audit_image
from curation.audit.registry import active_requests, list_requests
from curation.cli import cli
from curation.config import EmbedStage, parse_spec
from curation.core.pipeline import run_pipeline
from curation.core.progress import Progress
from curation.errors import SpecError, TrainError, VerifyError, VersionError
from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.train.dataset import open_training_set
from tests.conftest import FIXTURE_IMAGES
from tests.web import QuietHandler, serving

DEFAULT_EMBEDDER = Path(curation.__file__).parent / "train" / "default"


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
    assert json.loads(added.output)["status"] == "received"
    applied = runner.invoke(cli, ["--home", str(home), "optout", "apply", "demo", "--json"])
    assert applied.exit_code == 0, applied.output
    assert json.loads(applied.output)["version"] == "demo@v2"
    trail = runner.invoke(cli, ["--home", str(home), "audit", "image", str(upload)])  # the upload itself is unknown
    assert "nothing known" in trail.output
    target_id = hashlib.sha256(published["target"]).hexdigest()
    trail = json.loads(runner.invoke(cli, ["--home", str(home), "audit", "image", target_id, "--json"]).output)
    assert trail["removed_from"][0]["request_id"] == request_id
    text = runner.invoke(cli, ["--home", str(home), "audit", "image", target_id]).output
    assert f"covering it now: {request_id}" in text and "removed by opt-out" in text  # removed before: by hash
    exported = tmp_path / "registry.jsonl"
    assert runner.invoke(cli, ["--home", str(home), "optout", "export", str(exported)]).exit_code == 0
    assert json.loads(exported.read_text().splitlines()[0])["request_id"] == request_id
    version_report = json.loads(runner.invoke(cli, ["--home", str(home), "audit", "version", "demo@v2",
                                                    "--json"]).output)  # fmt: skip
    assert version_report["optouts_applied"] == {request_id: 2}


def test_a_run_that_honours_an_opt_out_supersedes_the_version_it_replaces(published, home):
    """Filed after v1, enforced by the next run rather than by `optout apply`: v2 records what it took from v1 and
    for which request, so v1 is superseded (the trainer refuses it) and the request shows as applied."""
    target_path = next(path for path in published["pool"].iterdir() if path.read_bytes() == published["target"])
    request = audit.add_optout(home, kind="url", value=str(target_path), reason="mine")
    result = curation.run(published["spec"], home=home)
    assert result.version == "demo@v2"
    removed = curation.open_version("demo@v2", home=home).manifest["removed"]
    copy_id = hashlib.sha256((published["pool"] / "planted-copy.jpg").read_bytes()).hexdigest()
    assert {(item["image_id"], item["method"]) for item in removed} == {
        (sha(published["target"]), "seen_at_url"), (copy_id, "near_duplicate")}  # fmt: skip
    assert {item["request_id"] for item in removed} == {request.request_id}
    assert audit.optouts(home)[0]["status"] == "applied in demo@v2"
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert [row["status"] for row in catalog.versions("demo")] == ["superseded_by_optout", "current"]
    with pytest.raises(TrainError, match="superseded by an opt-out"):
        open_training_set(home, "demo@v1")


def test_an_older_version_still_holding_a_covered_image_is_superseded(published, home):
    """X left the pool (v2 lacks it), then its owner opts out: the apply finds nothing in v2 to remove, but v1
    still holds X and must not stay trainable."""
    victim = sorted(path for path in published["pool"].iterdir() if path.suffix == ".png")[0]
    victim_id = sha(victim.read_bytes())
    victim.unlink()
    assert curation.run(published["spec"], home=home).version == "demo@v2"
    audit.add_optout(home, kind="sha256", value=victim_id)
    result = audit.apply_optouts(home, "demo")
    assert result.ref == "demo@v2" and result.removed == []
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert [row["status"] for row in catalog.versions("demo")] == ["superseded_by_optout", "current"]
    with pytest.raises(TrainError, match="superseded by an opt-out"):
        open_training_set(home, "demo@v1")
    with pytest.raises(VersionError, match="demo@v1 is not the latest version of demo"):
        audit.apply_optouts(home, "demo@v1")  # its child would become the latest and undo v2


def test_a_request_a_first_run_honoured_reads_applied(published, home):
    """The image never reached a version (the run refused it), so nothing was removed from a parent: the status
    still says which version honoured the request."""
    victim = sorted(path for path in published["pool"].iterdir() if path.suffix == ".png")[0]
    request = audit.add_optout(home, kind="sha256", value=sha(victim.read_bytes()))
    curation.run({**published["spec"], "name": "other"}, home=home)
    assert {row["request_id"]: row["status"] for row in audit.optouts(home)}[request.request_id] == (
        "applied in other@v1")  # fmt: skip


def test_a_removal_undone_by_a_withdrawal_is_not_counted_later(published, home):
    """v2 (a run) dropped X for a request; the request is withdrawn and v3 has X again: v3's audit and statement
    do not count that removal as applied to it."""
    from curation.audit.queries import audit_version
    from curation.audit.statement import build_statement

    victim = sorted(path for path in published["pool"].iterdir() if path.suffix == ".png")[0]
    request = audit.add_optout(home, kind="sha256", value=sha(victim.read_bytes()))
    assert curation.run(published["spec"], home=home).version == "demo@v2"
    assert audit_version(home, "demo@v2")["optouts_applied"] == {request.request_id: 1}
    audit.add_optout(home, kind="withdraw", value=request.request_id)
    assert curation.run(published["spec"], home=home).version == "demo@v3"
    assert audit_version(home, "demo@v3")["optouts_applied"] == {}
    assert build_statement(home, "demo@v3")["optouts"]["removed_on_the_way"] == 0


def test_a_grandchild_accounts_for_every_opt_out_on_its_line(published, home):
    """v3 (a second apply) names the requests applied on the way (v2's too) in its statement and audit."""
    from curation.audit.queries import audit_version
    from curation.audit.statement import build_statement

    first, second = sorted(path for path in published["pool"].iterdir() if path.suffix == ".png")[:2]
    requests = [audit.add_optout(home, kind="sha256", value=sha(path.read_bytes())) for path in (first, second)]
    audit.apply_optouts(home, "demo")  # both are in force: v2 takes both
    third = sorted(path for path in published["pool"].iterdir() if path.suffix == ".png")[2]
    requests.append(audit.add_optout(home, kind="sha256", value=sha(third.read_bytes())))
    assert audit.apply_optouts(home, "demo").ref == "demo@v3"
    ids = sorted(request.request_id for request in requests)
    statement = build_statement(home, "demo@v3")["optouts"]
    assert statement["applied_requests"] == ids
    assert (statement["removed_from_parent"], statement["removed_on_the_way"]) == (1, 3)
    assert audit_version(home, "demo@v3")["optouts_applied"] == {request_id: 1 for request_id in ids}


def test_apply_refuses_a_parent_whose_files_were_altered(published, home):
    """A child carries unchanged parent shards over as they are: a damaged one must stop the apply, not be
    re-hashed into a child that verifies clean."""
    version = curation.open_version("demo@v1", home=home)
    target_id = hashlib.sha256(published["target"]).hexdigest()
    shard_of = {row["image_id"]: row["shard"] for row in version.samples().to_pylist()}
    shard = next(shard for shard in sorted(set(shard_of.values())) if shard != shard_of[target_id])
    untouched = Path(version.root.url(shard))  # a shard the child would carry over as it is
    data = bytearray(untouched.read_bytes())
    data[600] ^= 0xFF
    untouched.write_bytes(bytes(data))
    audit.add_optout(home, kind="sha256", value=target_id)
    with pytest.raises(VerifyError, match=f"demo@v1: {shard} differs from its manifest"):
        audit.apply_optouts(home, "demo")
    assert not (home / "datasets" / "demo" / "v2").exists()


class Sites(QuietHandler):
    """Serves images on 127.0.0.1 and 127.0.0.2 (two 'domains'), counting requests per host; a path in
    `redirects` answers 302 to its target instead."""

    images: dict[str, bytes] = {}
    redirects: dict[str, str] = {}
    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802
        host = self.server.server_address[0]
        Sites.hits[host] = Sites.hits.get(host, 0) + 1
        if f"{host}{self.path}" in Sites.redirects:
            self.send_response(302)
            self.send_header("Location", Sites.redirects[f"{host}{self.path}"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_body(Sites.images.get(f"{host}{self.path}"))


@pytest.fixture
def sites():
    """Two HTTP servers, on 127.0.0.1 and 127.0.0.2."""
    with serving(Sites, "127.0.0.1") as first, serving(Sites, "127.0.0.2") as second:
        yield [first, second]
    for table in (Sites.images, Sites.redirects, Sites.hits):
        table.clear()


def url_list_spec(tmp_path: Path, urls: list[str]) -> dict:
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    return {"name": "web", "sources": [{"kind": "urls", "name": "web", "path": str(tmp_path / "urls.parquet")}],
            "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "ray", "block_size": 4}}  # fmt: skip


def test_domain_optout_sticks_across_runs(ray_local, tmp_path, home, sites):
    urls = []
    files = sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:12]
    for index, path in enumerate(files):
        server = sites[index % 2]
        host, port = server.server_address
        Sites.images[f"{host}/img/{index}.png"] = path.read_bytes()
        urls.append(f"http://{host}:{port}/img/{index}.png")
    spec = url_list_spec(tmp_path, urls)
    curation.run(spec, home=home)
    domain = audit.add_optout(home, kind="domain", value="127.0.0.2", reason="site owner")
    result = audit.apply_optouts(home, "web")
    assert result.ref == "web@v2" and len(result.removed) == 6
    assert {match.method for match in result.removed} == {"domain"}
    child = curation.open_version("web@v2", home=home)
    hosts = {entry["uri"].split("/")[2].split(":")[0] for s in child.samples().to_pylist() for entry in s["provenance"]}
    assert hosts == {"127.0.0.1"}

    Sites.hits.clear()
    later = curation.run(spec, home=home)  # the same pool again: the opted-out domain is not even fetched
    assert Sites.hits.get("127.0.0.2", 0) == 0 and Sites.hits["127.0.0.1"] == 6
    later_version = curation.open_version(later.version, home=home)
    fates = {row["uri"]: (row["reason"], row["detail"]) for row in later_version.provenance().to_pylist()}
    assert sum(reason == "opted_out" for reason, _ in fates.values()) == 6
    assert later_version.samples().num_rows == 6
    never_fetched = next(url for url in urls if "127.0.0.2" in url)
    report = audit_image(home, never_fetched)  # no bytes, no image id: the audit still names the request
    assert report["found"] and report["covered_by"] == [domain.request_id]
    assert [row["request_id"] for row in report["requests"]] == [domain.request_id]
    unseen = never_fetched.replace("/img/", "/elsewhere/")
    shown = CliRunner().invoke(cli, ["--home", str(home), "audit", "image", unseen])
    expected = f"nothing known about {unseen}; opt-out requests in force cover it: {domain.request_id}"
    assert shown.output.strip() == expected


def test_a_domain_optout_covers_what_redirects_fetched_from_it(ray_local, tmp_path, home, sites):
    """A URL that redirected keeps where its bytes came from: a later opt-out of that host removes the image at
    apply, the audit finds it by that URL, and the next run does not follow the redirect."""
    (first, first_port), (second, second_port) = (server.server_address for server in sites)
    files = sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:6]
    urls = []
    for index, path in enumerate(files):
        Sites.images[f"{second}/cdn/{index}.png"] = path.read_bytes()
        if index % 2:  # half are links on the first site to the second site's files
            Sites.redirects[f"{first}/go/{index}"] = f"http://{second}:{second_port}/cdn/{index}.png"
            urls.append(f"http://{first}:{first_port}/go/{index}")
        else:
            Sites.images[f"{first}/img/{index}.png"] = path.read_bytes()
            urls.append(f"http://{first}:{first_port}/img/{index}.png")
    spec = url_list_spec(tmp_path, urls)
    curation.run(spec, home=home)
    samples = curation.open_version("web@v1", home=home).samples().to_pylist()
    landed = {entry["uri"]: entry["redirected_to"] for sample in samples for entry in sample["provenance"]}
    assert landed == {url: (f"http://{second}:{second_port}/cdn/{url.rsplit('/', 1)[1]}.png" if "/go/" in url
                            else None) for url in urls}  # fmt: skip
    final_url = landed[urls[1]]
    assert audit_image(home, final_url)["image_ids"] == [sha(files[1].read_bytes())]
    respelled = urls[0].replace("http://", "HTTP://").replace("/img/", "/%69mg/")  # the same URL, canonically
    assert audit_image(home, respelled)["image_ids"] == [sha(files[0].read_bytes())]

    domain = audit.add_optout(home, kind="domain", value=second, reason="the file host")
    result = audit.apply_optouts(home, "web")
    assert result.ref == "web@v2"
    assert sorted(match.image_id for match in result.removed) == sorted(sha(files[i].read_bytes()) for i in (1, 3, 5))
    assert {match.method for match in result.removed} == {"domain"}

    Sites.hits.clear()
    later = curation.open_version(curation.run(spec, home=home).version, home=home)
    assert Sites.hits.get(second, 0) == 0  # the redirects' target host is not even asked
    fates = {row["uri"]: row["detail"] for row in later.provenance().to_pylist() if row["reason"] == "opted_out"}
    assert fates == {url: f"{domain.request_id} (redirected to {landed[url]}, not fetched)" for url in urls[1::2]}


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
    assert [step["stage"] for step in statement["lineage"]] == ["ingest", "license", "embed", "optout", "select"]


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


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outcome_of(home: Path, run_id: str, uri: str) -> dict:
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        (row,) = catalog.rows("SELECT stage, reason, detail, image_id FROM outcomes WHERE run_id = ? AND uri = ?",
                              [run_id, uri])  # fmt: skip
    return row


def test_a_later_run_brings_back_nothing_an_apply_removed(published, home):
    pool, target, spec = published["pool"], published["target"], published["spec"]
    target_path = next(path for path in sorted(pool.iterdir()) if path.read_bytes() == target)
    planted_id = sha((pool / "planted-copy.jpg").read_bytes())
    request = audit.add_optout(home, kind="url", value=f"file://{target_path}", reason="mine")  # a local path
    assert {match.image_id for match in audit.apply_optouts(home, "demo").removed} == {sha(target), planted_id}

    (pool / "mirror.png").write_bytes(target)  # the same bytes under another name
    fresh_copy = transformed(target, 0.8, 80)  # a copy no run has seen
    (pool / "fresh-copy.jpg").write_bytes(fresh_copy)
    later = curation.run(spec, home=home)

    ids = set(curation.open_version(later.version, home=home).samples()["image_id"].to_pylist())
    assert not ids & {sha(target), planted_id, sha(fresh_copy)}
    mirror = outcome_of(home, later.run_id, str(pool / "mirror.png"))
    assert (mirror["stage"], mirror["reason"], mirror["detail"]) == ("ingest", "opted_out", request.request_id)
    assert mirror["image_id"] == sha(target)  # not stored, but the audit can find it by hash
    fresh = outcome_of(home, later.run_id, str(pool / "fresh-copy.jpg"))
    assert (fresh["stage"], fresh["reason"]) == ("optout", "opted_out")
    assert fresh["detail"] == f"{request.request_id} (near_duplicate)"  # of the original, which never arrived
    report = audit_image(home, str(pool / "mirror.png"))  # covered now by its hash, removed before
    assert report["decisions"] and report["covered_by"] == [request.request_id]
    assert audit_image(home, str(target_path))["covered_by"] == [request.request_id]  # by its URL (a path)
    assert audit_image(home, str(pool / "fresh-copy.jpg"))["covered_by"] == []  # only its pixels match


def small_pool(folder: Path, count: int) -> list[Path]:
    """`count` clip-art fixtures copied into `folder`, sorted."""
    folder.mkdir()
    for path in sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:count]:
        shutil.copyfile(path, folder / path.name)
    return sorted(folder.iterdir())


def test_a_request_filed_before_a_resume_counts(ray_local, tmp_path, home):
    pool = tmp_path / "pool"
    victim = small_pool(pool, 6)[2]
    model = tmp_path / "model" / "default-vit-tiny.json"
    spec = {"name": "late", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": f"bundled:{model}"}},
            "execution": {"executor": "local"}}  # fmt: skip
    with pytest.raises(SpecError):
        curation.run(spec, home=home)  # ingested, then stopped at embed: the weights are not there yet
    request = audit.add_optout(home, kind="url", value=str(victim), reason="filed while the run was down")
    model.parent.mkdir()
    for name in ("default-vit-tiny.json", "default-vit-tiny.safetensors"):
        shutil.copyfile(DEFAULT_EMBEDDER / name, model.parent / name)

    resumed = curation.run(spec, home=home)

    assert resumed.resumed_blocks == 1  # the ingest block was not redone, yet the request counts
    version = curation.open_version(resumed.version, home=home)
    assert sha(victim.read_bytes()) not in set(version.samples()["image_id"].to_pylist())
    assert version.samples().num_rows == 5
    row = outcome_of(home, resumed.run_id, str(victim))
    assert (row["stage"], row["detail"]) == ("optout", f"{request.request_id} (url)")


class FilesAnOptOutAtSelect(Progress):
    """A curator filing a request through the service while the run selects (the service writes in-process)."""

    def __init__(self, home: Path, uri: str):
        super().__init__()
        self.home, self.uri, self.request = home, uri, None

    def stage(self, name: str) -> None:
        super().stage(name)
        if name == "select":
            self.request = audit.add_optout(self.home, kind="url", value=self.uri)


def test_a_request_filed_while_the_run_selects_is_checked_before_publishing(published, home):
    pool, spec = published["pool"], published["spec"]
    victim = sorted(pool.glob("*.png"))[3]
    audit.add_optout(home, kind="image", image=published["target"])  # before the run: its copy goes at optout
    progress = FilesAnOptOutAtSelect(home, str(victim))
    result = run_pipeline(parse_spec(spec), home=Home(home), fresh=True, progress=progress)

    version = curation.open_version(result.version, home=home)
    assert sha(victim.read_bytes()) not in set(version.samples()["image_id"].to_pylist())
    row = outcome_of(home, result.run_id, str(victim))
    assert (row["stage"], row["detail"]) == ("optout_recheck", f"{progress.request.request_id} (url)")
    earlier = outcome_of(home, result.run_id, str(pool / "planted-copy.jpg"))  # the first check's decisions stay
    assert (earlier["stage"], earlier["reason"]) == ("optout", "opted_out")
    checks = [step for step in version.manifest["lineage"] if step["stage"] == "optout"]
    assert [len(step["params"]["applied_requests"]) for step in checks] == [1, 1]
    assert checks[1]["params"]["applied_requests"] == [progress.request.request_id]


def test_exact_requests_match_images_that_cannot_be_embedded(published, home):
    store = Home(home)
    blobs = store.blobs_for(published["spec"])
    broken = blobs.put(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # no embedder decodes this
    fine = sha(published["target"])
    audit.add_optout(home, kind="sha256", value=broken)
    audit.add_optout(home, kind="url_prefix", value="/elsewhere/unembeddable/")
    with Catalog.open(store.catalog_path) as catalog:
        requests = active_requests(list_requests(catalog))
        uris = [["/elsewhere/broken.png"], ["/elsewhere/unembeddable/fine.png"]]
        stage = EmbedStage(model="builtin")
        matches, _ = covered_images(catalog, store, blobs, stage, [broken, fine], uris, requests, MatchSettings())
    found = sorted((match.image_id, match.method) for match in matches)
    assert found == sorted([(broken, "sha256"), (fine, "url_prefix")])


def test_counts_stay_true_across_applies(published, home):
    ids = curation.open_version("demo@v1", home=home).samples()["image_id"].to_pylist()
    for image_id in ids[:2]:
        audit.add_optout(home, kind="sha256", value=image_id)
        audit.apply_optouts(home, "demo")
    grandchild = curation.open_version("demo@v3", home=home)
    rows = grandchild.provenance().to_pylist()
    kept = sum(row["status"] == "kept" for row in rows)
    counts = grandchild.manifest["counts"]
    assert (counts["kept_inputs"], counts["rejected_inputs"]) == (kept, len(rows) - kept)
    assert counts["samples"] == len(ids) - 2 == grandchild.samples().num_rows
    opted_out = sum(row["stage"] == "optout" for row in rows)
    assert opted_out == 2 and grandchild.manifest["dropped"]["optout"] == {"opted_out": opted_out}


def test_an_exact_copy_of_an_uploaded_image_is_not_taken_at_ingest(ray_local, tmp_path, home):
    pool = tmp_path / "pool"
    victim = small_pool(pool, 4)[1]
    request = audit.add_optout(home, kind="image", image=victim.read_bytes())
    spec = {"name": "up", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "local"}}  # fmt: skip
    result = curation.run(spec, home=home)
    row = outcome_of(home, result.run_id, str(victim))
    assert (row["stage"], row["detail"]) == ("ingest", request.request_id)
    assert not (home / "blobs" / row["image_id"][:2] / row["image_id"]).exists()  # never stored


def test_a_second_home_on_the_same_store_sees_the_superseded_parent(published, tmp_path):
    spec = {**published["spec"], "publish": {**published["spec"]["publish"], "uri": str(tmp_path / "shared")}}
    first = tmp_path / "first-home"
    curation.run(spec, home=first)
    audit.add_optout(first, kind="sha256", value=sha(published["target"]))
    assert audit.apply_optouts(first, "demo").ref == "demo@v2"

    other = tmp_path / "other-home"
    later = curation.run(spec, home=other)  # its catalog learns v1 and v2 from the shared store first
    with Catalog.open(other / "catalog.duckdb", read_only=True) as catalog:
        statuses = {row["version"]: row["status"] for row in catalog.versions("demo")}
        removed = catalog.rows("SELECT image_id FROM optout_removals WHERE name = 'demo'")
    assert statuses[1] == "superseded_by_optout" and statuses[2] == "current"
    planted = sha((published["pool"] / "planted-copy.jpg").read_bytes())
    assert {row["image_id"] for row in removed} == {sha(published["target"]), planted}
    assert later.version == "demo@v3"  # its own registry is empty: it keeps the image, as that home asked
    with pytest.raises(TrainError, match="superseded by an opt-out"):
        open_training_set(other, "demo@v1")


def test_an_apply_whose_registration_was_lost_is_not_published_twice(published, home):
    audit.add_optout(home, kind="sha256", value=sha(published["target"]))
    first = audit.apply_optouts(home, "demo")
    assert first.ref == "demo@v2"
    with Catalog.open(home / "catalog.duckdb") as catalog:  # the state a crash after the commit leaves
        for table in ("versions", "shards", "version_samples", "optout_removals"):
            catalog.db.execute(f"DELETE FROM {table} WHERE name = 'demo' AND version = 2")
        catalog.db.execute("UPDATE versions SET status = 'current' WHERE name = 'demo'")
    again = audit.apply_optouts(home, "demo")  # finds demo@v2 in the store: nothing left to remove
    assert (again.parent, again.ref, again.removed) == ("demo@v2", "demo@v2", [])
    assert not (home / "datasets" / "demo" / "v3").exists()
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert {row["version"]: row["status"] for row in catalog.versions("demo")} == {
            1: "superseded_by_optout", 2: "current"}  # fmt: skip


def test_an_identical_copy_of_an_input_opted_out_at_ingest_goes_too(ray_local, tmp_path, home):
    pool = tmp_path / "pool"
    files = small_pool(pool, 4)
    copy = pool / "elsewhere-copy.png"
    copy.write_bytes(files[0].read_bytes())
    request = audit.add_optout(home, kind="url", value=str(files[0]))
    spec = {"name": "twin", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "local"}}  # fmt: skip
    result = curation.run(spec, home=home)
    published = curation.open_version(result.version, home=home).samples()["image_id"].to_pylist()
    assert sha(files[0].read_bytes()) not in published
    row = outcome_of(home, result.run_id, str(copy))
    assert (row["stage"], row["detail"]) == ("optout", f"{request.request_id} (seen_at_url)")


def test_apply_follows_a_requested_url_to_the_kept_original_of_its_duplicate(ray_local, tmp_path, home):
    pool = tmp_path / "pool"
    original = small_pool(pool, 6)[2]
    duplicate = pool / "smaller-copy.jpg"
    duplicate.write_bytes(transformed(original.read_bytes(), 0.9, 90))
    spec = {"name": "dups", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"}, "dedup": {"threshold": 0.9}},
            "execution": {"executor": "local"}}  # fmt: skip
    result = curation.run(spec, home=home)
    assert outcome_of(home, result.run_id, str(duplicate))["stage"] == "dedup"  # the original was kept
    request = audit.add_optout(home, kind="url", value=str(duplicate))  # names the copy that was not published
    applied = audit.apply_optouts(home, "dups")
    assert [(m.image_id, m.request_id, m.method) for m in applied.removed] == [
        (sha(original.read_bytes()), request.request_id, "near_duplicate")]  # fmt: skip
