"""Pipeline spec validation: unknown keys are errors naming the file and key; secrets never leak into dumps."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.config import load_spec, parse_spec
from curation.errors import SpecError
from tests.conftest import REPO, write_spec

MINIMAL = {"name": "demo", "sources": [{"kind": "folder", "name": "pool", "path": "images"}]}


def test_quickstart_spec_is_valid():
    spec = load_spec(REPO / "pipelines" / "quickstart.yaml")
    assert spec.name == "quickstart"
    assert all(Path(source.path).is_dir() for source in spec.sources)


def test_relative_paths_resolve_against_the_spec_file(tmp_path):
    spec = load_spec(write_spec(tmp_path / "spec.yaml", MINIMAL))
    assert spec.sources[0].path == tmp_path / "images"


def test_every_local_path_resolves_against_the_spec_file_not_the_working_directory(tmp_path):
    """Decontamination sets, model files and output folders too, so that what a service checks is what a run
    opens; `bundled:default`, open_clip tags and s3:// URIs stay as they are."""
    spec = load_spec(write_spec(tmp_path / "spec.yaml", {
        **MINIMAL,
        "stages": {"embed": {"model": "bundled:models/b.json"},
                   "decontaminate": {"sets": [{"kind": "folder", "name": "eval", "path": "../eval"}]}},
        "storage": {"blobs": "blobs"}, "publish": {"uri": "s3://bucket/versions"},
    }))  # fmt: skip
    assert spec.stages.decontaminate.sets[0].path == tmp_path.parent / "eval"
    assert spec.stages.embed.model == f"bundled:{tmp_path / 'models' / 'b.json'}"
    assert spec.storage.blobs == str(tmp_path / "blobs") and spec.publish.uri == "s3://bucket/versions"
    for model, pretrained, expected in [
        ("timm:vit_small_patch16_224", "weights.pth", str(tmp_path / "weights.pth")),
        ("open_clip:ViT-B-32", "w/open_clip.bin", str(tmp_path / "w" / "open_clip.bin")),
        ("open_clip:ViT-B-32", "laion2b_s34b_b79k", "laion2b_s34b_b79k"),
    ]:
        data = {**MINIMAL, "stages": {"embed": {"model": model, "pretrained": pretrained}}}
        assert load_spec(write_spec(tmp_path / "spec.yaml", data)).stages.embed.pretrained == expected
    home = {**MINIMAL, "stages": {"embed": {"model": "bundled:~/b.json", "pretrained": "~/w.pth"}}}
    assert load_spec(write_spec(tmp_path / "spec.yaml", home)).stages.embed.model == f"bundled:{Path.home()}/b.json"
    shipped = {**MINIMAL, "stages": {"embed": {"model": "bundled:default"}}}
    assert load_spec(write_spec(tmp_path / "spec.yaml", shipped)).stages.embed.model == "bundled:default"


def balanced(levels: list[dict]) -> dict:
    part = {"kind": "balanced", "name": "balanced", "target": 5, "levels": levels}
    return {"embed": {"model": "builtin"}, "select": {"mode": "compose", "parts": [part]}}


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda s: s.update(nmae="x"), "nmae: unknown key"),
        (lambda s: s.update(stages={"decode": {"min_sid": 3}}), "stages.decode.min_sid: unknown key"),
        (lambda s: s["sources"][0].update(recursive=True), "sources.0.recursive: unknown key"),
        (lambda s: s.update(stages={"decode": {"min_side": "big"}}), "stages.decode.min_side"),
        (lambda s: s["sources"][0].update(kind="ftp"), "sources.0"),
        (lambda s: s.update(name="Bad Name!"), "name"),
        (lambda s: s.update(sources=[]), "sources"),
        (lambda s: s["sources"].append(dict(s["sources"][0])), "repeated: pool"),
        (lambda s: s.update(execution={"executor": "spark"}), "execution.executor"),
        (lambda s: s.update(stages={"decode": {"formats": ["JPEG", "ICO"]}}), "stages.decode.formats.1"),
        (lambda s: s.update(stages=balanced([{"clusters": 10}, {"clusters": 100}])), "finest first"),
        (lambda s: s.update(stages=balanced([{"clusters": 10}, {"clusters": 10}])), "got [10, 10]"),
        (lambda s: s.update(stages=balanced([{"clusters": 10}, {"clusters": 2, "split": 4}])), "levels[0]"),
    ],
)
def test_bad_specs_name_the_file_and_key(tmp_path, mutation, expected):
    data = {"name": "demo", "sources": [{"kind": "folder", "name": "pool", "path": "images"}]}
    mutation(data)
    path = write_spec(tmp_path / "bad.yaml", data)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "list.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_secrets_are_redacted_from_dumps_and_hash():
    secret = "very-secret-value-123"
    spec = parse_spec({**MINIMAL, "s3": {"access_key_id": "AKIA1", "secret_access_key": secret}})
    assert secret not in str(spec.public_dict())
    assert secret not in repr(spec)
    assert spec.s3.secret_access_key.get_secret_value() == secret
    other = parse_spec({**MINIMAL, "s3": {"access_key_id": "AKIA1", "secret_access_key": "another"}})
    assert spec.sha256() == other.sha256()  # the run identity does not depend on (or reveal) a secret


def test_spec_hash_follows_content():
    assert parse_spec(MINIMAL).sha256() == parse_spec(dict(MINIMAL)).sha256()
    changed = {**MINIMAL, "stages": {"decode": {"min_side": 64}}}
    assert parse_spec(MINIMAL).sha256() != parse_spec(changed).sha256()
