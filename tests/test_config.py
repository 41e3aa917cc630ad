"""Pipeline spec validation: unknown keys are errors naming the file and key; secrets never leak into dumps."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from curation.config import load_spec, parse_spec
from curation.errors import SpecError
from tests.conftest import REPO, write_spec
from tests.corpus import image_bytes

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
        (lambda s: s.update(stages={"select": {"parts": balanced([{"clusters": 2}])["select"]["parts"]}}),
         "stages.select: Value error, parts and shards > 1 need mode compose"),
        (lambda s: s.update(stages={"select": {"shards": 4}}), "parts and shards > 1 need mode compose"),
        (lambda s: s.update(stages={"decode": {"quality": {"min_brightness": 200, "max_brightness": 50}}}),
         "stages.decode.quality: Value error, min_brightness 200.0 is above max_brightness 50.0"),
        (lambda s: s.update(publish={"uri": "s3:/bucket/x"}), "publish.uri: Value error, 's3:/bucket/x' looks like"),
        (lambda s: s.update(storage={"blobs": "S3://bucket/x"}), "storage.blobs: Value error, 'S3://bucket/x' looks"),
        (lambda s: s.update(sources=[{"kind": "webdataset", "name": "pool", "urls": ["a.tar", "gs://b/c.tar"]}]),
         "sources.0.urls.1: Value error, 'gs://b/c.tar' looks like a URL, but only s3:// URIs are supported"),
        # YAML reads yes/no/on/off as booleans: a number must not quietly become 1 or 0
        (lambda s: s.update(stages={"dedup": {"k": True, "copy_detection": False}}),
         "stages.dedup.k: a number is needed, not true"),
        (lambda s: s.update(stages={"dedup": {"threshold": False, "copy_detection": False}}),
         "stages.dedup.threshold: a number is needed, not false"),
        (lambda s: s.update(stages={"decode": {"min_side": "16"}}),
         "stages.decode.min_side: a whole number is needed, not the string '16'"),
        (lambda s: s.update(stages=balanced([{"clusters": True}])),
         "stages.select.parts.0.levels.0.clusters: a number"),
    ],
)  # fmt: skip
def test_bad_specs_name_the_file_and_key(tmp_path, mutation, expected):
    data = {"name": "demo", "sources": [{"kind": "folder", "name": "pool", "path": "images"}]}
    mutation(data)
    path = write_spec(tmp_path / "bad.yaml", data)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_a_repeated_key_names_the_file_line_and_key(tmp_path):
    """YAML keeps the last of two `decode:` blocks without a word; a spec must not lose settings that way. Keys
    merged from an anchor may still be overridden."""
    path = tmp_path / "twice.yaml"
    path.write_text("name: demo\nsources:\n  - {kind: folder, name: pool, path: images}\nstages:\n"
                    "  decode:\n    min_side: 16\n  decode:\n    max_bytes: 100\n")  # fmt: skip
    with pytest.raises(SpecError, match=rf"^{re.escape(str(path))}: line 7: key 'decode' is repeated$"):
        load_spec(path)
    path.write_text("name: demo\nsources:\n  - &pool {kind: folder, name: pool, path: images}\n"
                    "  - <<: *pool\n    name: other\n")  # fmt: skip
    assert [source.name for source in load_spec(path).sources] == ["pool", "other"]


def test_a_spec_that_is_not_utf8_is_a_spec_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: demo\ndescription: Caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=rf"^{re.escape(str(path))}: not UTF-8 text \(invalid byte at offset 27\)$"):
        load_spec(path)


def test_decode_formats_are_case_insensitive():
    spec = parse_spec({**MINIMAL, "stages": {"decode": {"formats": ["png", "Jpeg"]}}})
    assert spec.stages.decode.formats == ("PNG", "JPEG")


def test_source_paths_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    spec = load_spec(write_spec(tmp_path / "spec.yaml", {"name": "demo", "sources": [
        {"kind": "folder", "name": "pool", "path": "~/imgs"},
        {"kind": "urls", "name": "web", "path": "~/urls.csv"},
        {"kind": "webdataset", "name": "tars", "urls": ["~/shards/{0..3}.tar", "s3://bucket/x.tar"]},
    ]}))  # fmt: skip
    assert spec.sources[0].path == tmp_path / "user" / "imgs"
    assert spec.sources[1].path == tmp_path / "user" / "urls.csv"
    assert spec.sources[2].urls == (str(tmp_path / "user" / "shards" / "{0..3}.tar"), "s3://bucket/x.tar")


def test_a_mapping_spec_resolves_relative_paths_against_the_working_directory(tmp_path, monkeypatch):
    """The same mapping run from two folders is two specs (two hashes): a resumed or repeated run must not
    publish what another folder's `imgs` held."""
    import curation
    from curation.store.catalog import Catalog

    spec = {"name": "rel", "sources": [{"kind": "folder", "name": "pool", "path": "imgs"}],
            "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "local"}}  # fmt: skip
    home = tmp_path / "home"
    paths = []
    for number, folder in enumerate(["a", "b"]):
        (tmp_path / folder / "imgs").mkdir(parents=True)
        (tmp_path / folder / "imgs" / "x.jpg").write_bytes(image_bytes(number))
        monkeypatch.chdir(tmp_path / folder)
        version = curation.open_version(curation.run(spec, home=home).version, home=home)
        paths.append(version.manifest["spec"]["sources"][0]["path"])
        assert version.samples().column("image_id").to_pylist() == [hashlib.sha256(image_bytes(number)).hexdigest()]
    assert paths == [str(tmp_path / "a" / "imgs"), str(tmp_path / "b" / "imgs")]
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert len({row["spec_sha256"] for row in catalog.rows("SELECT spec_sha256 FROM runs")}) == 2


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


def test_a_float_may_be_written_as_yaml_reads_exponents(tmp_path):
    """PyYAML reads `1e-1` (no dot) as a string; a float field takes it, as users write learning rates."""
    path = tmp_path / "spec.yaml"
    path.write_text("name: demo\nsources: [{kind: folder, name: pool, path: images}]\n"
                    "stages: {dedup: {copy_detection: false, threshold: 9e-1}}\n")  # fmt: skip
    assert load_spec(path).stages.dedup.threshold == 0.9
