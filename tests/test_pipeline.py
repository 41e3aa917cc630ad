"""End-to-end runs on a real local Ray instance with a real DuckDB catalog: fates, determinism, atomicity,
immutability, verification and the trainer-facing shards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

import curation
from curation.cli import cli
from curation.errors import StoreError, VerifyError, VersionError, VersionExistsError
from curation.publish import release
from curation.store.catalog import Catalog
from curation.store.objects import LocalStore
from tests.conftest import FIXTURE_IMAGES
from tests.corpus import image_bytes, write_evil_tar, write_hostile_corpus


def spec_for(sources: list[dict], *, name: str = "demo", executor: str = "ray", **extra) -> dict:
    return {
        "name": name,
        "sources": sources,
        "stages": {"decode": {"min_side": 16}},
        "execution": {"executor": executor, "block_size": 8},
        "publish": {"shard_max_samples": 16},
        **extra,
    }


def folder(name: str, path: Path, **extra) -> dict:
    return {"kind": "folder", "name": name, "path": str(path), **extra}


def tree_snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def fixture_pool(tmp_path) -> Path:
    """A copy of a slice of the committed real images (so tests can add files to it)."""
    pool = tmp_path / "pool"
    for source in sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:30]:
        target = pool / source.relative_to(FIXTURE_IMAGES)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return pool


def test_hostile_corpus_every_input_gets_one_row_and_nothing_escapes_home(ray_local, tmp_path, home):
    expected = {
        os.fsencode(tmp_path / "hostile" / name).decode("utf-8", "backslashreplace"): fate
        for name, fate in write_hostile_corpus(tmp_path / "hostile").items()
    }
    tar_path = tmp_path / "tars" / "evil-000.tar"
    tar_path.parent.mkdir()
    expected.update({f"{tar_path}#{member}": fate for member, fate in write_evil_tar(tar_path).items()})
    before = tree_snapshot(tmp_path)

    spec = spec_for([folder("hostile", tmp_path / "hostile"), {"kind": "webdataset", "name": "tars",
                                                                "urls": [str(tar_path)]}])  # fmt: skip
    result = curation.run(spec, home=home)

    after = tree_snapshot(tmp_path)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    assert changed and all(path.startswith("home/") for path in changed), sorted(changed)[:5]
    extracted = [p for p in tmp_path.parent.rglob("*") if p.name in ("evil", "evil.jpg", "evil.png")]
    assert not extracted and not Path("/abs/evil.png").exists(), "a tar member was extracted"

    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        outcomes = catalog.rows("SELECT uri, status, reason FROM outcomes WHERE run_id = ?", [result.run_id])
    assert sorted(row["uri"] for row in outcomes) == sorted(expected)  # each input exactly once
    for row in outcomes:
        fate = expected[row["uri"]]
        if fate == "kept":
            assert row["status"] == "kept", row
        elif fate == "corrupt_or_truncated":
            assert row["reason"] in ("corrupt", "truncated"), row
        else:
            assert row["reason"] == fate, row

    version = curation.open_version(result.version, home=home)
    provenance = version.provenance().to_pylist()
    assert sorted(row["uri"] for row in provenance) == sorted(expected)
    kept = {row["image_id"] for row in provenance if row["status"] == "kept"}
    assert set(version.samples()["image_id"].to_pylist()) == kept
    assert version.manifest["counts"]["rejected_inputs"] == sum(fate != "kept" for fate in expected.values())
    assert version.manifest["dropped"]["ingest"]["path_traversal"] == 3
    assert version.verify() == []
    tar_sample = next(s for s in version.samples().to_pylist() if s["sources"] == ["tars"])
    assert tar_sample["license"] == "CC-BY-4.0" and tar_sample["caption"] == "noise"


def test_same_bytes_twice_is_one_sample_with_two_provenance_rows(ray_local, tmp_path, home):
    data = image_bytes(42)
    for place in ("a/one.jpg", "b/two.jpg"):
        (tmp_path / place).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / place).write_bytes(data)
    (tmp_path / "b" / "two.json").write_text(json.dumps({"license": "CC0-1.0"}))
    spec = spec_for([folder("a", tmp_path / "a"), folder("b", tmp_path / "b")])
    version = curation.open_version(curation.run(spec, home=home).version, home=home)
    samples = version.samples().to_pylist()
    assert len(samples) == 1
    assert samples[0]["image_id"] == hashlib.sha256(data).hexdigest()
    assert [entry["uri"] for entry in samples[0]["provenance"]] == [
        str(tmp_path / "a/one.jpg"),
        str(tmp_path / "b/two.jpg"),
    ]
    assert samples[0]["license"] == "CC0-1.0" and samples[0]["sources"] == ["a", "b"]
    assert version.manifest["counts"] == {
        "inputs": 2,
        "kept_inputs": 2,
        "rejected_inputs": 0,
        "samples": 1,
        "shards": 1,
    }


def test_two_homes_give_byte_identical_shards(ray_local, fixture_pool, tmp_path):
    spec = spec_for([folder("clipart", fixture_pool)])
    first = curation.open_version(curation.run(spec, home=tmp_path / "h1").version, home=tmp_path / "h1")
    second = curation.open_version(curation.run(spec, home=tmp_path / "h2").version, home=tmp_path / "h2")
    assert first.manifest["files"] == second.manifest["files"]
    assert first.manifest["content_sha256"] == second.manifest["content_sha256"]
    assert len(first.manifest["shards"]) == 2  # 30 samples, 16 per shard
    for a, b in zip(first.shard_urls(), second.shard_urls()):
        assert Path(a).read_bytes() == Path(b).read_bytes()


def test_rerun_is_unchanged_and_a_change_makes_a_child_version(ray_local, fixture_pool, home):
    spec = spec_for([folder("clipart", fixture_pool)])
    first = curation.run(spec, home=home)
    again = curation.run(spec, home=home)
    assert again.unchanged and again.version == first.version == "demo@v1"

    (fixture_pool / "extra.jpg").write_bytes(image_bytes(99))
    child = curation.run(spec, home=home)
    assert child.version == "demo@v2" and not child.unchanged
    manifest = curation.open_version("demo@v2", home=home).manifest
    assert manifest["parent"]["ref"] == "demo@v1"
    assert manifest["changes"] == {"added": 1, "removed": 0}
    assert curation.open_version("demo@v1", home=home).verify() == []  # the old version is untouched
    assert curation.open_version("demo", home=home).ref == "demo@v2"
    with pytest.raises(VersionError, match="does not exist"):
        curation.open_version("demo@v9", home=home)


def test_verify_catches_a_flipped_byte(ray_local, fixture_pool, home):
    version = curation.open_version(
        curation.run(spec_for([folder("clipart", fixture_pool)]), home=home).version, home=home
    )
    shard = Path(version.shard_urls()[0])
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = version.verify()
    assert len(problems) == 1 and "shard-000000.tar" in problems[0] and "SHA-256" in problems[0]


def test_verify_catches_an_edited_manifest(ray_local, fixture_pool, home):
    version = curation.open_version(
        curation.run(spec_for([folder("clipart", fixture_pool)]), home=home).version, home=home
    )
    manifest_path = Path(version.root.url("manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"]["samples"] += 1
    manifest_path.write_text(json.dumps(manifest))
    assert any("catalog" in problem for problem in curation.open_version("demo@v1", home=home).verify())


def test_verify_reports_a_file_the_manifest_does_not_list(ray_local, fixture_pool, home):
    version = curation.open_version(
        curation.run(spec_for([folder("clipart", fixture_pool)]), home=home).version, home=home
    )
    shard = Path(version.shard_urls()[0])
    shutil.copyfile(shard, shard.with_name("shard-000009.tar"))  # a reader globbing shards/*.tar would take it
    assert version.verify() == ["shards/shard-000009.tar: not in the manifest"]


@pytest.mark.parametrize("damage", [b"{", b"[]", b'{"name": "demo"}'])
def test_a_damaged_manifest_is_a_verify_failure_and_a_clear_error(ray_local, fixture_pool, home, damage):
    curation.run(spec_for([folder("clipart", fixture_pool)]), home=home)
    (home / "datasets" / "demo" / "v1" / "manifest.json").write_bytes(damage)
    result = CliRunner().invoke(cli, ["--home", str(home), "verify", "demo@v1"])
    assert result.exit_code == 1 and "manifest.json" in result.output and "FAILED" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(VerifyError, match="manifest.json"):
        curation.open_version("demo@v1", home=home)


@pytest.mark.parametrize("damage", ["unreadable", "copied"])
def test_a_stray_manifest_in_the_store_does_not_stop_publishing(ray_local, fixture_pool, home, damage, caplog):
    """A damaged manifest, or a version folder copied to another number, is no version: it is not registered,
    and the next version is numbered past it."""
    spec = spec_for([folder("clipart", fixture_pool)])
    curation.run(spec, home=home)
    datasets = home / "datasets" / "demo"
    if damage == "copied":
        shutil.copytree(datasets / "v1", datasets / "v2")
    else:
        (datasets / "v2").mkdir()
        (datasets / "v2" / "manifest.json").write_text("{")
    (fixture_pool / "new.jpg").write_bytes(image_bytes(5))
    result = curation.run(spec, home=home)
    assert result.version == "demo@v3"
    assert curation.open_version("demo@v3", home=home).manifest["parent"]["ref"] == "demo@v1"
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert [row["version"] for row in catalog.versions("demo")] == [1, 3]
    assert "not registering demo@v2" in caplog.text


def test_a_number_another_publisher_claimed_is_skipped(ray_local, fixture_pool, home):
    """v2 was claimed by a publisher writing the same name to this store (or one that died): this run takes v3,
    with v1 as its parent, and v2 is never written by it."""
    spec = spec_for([folder("clipart", fixture_pool)])
    curation.run(spec, home=home)
    assert LocalStore(home / "datasets").put_new("demo/.claims/v2", b"another home's run")
    (fixture_pool / "new.jpg").write_bytes(image_bytes(5))
    result = curation.run(spec, home=home)
    assert result.version == "demo@v3" and not (home / "datasets" / "demo" / "v2").exists()
    version = curation.open_version("demo@v3", home=home)
    assert version.manifest["parent"]["ref"] == "demo@v1" and version.verify() == []
    claim = json.loads((home / "datasets" / "demo" / ".claims" / "v3").read_text())
    assert claim["holder"] == f"run {result.run_id}" and claim["pid"] == os.getpid()


def test_a_corrupt_stored_image_is_never_published(ray_local, fixture_pool, home):
    """Bytes whose hash no longer matches their address are refused at publish and removed, so that reading the
    source again stores them afresh."""
    spec = spec_for([folder("clipart", fixture_pool)])
    version = curation.open_version(curation.run(spec, home=home).version, home=home)
    victim = version.samples()["image_id"][3].as_py()
    blob = next((home / "blobs").rglob(victim))
    data = bytearray(blob.read_bytes())
    data[100:108] = bytes(8)
    blob.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"image {victim} are corrupt.*--fresh"):
        curation.run(spec, home=home, fresh=True)
    assert not blob.exists()
    result = curation.run(spec, home=home, fresh=True)
    assert result.unchanged and result.version == "demo@v1"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == victim


def test_a_copied_or_moved_home_reads_its_own_versions(ray_local, fixture_pool, home, tmp_path):
    spec = spec_for([folder("clipart", fixture_pool)])
    curation.run(spec, home=home)
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    copied_shard = Path(curation.open_version("demo@v1", home=copy).shard_urls()[0])
    assert copied_shard.is_relative_to(copy)
    copied_shard.write_bytes(copied_shard.read_bytes()[:100])  # damage the copy only
    assert curation.open_version("demo@v1", home=copy).verify()
    assert curation.open_version("demo@v1", home=home).verify() == []

    moved = tmp_path / "moved"
    home.rename(moved)
    assert curation.open_version("demo@v1", home=moved).verify() == []
    assert curation.run(spec, home=moved).unchanged


def test_shards_read_back_with_webdataset(ray_local, fixture_pool, home):
    version = curation.open_version(
        curation.run(spec_for([folder("clipart", fixture_pool)]), home=home).version, home=home
    )
    dataset = wds.WebDataset(version.shard_urls(), shardshuffle=False).decode("pil")
    seen = []
    for sample in dataset:
        meta = sample["json"]
        image = sample[meta["member"].rsplit(".", 1)[1]]
        assert isinstance(image, Image.Image) and image.size == (meta["width"], meta["height"])
        assert meta["key"] == sample["__key__"] == meta["image_id"] and "." not in sample["__key__"]
        seen.append(sample["__key__"])
    assert seen == sorted(seen) and len(seen) == 30
    index = pq.read_table(version.root.open(version.manifest["shards"][0]["index"]))
    assert index["image_id"].to_pylist() == seen[:16]


def test_kept_bytes_are_the_original_bytes(ray_local, fixture_pool, home):
    version = curation.open_version(
        curation.run(spec_for([folder("clipart", fixture_pool)]), home=home).version, home=home
    )
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in fixture_pool.rglob("*.png")}
    for sample in wds.WebDataset(version.shard_urls(), shardshuffle=False):
        image_bytes_ = next(value for key, value in sample.items() if key in ("png", "jpg"))
        assert hashlib.sha256(image_bytes_).hexdigest() == sample["__key__"]
        assert sample["__key__"] in originals


def test_a_publish_killed_midway_leaves_no_version_and_the_next_run_publishes(
    ray_local, fixture_pool, home, monkeypatch
):
    spec = spec_for([folder("clipart", fixture_pool)])

    def crash(staging, manifest):
        raise KeyboardInterrupt("simulated crash after shards were written, before the manifest")

    monkeypatch.setattr(release, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        curation.run(spec, home=home)
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert catalog.versions() == []
        crashed_run = catalog.rows("SELECT run_id, status FROM runs")[0]
    assert crashed_run["status"] == "failed"
    assert not (home / "datasets" / "demo" / "v1").exists()
    assert list((home / "datasets" / "demo").glob(".staging-*/shards/*.tar")), "the crash happened after shards"

    monkeypatch.undo()
    result = curation.run(spec, home=home)
    assert result.version == "demo@v1" and result.run_id == crashed_run["run_id"]  # resumed, not restarted
    assert result.resumed_blocks == 4
    assert curation.open_version("demo@v1", home=home).verify() == []
    assert not list((home / "datasets" / "demo").glob(".staging-*"))


def test_versions_are_never_overwritten(ray_local, fixture_pool, home, tmp_path):
    spec = spec_for([folder("clipart", fixture_pool)])
    curation.run(spec, home=home)
    v1_manifest = (home / "datasets" / "demo" / "v1" / "manifest.json").read_bytes()
    (home / "catalog.duckdb").unlink()  # a lost catalog must not make the store forget v1
    result = curation.run(spec, home=home)
    assert result.version == "demo@v1" and result.unchanged  # v1 was re-registered from the store, not rewritten
    assert (home / "datasets" / "demo" / "v1" / "manifest.json").read_bytes() == v1_manifest
    assert curation.open_version("demo@v1", home=home).verify() == []
    (fixture_pool / "new.jpg").write_bytes(image_bytes(5))
    assert curation.run(spec, home=home).version == "demo@v2"

    staging = tmp_path / "stage"
    staging.mkdir()
    manifest = json.loads(v1_manifest)
    with pytest.raises(VersionExistsError):
        release.commit_version(LocalStore(home / "datasets"), staging, "demo", 1, manifest)


def test_local_executor_gives_the_same_version_as_ray(ray_local, fixture_pool, tmp_path):
    by_ray = curation.run(spec_for([folder("clipart", fixture_pool)]), home=tmp_path / "ray")
    local = curation.run(spec_for([folder("clipart", fixture_pool)], executor="local"), home=tmp_path / "local")
    content = [curation.open_version(r.version, home=tmp_path / h).manifest["content_sha256"]
               for r, h in ((by_ray, "ray"), (local, "local"))]  # fmt: skip
    assert content[0] == content[1]


@pytest.mark.parametrize("image", [None, {"size": 24, "format": "JPEG"}], ids=["originals", "transformed"])
def test_sample_metadata_validates_against_schema(ray_local, fixture_pool, home, image):
    import jsonschema
    from referencing import Registry, Resource

    import manifests

    spec = spec_for([folder("clipart", fixture_pool)])
    spec["publish"]["image"] = image
    version = curation.open_version(curation.run(spec, home=home).version, home=home)
    registry = Registry().with_resource(
        "https://curation.dev/schemas/provenance.schema.json", Resource.from_contents(manifests.load("provenance"))
    )
    validator = jsonschema.Draft202012Validator(manifests.load("sample"), registry=registry)
    for sample in wds.WebDataset(version.shard_urls(), shardshuffle=False):
        validator.validate(json.loads(sample["json"]))
    validator.validate(version.samples().to_pylist()[0])
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**version.samples().to_pylist()[0], "image_id": "not-a-hash"})
