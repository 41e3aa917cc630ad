"""`curate check`: validates a spec and reports what a run would read, offline: counts what is local, lists S3
without contacting it, names every problem (exit 1) and never starts a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from curation.cli import cli
from tests.conftest import REPO, write_spec
from tests.corpus import image_bytes, tar_bytes


def check(spec_path: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["check", str(spec_path), "--json", *extra])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("spec", ["quickstart.yaml", "lvd-142m.yaml", "lvd-1689m.yaml"])
def test_shipped_specs_check_clean(spec):
    """The quickstart reads its fixtures; the paper-scale specs validate and only warn that their weights file is
    not on this machine (S3 is never contacted: no endpoint or credentials exist here)."""
    code, report = check(REPO / "pipelines" / spec)
    assert code == 0 and report["ok"] and report["errors"] == []
    if spec == "quickstart.yaml":
        assert [source["count"] for source in report["sources"]] == [84, 120] and report["warnings"] == []
    else:
        assert [w for w in report["warnings"] if "is not on this machine" not in w] == []
        assert any(stage.startswith("select compose") and "k-means on" in stage for stage in report["stages"])
        assert any(stage.startswith("dedup") and "IVF cells as Ray tasks" in stage for stage in report["stages"])


def test_counts_what_the_planner_would_list(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for index in range(3):
        (pool / f"{index}.jpg").write_bytes(image_bytes(index))
    (pool / "notes.txt").write_text("not an image")
    for index in range(4):
        (tmp_path / f"shard-{index}.tar").write_bytes(tar_bytes([("a.jpg", image_bytes(index))]))
    (tmp_path / "urls.csv").write_text("url\nhttp://127.0.0.1:9/a.jpg\nhttp://127.0.0.1:9/b.jpg\n")
    spec = write_spec(tmp_path / "spec.yaml", {"name": "counts", "sources": [
        {"kind": "folder", "name": "pool", "path": "pool"},
        {"kind": "webdataset", "name": "tars", "urls": ["shard-{0..3}.tar"]},
        {"kind": "webdataset", "name": "remote", "urls": ["s3://nowhere/part-{000..099}.tar"]},
        {"kind": "urls", "name": "web", "path": "urls.csv"},
        {"kind": "s3", "name": "bucket", "uri": "s3://nowhere/prefix/"},
    ]})  # fmt: skip
    before = sorted(tmp_path.rglob("*"))
    code, report = check(spec)
    assert code == 0 and [source["count"] for source in report["sources"]] == [3, 4, 100, 2, None]
    assert "not contacted" in report["sources"][2]["what"] and "not contacted" in report["sources"][4]["what"]
    assert sorted(tmp_path.rglob("*")) == before  # nothing was written: no home, no run


@pytest.mark.parametrize(
    ("image", "line"),
    [({"size": 384, "format": "WEBP", "quality": 80}, "shorter_side 384 px, as WEBP (quality 80)"),
     ({"resize": "none", "format": "JPEG"}, "derive published images: as JPEG (quality 90)"),
     ({"resize": "center_crop", "size": 256, "upscale": True}, "center_crop 256 px, upscale, in their own format")],
)  # fmt: skip
def test_the_published_image_transform_is_described(tmp_path, image, line):
    (tmp_path / "pool").mkdir()
    sources = [{"kind": "folder", "name": "pool", "path": "pool"}]
    spec = write_spec(tmp_path / "spec.yaml", {"name": "small", "sources": sources, "publish": {"image": image}})
    code, report = check(spec)
    assert code == 0 and any(line in stage for stage in report["stages"]), report["stages"]


def test_every_problem_is_named_and_fails_the_check(tmp_path):
    (tmp_path / "urls.csv").write_text("link\nhttp://127.0.0.1:9/a.jpg\n")  # no `url` column
    (tmp_path / "empty").mkdir()
    spec = write_spec(tmp_path / "spec.yaml", {"name": "broken", "sources": [
        {"kind": "folder", "name": "missing", "path": "nope"},
        {"kind": "urls", "name": "web", "path": "urls.csv"},
        {"kind": "webdataset", "name": "tars", "urls": ["shards/*.tar"]},
        {"kind": "folder", "name": "empty", "path": "empty"},
    ], "stages": {
        "embed": {"model": "timm:vit_small_patch16_224", "pretrained": str(tmp_path / "absent.pth")},
        "decontaminate": {"sets": [{"kind": "folder", "name": "eval", "path": "no-eval"}]},
    }})  # fmt: skip
    code, report = check(spec)
    assert code == 1 and not report["ok"]
    errors = "\n".join(report["errors"])
    assert "sources.0: source 'missing': folder does not exist" in errors
    assert "sources.1: source 'web'" in errors and "no column 'url'" in errors
    assert "sources.2: source 'tars': no tar shard matches" in errors
    assert "stages.decontaminate.sets.0: source 'eval': folder does not exist" in errors
    assert len(report["errors"]) == 4
    warnings = "\n".join(report["warnings"])
    assert "source 'empty' has no inputs" in warnings and "absent.pth is not on this machine" in warnings


def test_embedder_problems(tmp_path):
    (tmp_path / "pool").mkdir()
    base = {"name": "m", "sources": [{"kind": "folder", "name": "pool", "path": "pool"}]}
    unknown = write_spec(tmp_path / "unknown.yaml", {**base, "stages": {"embed": {"model": "clip:ViT-B-32"}}})
    code, report = check(unknown)
    assert code == 1 and "unknown embedder 'clip:ViT-B-32'" in report["errors"][0]
    tag = write_spec(
        tmp_path / "tag.yaml",
        {**base, "stages": {"embed": {"model": "open_clip:ViT-B-32", "pretrained": "laion2b_s34b_b79k"}}},
    )
    code, report = check(tag)
    assert code == 0 and any("downloads its weights on first use" in w for w in report["warnings"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_a_missing_gpu_or_embedder_file_is_an_error_with_executor_local(tmp_path):
    """With executor local the embedder runs on this machine, which must have its GPU and files; on Ray they are
    warnings, since the actors' nodes may have them."""
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.jpg").write_bytes(image_bytes(0))
    base = {"name": "m", "sources": [{"kind": "folder", "name": "pool", "path": "pool"}]}
    embed = {"model": "bundled:missing.json", "device": "cuda"}
    for executor in ("local", "ray"):
        spec = {**base, "stages": {"embed": embed}, "execution": {"executor": executor}}
        code, report = check(write_spec(tmp_path / f"{executor}.yaml", spec))
        problems = report["errors"] if executor == "local" else report["warnings"]
        assert code == (1 if executor == "local" else 0) and len(problems) == 2, report
        assert problems[0].startswith("stages.embed.device: device cuda requested but torch sees no CUDA GPU")
        assert f"{tmp_path / 'missing.json'} is not on this machine" in problems[1]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("timm:no_such_model_xyz", "timm has no model 'no_such_model_xyz'"),
        ("open_clip:No-Such-Arch", "open_clip has no architecture"),
    ],
)
def test_an_unknown_timm_or_open_clip_architecture_is_an_error(tmp_path, model, expected):
    """Found by asking the installed library, before a run would ingest the pool and then fail."""
    (tmp_path / "pool").mkdir()
    base = {"name": "m", "sources": [{"kind": "folder", "name": "pool", "path": "pool"}]}
    code, report = check(write_spec(tmp_path / "spec.yaml", {**base, "stages": {"embed": {"model": model}}}))
    assert code == 1 and any(expected in error for error in report["errors"]), report
    known = {**base, "stages": {"embed": {"model": "timm:vit_tiny_patch16_224"}}}
    assert not check(write_spec(tmp_path / "known.yaml", known))[1]["errors"]


