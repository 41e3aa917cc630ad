"""The HTTP API against a real `curate serve` process: runs, datasets, audit, opt-outs, confinement."""

from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import FIXTURE_IMAGES


@pytest.fixture(scope="module")
def published(service, fashion_spec):
    job = service.submit(fashion_spec)
    assert job["status"] == "queued" and job["submitted_by"] == "test-admin"
    done = service.wait_job(job["job_id"])
    assert done["status"] == "finished", done
    return done


def test_run_submitted_over_http_publishes_a_browsable_version(service, published):
    assert published["version"] == "fashion@v1"
    assert published["result"]["stats"]["publish"]["samples"] == 120
    log = service.get(f"/api/jobs/{published['job_id']}/log").json()
    assert "run job started" in log["text"] and "finished: fashion@v1" in log["text"]
    tail = service.get(f"/api/jobs/{published['job_id']}/log", params={"offset": log["next_offset"]}).json()
    assert tail["text"] == ""

    run = service.get(f"/api/runs/{published['run_id']}").json()
    assert run["status"] == "finished" and run["version"] == "fashion@v1" and run["rejects"] == []
    unknown = service.get("/api/runs/nope")
    assert unknown.status_code == 404 and str(service.home) not in unknown.text  # no server path leaks
    versions = service.get("/api/versions").json()
    assert [row["ref"] for row in versions] == ["fashion@v1"]
    summary = service.get("/api/versions/fashion@v1").json()
    assert summary["counts"]["samples"] == 120 and summary["counts"]["shards"] == 3
    assert summary["lineage"] == ["ingest", "license", "embed", "optout", "select"]

    page = service.get("/api/versions/fashion@v1/samples", params={"limit": 50, "offset": 100}).json()
    assert page["total"] == 120 and len(page["samples"]) == 20
    assert page["facets"] == {"part": ["pool"], "source": ["fashion-mnist"], "license": ["MIT"]}
    assert service.get("/api/versions/fashion@v1/samples", params={"license": "CC0"}).json()["total"] == 0
    image_id = page["samples"][0]["image_id"]
    thumbnail = service.get(f"/api/versions/fashion@v1/thumbnails/{image_id}")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 192

    provenance = service.get("/api/versions/fashion@v1/files/provenance.parquet")
    assert pq.read_table(io.BytesIO(provenance.content)).num_rows == 120
    assert service.post("/api/versions/fashion@v1/verify").json()["ok"] is True

    audit = service.get("/api/audit/image", params={"q": image_id}).json()
    assert audit["found"] and [row["ref"] for row in audit["versions"]] == ["fashion@v1"]
    assert audit["provenance"][0]["uri"].startswith(str(FIXTURE_IMAGES / "fashion-mnist"))
    statement = service.get("/api/versions/fashion@v1/statement", params={"format": "markdown"})
    assert statement.text.startswith("# Data statement: fashion@v1")
    composition = service.get("/api/audit/version/fashion@v1").json()
    assert composition["by_source"] == {"fashion-mnist": 120}


def test_resubmitting_the_same_spec_publishes_nothing_new(service, published, fashion_spec):
    again = service.wait_job(service.submit(fashion_spec, fresh=True)["job_id"])
    assert again["status"] == "finished" and again["version"] == "fashion@v1"
    assert again["result"]["unchanged"] is True


def test_unknown_things_are_404_and_bad_specs_are_400(service, published):
    assert service.get("/api/jobs/job-nope").status_code == 404
    assert service.get("/api/versions/fashion@v9").status_code == 404
    assert service.get("/api/versions/fashion@v1/thumbnails/" + "0" * 64).status_code == 404
    bad = service.post("/api/jobs", json={"spec": "name: x\nsources: []\n"})
    assert bad.status_code == 400 and "sources" in bad.json()["detail"]
    assert service.post("/api/jobs", json={"spec": "name: [unclosed"}).status_code == 400
    assert service.post("/api/jobs", json={}).status_code == 422
    assert service.post(f"/api/jobs/{published['job_id']}/cancel").status_code == 409


@pytest.mark.parametrize(
    "path",
    [
        "/api/versions/fashion@v1/files/../../../catalog.duckdb",
        "/api/versions/fashion@v1/files/..%2F..%2F..%2Fcatalog.duckdb",
        "/api/versions/fashion@v1/files//etc/passwd",
        "/api/versions/fashion@v1/files/shards%2F..%2Fmanifest.json%00",
        "/api/specs/..%2F..%2F..%2Fpyproject.toml",
        "/api/specs/%2Fetc%2Fpasswd",
        "/api/versions/fashion@v1/thumbnails/..%2F..%2Fcatalog.duckdb",
    ],
)
def test_file_routes_refuse_traversal(service, published, path):
    response = service.get(path)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert b"DUCK" not in response.content and b"root:" not in response.content


