"""S3 end to end against a real S3-compatible server process on 127.0.0.1: an S3 prefix source, WebDataset
tars on s3://, publishing to S3 (manifest last), and credentials that never reach a log or a published file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import webdataset as wds

import curation
from curation.store.catalog import Catalog
from curation.store.objects import S3Store
from tests.conftest import S3_KEY_ID, S3_SECRET, write_spec
from tests.corpus import image_bytes, tar_bytes


@pytest.fixture
def s3_pool(s3_client, bucket) -> dict[str, bytes]:
    """Images under s3://bucket/pool/ (one with a sidecar, one not an image) and a tar shard under tars/."""
    objects = {
        "pool/cats/a.jpg": image_bytes(1),
        "pool/cats/b.png": image_bytes(2, fmt="PNG"),
        "pool/dogs/c.jpg": image_bytes(3),
        "pool/dogs/broken.jpg": b"not an image at all",
        "pool/cats/a.json": json.dumps({"license": "CC-BY-4.0", "attribution": "A. Person"}).encode(),
        "pool/readme.txt": b"ignored: not an image extension",
        "tars/shard-000.tar": tar_bytes(
            [("k1.jpg", image_bytes(4)), ("k1.txt", b"a caption"), ("../escape.jpg", image_bytes(5))]
        ),  # fmt: skip
    }
    for key, data in objects.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    return objects


def s3_run_spec(bucket: str, s3: dict, **extra) -> dict:
    return {
        "name": "s3demo",
        "sources": [
            {"kind": "s3", "name": "pool", "uri": f"s3://{bucket}/pool/"},
            {"kind": "webdataset", "name": "tars", "urls": [f"s3://{bucket}/tars/shard-{{000..000}}.tar"]},
        ],
        "execution": {"executor": "ray", "block_size": 2},
        "publish": {"uri": f"s3://{bucket}/datasets"},
        "s3": s3,
        **extra,
    }


def test_s3_sources_and_s3_publish(ray_local, s3_pool, s3_spec, bucket, s3_client, home, monkeypatch):
    result = curation.run(s3_run_spec(bucket, s3_spec), home=home)
    assert result.version == "s3demo@v1"

    keys = {item["Key"] for item in s3_client.list_objects_v2(Bucket=bucket, Prefix="datasets/")["Contents"]}
    assert "datasets/s3demo/v1/manifest.json" in keys and "datasets/s3demo/v1/shards/shard-000000.tar" in keys

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)  # readers take credentials from the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    version = curation.open_version("s3demo@v1", home=home)
    assert version.verify() == []
    fates = {row["uri"]: row["reason"] or row["status"] for row in version.provenance().to_pylist()}
    assert fates == {
        f"s3://{bucket}/pool/cats/a.jpg": "kept",
        f"s3://{bucket}/pool/cats/b.png": "kept",
        f"s3://{bucket}/pool/dogs/c.jpg": "kept",
        f"s3://{bucket}/pool/dogs/broken.jpg": "not_an_image",
        f"s3://{bucket}/tars/shard-000.tar#k1.jpg": "kept",
        f"s3://{bucket}/tars/shard-000.tar#../escape.jpg": "path_traversal",
    }
    samples = {row["provenance"][0]["uri"]: row for row in version.samples().to_pylist()}
    assert samples[f"s3://{bucket}/pool/cats/a.jpg"]["license"] == "CC-BY-4.0"
    assert samples[f"s3://{bucket}/pool/cats/a.jpg"]["attribution"] == "A. Person"
    assert samples[f"s3://{bucket}/tars/shard-000.tar#k1.jpg"]["caption"] == "a caption"

    # The trainer-facing shards are plain WebDataset tars once fetched from S3.
    shard = s3_client.get_object(Bucket=bucket, Key="datasets/s3demo/v1/shards/shard-000000.tar")["Body"].read()
    (home / "shard.tar").write_bytes(shard)
    assert sum(1 for _ in wds.WebDataset(str(home / "shard.tar"), shardshuffle=False)) == 4