def test_an_invalid_spec_exits_2_naming_the_key(tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", {"name": "bad", "sources": [{"kind": "folder", "name": "p", "path": "."}],
                                             "stages": {"dedup": {"treshold": 0.5}}})  # fmt: skip
    command = [str(Path(sys.executable).parent / "curate"), "check", str(spec)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)
    assert result.returncode == 2 and "stages.dedup.treshold: unknown key" in result.stderr


def test_published_versions_a_spec_names_are_checked_in_the_home(tmp_path):
    import curation

    pool = tmp_path / "pool"
    pool.mkdir()
    for index in range(3):
        (pool / f"{index}.jpg").write_bytes(image_bytes(index))
    home = tmp_path / "home"
    curation.run({"name": "base", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
                  "execution": {"executor": "local"}}, home=home)  # fmt: skip
    spec = {
        "name": "more",
        "sources": [{"kind": "folder", "name": "pool", "path": "pool"}],
        "stages": {"embed": {"model": "builtin"}, "dedup": {"against": ["base@v1", "base@v4", "gone"]}},
    }
    path = write_spec(tmp_path / "spec.yaml", spec)  # fmt: skip
    result = CliRunner().invoke(cli, ["--home", str(home), "check", str(path), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and len(report["errors"]) == 2
    assert "base@v4 does not exist; latest is base@v1" in report["errors"][0]
    assert "no dataset named 'gone'" in report["errors"][1]
    assert any("no more in" in stage and "publishes more@v1" in stage for stage in report["stages"])
    fresh = CliRunner().invoke(cli, ["--home", str(tmp_path / "empty"), "check", str(path), "--json"])
    assert "has no catalog" in json.loads(fresh.stdout)["errors"][0] and not (tmp_path / "empty").exists()


def test_a_busy_home_is_a_warning_not_a_failure(tmp_path):
    from curation.store.catalog import Catalog

    (tmp_path / "pool").mkdir()
    home = tmp_path / "home"
    Catalog.open(home / "catalog.duckdb").close()
    spec = write_spec(
        tmp_path / "spec.yaml", {"name": "b", "sources": [{"kind": "folder", "name": "p", "path": "pool"}]}
    )
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from curation.store.catalog import Catalog; "
                               "c = Catalog.open(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(home / "catalog.duckdb")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(cli, ["--home", str(home), "check", str(spec), "--json"])
    finally:
        holder.kill()
        holder.wait()
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and any("is busy" in warning for warning in report["warnings"])