def test_submitted_specs_are_confined_to_the_data_root_and_home(service):
    outside = "name: escape\nsources:\n  - {name: etc, kind: folder, path: /etc}\n"
    refused = service.post("/api/jobs", json={"spec": outside})
    assert refused.status_code == 400 and "outside data_root" in refused.json()["detail"]
    upward = "name: escape\nsources:\n  - {name: up, kind: folder, path: ../../../..}\n"
    assert service.post("/api/jobs", json={"spec": upward}).status_code == 400
    publish_out = (
        "name: escape\nsources:\n  - {name: f, kind: folder, path: ../../fixtures/images/fashion-mnist}\n"
        "publish: {uri: /tmp/elsewhere}\n"
    )
    assert "outside the home" in service.post("/api/jobs", json={"spec": publish_out}).json()["detail"]
    secret = (
        "name: s3\nsources:\n  - {name: b, kind: s3, uri: s3://bucket/x}\n"
        "s3: {access_key_id: AKIAEXAMPLE, secret_access_key: hunter2}\n"
    )
    response = service.post("/api/jobs", json={"spec": secret})
    assert response.status_code == 400 and "credentials" in response.json()["detail"]
    assert "hunter2" not in json.dumps(service.get("/api/jobs").json())


def test_a_spec_is_checked_over_http_without_running_it(service):
    jobs_before = len(service.get("/api/jobs").json())
    report = service.post("/api/specs/check", role="curator", json={"spec_file": "fashion.yaml"}).json()
    assert report["ok"] and report["sources"][0]["count"] == 120 and report["stages"][0].startswith("decode")
    missing = "name: m\nsources:\n  - {name: gone, kind: folder, path: ../../fixtures/images/no-such-folder}\n"
    failing = service.post("/api/specs/check", json={"spec": missing}).json()
    assert not failing["ok"] and "folder does not exist" in failing["errors"][0]
    invalid = service.post("/api/specs/check", json={"spec": "name: x\nsources: []\nbogus: 1\n"})
    assert invalid.status_code == 400 and "bogus: unknown key" in invalid.json()["detail"]
    outside = service.post(
        "/api/specs/check", json={"spec": "name: e\nsources:\n  - {name: etc, kind: folder, path: /etc}\n"}
    )
    assert outside.status_code == 400 and "outside data_root" in outside.json()["detail"]  # confined like a run
    assert service.post("/api/specs/check", json={}).status_code == 422
    assert len(service.get("/api/jobs").json()) == jobs_before  # nothing was queued


def test_search_by_example_over_http(service, published):
    """A sample's neighbours (itself left out) and an uploaded file's (itself first), by the version's embedder."""
    samples = service.get("/api/versions/fashion@v1/samples", params={"limit": 500}).json()["samples"]
    query = samples[5]["image_id"]
    near = service.get("/api/versions/fashion@v1/similar", role="viewer", params={"image_id": query, "k": 7}).json()
    assert [hit["rank"] for hit in near["neighbours"]] == list(range(1, 8)) and near["query_image_id"] == query
    assert query not in {hit["image_id"] for hit in near["neighbours"]}
    upload = sorted((FIXTURE_IMAGES / "fashion-mnist" / "coat").iterdir())[0]
    found = service.post("/api/versions/fashion@v1/similar", role="viewer", data={"k": "3"},
                         files={"image": (upload.name, upload.read_bytes(), "image/png")}).json()  # fmt: skip
    assert len(found["neighbours"]) == 3 and found["neighbours"][0]["uri"] == str(upload)
    assert found["neighbours"][0]["similarity"] > 0.99 and found["model_id"].startswith("builtin:")

    def post(**kwargs):
        return service.post("/api/versions/fashion@v1/similar", role="viewer", **kwargs)

    corrupt = post(files={"image": ("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png")})
    assert corrupt.status_code == 400 and "not a usable image" in corrupt.json()["detail"]
    assert post(files={"image": ("big.png", b"\x89PNG" + b"\0" * (17 * 2**20), "image/png")}).status_code == 413
    assert post(data={"k": "3"}).status_code == 422
    assert post(data={"k": "many"}, files={"image": (upload.name, upload.read_bytes(), "image/png")}).status_code == 422
    unknown = service.get("/api/versions/fashion@v1/similar", params={"image_id": "0" * 64})
    assert unknown.status_code == 400 and "is not a sample" in unknown.json()["detail"]
    assert service.get("/api/versions/fashion@v1/similar", params={"image_id": query, "k": 0}).status_code == 422
    assert service.get("/api/versions/nope@v1/similar", params={"image_id": query}).status_code == 404
    text = service.get("/api/versions/fashion@v1/similar", params={"text": "a red coat"})
    assert text.status_code == 400 and "no text encoder" in text.json()["detail"]  # the builtin has no text tower


