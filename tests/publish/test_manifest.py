"""Manifests validate against manifests/manifest.schema.json; malformed ones are refused with the bad field."""

from __future__ import annotations

import copy

import pytest

from curation.errors import VerifyError, VersionError
from curation.publish.manifest import build_manifest, content_sha256, creation_time, validate_manifest
from curation.publish.release import parse_ref

FILES = [
    {"path": "shards/shard-000000.tar", "sha256": "a" * 64, "bytes": 10240, "kind": "shard"},
    {"path": "provenance.parquet", "sha256": "b" * 64, "bytes": 900, "kind": "provenance"},
]


LINEAGE = [{"stage": "ingest", "params": {"min_side": 32}}]


def manifest(**overrides):
    arguments = dict(
        name="demo", version=2, parent={"ref": "demo@v1", "version": 1, "manifest_sha256": "c" * 64},
        run_id="demo-1", spec={"name": "demo"}, spec_sha256="d" * 64, lineage=LINEAGE,
        counts={"inputs": 5, "kept_inputs": 4, "rejected_inputs": 1}, dropped={"decode": {"truncated": 1}},
        changes={"added": 1, "removed": 0}, files=FILES,
        shards=[{"tar": "shards/shard-000000.tar", "index": "shards/shard-000000.parquet", "samples": 4}],
    )  # fmt: skip
    arguments.update(overrides)
    counts = {**arguments.pop("counts"), "samples": 4, "shards": 1}
    return build_manifest(counts=counts, **arguments)


def test_a_built_manifest_validates_and_lists_files_sorted():
    built = manifest()
    assert [item["path"] for item in built["files"]] == ["provenance.parquet", "shards/shard-000000.tar"]
    assert built["ref"] == "demo@v2" and built["content_sha256"] == content_sha256(FILES, LINEAGE)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda m: m.update(extra=1), "<root>"),
        (lambda m: m["files"][0].update(sha256="xyz"), "files/0/sha256"),
        (lambda m: m["files"][0].update(path="../escape"), "files/0/path"),
        (lambda m: m["counts"].pop("samples"), "counts"),
        (lambda m: m.update(version=0), "version"),
        (lambda m: m["dropped"].update(decode={"truncated": 0}), "dropped/decode/truncated"),
    ],
)
def test_malformed_manifests_are_refused(mutate, where):
    bad = copy.deepcopy(manifest())
    mutate(bad)
    with pytest.raises(VerifyError, match=where):
        validate_manifest(bad)


def test_content_hash_ignores_order_but_not_content():
    assert content_sha256(FILES, LINEAGE) == content_sha256(list(reversed(FILES)), LINEAGE)
    changed = [dict(FILES[0], bytes=1), FILES[1]]
    assert content_sha256(changed, LINEAGE) != content_sha256(FILES, LINEAGE)
    other_model = [*LINEAGE, {"stage": "embed", "params": {}, "model_id": "builtin:thumb16@wx-py"}]
    assert content_sha256(FILES, other_model) != content_sha256(FILES, LINEAGE)


def test_source_date_epoch_fixes_the_creation_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert creation_time() == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(("ref", "parsed"), [("demo@v3", ("demo", 3)), ("demo", ("demo", None)),
                                              ("demo@latest", ("demo", None))])  # fmt: skip
def test_refs(ref, parsed):
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["Demo@v1", "demo@v0", "demo@1", "demo@v1x", "../x@v1", ""])
def test_bad_refs(ref):
    with pytest.raises(VersionError):
        parse_ref(ref)