def test_s3_publish_is_invisible_until_the_manifest_lands(
    ray_local, s3_pool, s3_spec, bucket, s3_client, home, monkeypatch
):
    original = S3Store.put_file

    def fail_on_manifest(self, key, path):
        if key.endswith("manifest.json"):
            raise ConnectionError("simulated network loss before the manifest upload")
        return original(self, key, path)

    monkeypatch.setattr(S3Store, "put_file", fail_on_manifest)
    with pytest.raises(ConnectionError):
        curation.run(s3_run_spec(bucket, s3_spec), home=home)
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="datasets/").get("Contents", [])
    assert any(item["Key"].endswith(".tar") for item in listing)  # shards were uploaded ...
    assert not any(item["Key"].endswith("manifest.json") for item in listing)  # ... but no version exists
    monkeypatch.undo()

    # Another layout this time (one shard, not several): nothing the failed attempt left may stay beside it
    result = curation.run(s3_run_spec(bucket, s3_spec, publish={"uri": f"s3://{bucket}/datasets",
                                                                "shard_max_samples": 64}), home=home)  # fmt: skip
    assert result.version == "s3demo@v1"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    version = curation.open_version("s3demo@v1", home=home)
    assert version.verify() == []
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="datasets/s3demo/v1/")["Contents"]
    stored = {item["Key"] for item in listing}
    assert stored == {f"datasets/s3demo/v1/{item['path']}" for item in version.manifest["files"]} | {
        "datasets/s3demo/v1/manifest.json"}  # fmt: skip


def test_credentials_never_reach_logs_or_published_files(s3_pool, s3_endpoint, s3_client, bucket, tmp_path):
    """The CLI in a subprocess (its own Ray), credentials from AWS_* variables; DEBUG logging on."""
    spec_path = write_spec(tmp_path / "spec.yaml", s3_run_spec(bucket, {"endpoint_url": s3_endpoint}))
    home = tmp_path / "home"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "RAY_AUTH_MODE": "disabled",
    }
    run = subprocess.run(
        [sys.executable, "-m", "curation.cli", "--home", str(home), "-vv", "run", str(spec_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "published s3demo@v1" in run.stdout
    verify = subprocess.run(
        [sys.executable, "-m", "curation.cli", "--home", str(home), "-vv", "verify", "s3demo@v1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0 and "OK" in verify.stdout
    for text in (run.stdout, run.stderr, verify.stdout, verify.stderr):
        assert S3_SECRET not in text and S3_KEY_ID not in text
    for path in home.rglob("*"):
        if path.is_file():
            assert S3_SECRET.encode() not in path.read_bytes(), path
    manifest = s3_client.get_object(Bucket=bucket, Key="datasets/s3demo/v1/manifest.json")["Body"].read()
    assert S3_SECRET.encode() not in manifest


def test_spec_secrets_are_redacted_in_manifest(ray_local, s3_pool, s3_spec, bucket, home, s3_client):
    curation.run(s3_run_spec(bucket, s3_spec), home=home)
    raw = s3_client.get_object(Bucket=bucket, Key="datasets/s3demo/v1/manifest.json")["Body"].read().decode()
    assert S3_SECRET not in raw and S3_KEY_ID not in raw
    assert json.loads(raw)["spec"]["s3"]["secret_access_key"] == "**********"


def test_a_second_home_reads_versions_it_found_on_a_shared_s3_store(
    ray_local, s3_pool, s3_spec, bucket, tmp_path, monkeypatch
):
    spec = s3_run_spec(bucket, s3_spec, execution={"executor": "local"})
    curation.run(spec, home=tmp_path / "first")
    pool = tmp_path / "more"
    pool.mkdir()
    (pool / "new.jpg").write_bytes(image_bytes(77))
    other = {**spec, "sources": [*spec["sources"], {"kind": "folder", "name": "more", "path": str(pool)}]}
    assert curation.run(other, home=tmp_path / "second").version == "s3demo@v2"  # it learnt v1 from the store
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    found = curation.open_version("s3demo@v1", home=tmp_path / "second")  # no run of its own made it
    assert found.verify() == [] and found.samples().num_rows == 4


def test_an_object_over_max_bytes_is_too_large_and_the_limit_is_inclusive(s3_spec, bucket, s3_client, tmp_path):
    small, large = image_bytes(1), image_bytes(2, size=(200, 150))
    for key, data in (("sized/small.jpg", small), ("sized/large.jpg", large)):
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    spec = {"name": "sized", "sources": [{"kind": "s3", "name": "pool", "uri": f"s3://{bucket}/sized/"}],
            "stages": {"decode": {"min_side": 16, "max_bytes": len(small)}}, "execution": {"executor": "local"},
            "s3": s3_spec}  # fmt: skip
    result = curation.run(spec, home=tmp_path / "home")
    with Catalog.open(tmp_path / "home" / "catalog.duckdb", read_only=True) as catalog:
        fates = {row["uri"].rsplit("/", 1)[1]: (row["reason"] or row["status"], row["detail"])
                 for row in catalog.rows("SELECT uri, status, reason, detail FROM outcomes WHERE run_id = ?",
                                         [result.run_id])}  # fmt: skip
    assert fates["small.jpg"][0] == "kept"
    assert fates["large.jpg"] == ("too_large", f"{len(large)} bytes > max_bytes {len(small)}")