def test_opt_out_from_the_public_then_applied_removes_the_image(service, published):
    sample = service.get("/api/versions/fashion@v1/samples", params={"limit": 1}).json()["samples"][0]
    form = {"kind": "sha256", "value": sample["image_id"], "requester": "owner"}
    created = service.post("/api/optouts", role=None, data=form)
    assert created.status_code == 201, created.text
    request_id = created.json()["request_id"]
    status = service.get(f"/api/optouts/{request_id}", role=None).json()
    assert status == {"request_id": request_id, "kind": "sha256", "status": "received",
                      "received_at": created.json()["received_at"]}  # fmt: skip
    assert service.get("/api/optouts", role=None).status_code == 401  # the list names requesters: token only

    job = service.post("/api/datasets/fashion/apply-optouts", role="curator")
    assert job.status_code == 201, job.text
    applied = service.wait_job(job.json()["job_id"])
    assert applied["status"] == "finished" and applied["version"] == "fashion@v2", applied
    diff = service.get("/api/diff", params={"first": "fashion@v1", "second": "fashion@v2"}).json()
    assert diff["removed"] == [sample["image_id"]] and diff["added"] == []
    assert service.get(f"/api/optouts/{request_id}").json()["status"] == "applied in fashion@v2"
    versions = {row["ref"]: row["status"] for row in service.get("/api/versions").json()}
    assert versions == {"fashion@v1": "superseded_by_optout", "fashion@v2": "current"}


def test_uploads_go_through_the_safe_decoder_and_size_limit(service):
    not_an_image = service.post("/api/optouts", role=None, data={"kind": "image"},
                                files={"image": ("x.png", b"<html>not an image</html>", "image/png")})  # fmt: skip
    assert not_an_image.status_code == 422 and "not a usable image" in not_an_image.json()["detail"]
    huge = service.post("/api/optouts", role="viewer", data={"kind": "image"},
                        files={"image": ("big.png", b"\x89PNG" + b"\0" * (17 * 2**20), "image/png")})  # fmt: skip
    assert huge.status_code == 413
    missing = service.post("/api/optouts", role="viewer", data={"kind": "image"})
    assert missing.status_code == 422
    withdraw = service.post("/api/optouts", role=None, data={"kind": "withdraw", "value": "opt-000001-00000000"})
    assert withdraw.status_code == 401


def test_a_composed_version_serves_its_balance_plots_and_filters_by_part_and_cluster(service):
    from tests.service.conftest import SPECS

    job = service.wait_job(service.submit((SPECS / "balanced.yaml").read_text())["job_id"])
    assert job["status"] == "finished", job
    ref = job["version"]
    summary = service.get(f"/api/versions/{ref}").json()
    assert summary["report"]["samples_by_part"] == {"curated": 84, "balanced": 30}
    assert summary["plots"] == ["reports/balanced-clusters-after.png", "reports/balanced-clusters-before.png"]
    plot = service.get(f"/api/versions/{ref}/files/{summary['plots'][0]}")
    assert plot.headers["content-type"] == "image/png" and Image.open(io.BytesIO(plot.content)).format == "PNG"

    balanced = service.get(f"/api/versions/{ref}/samples", params={"part": "balanced", "limit": 500}).json()
    assert balanced["total"] == 30 and all(sample["cluster"] for sample in balanced["samples"])
    top = balanced["samples"][0]["cluster"].split("/")[0]
    in_cluster = service.get(f"/api/versions/{ref}/samples", params={"cluster": top, "limit": 500}).json()
    expected = [s["image_id"] for s in balanced["samples"] if s["cluster"].split("/")[0] == top]
    assert [sample["image_id"] for sample in in_cluster["samples"]] == expected

    rejects = service.get(f"/api/runs/{job['run_id']}/rejects").json()
    reasons = Counter(row["reason"] for row in rejects["rejects"])
    assert rejects["total"] == 204 - 114 and set(reasons) <= {"not_selected", "opted_out"}
    assert reasons["not_selected"] >= 89  # and the image an earlier test opted out, if it ran: the run honours it
    assert service.get(f"/api/runs/{job['run_id']}/duplicates").json() == []  # no dedup stage in this spec
    assert service.get("/api/runs/no-such-run/rejects").status_code == 404
