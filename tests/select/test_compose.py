"""Composition end to end (Ray): curated, retrieved and balanced parts; every sample says which part, seed or
cluster path selected it; an image in several parts is published once with all its reasons."""

from __future__ import annotations

import json
import shutil

import curation
from tests.conftest import FIXTURE_IMAGES

CLASSES = sorted(path.name for path in (FIXTURE_IMAGES / "fashion-mnist").iterdir())


def test_compose_publishes_parts_with_reasons(ray_local, tmp_path, home):
    curated, pool = tmp_path / "curated", tmp_path / "pool"
    curated.mkdir()
    pool.mkdir()
    zipf = [11, 10, 8, 6, 5, 4, 3, 2, 2, 2]  # a long tail over the ten classes in the pool
    for label, count in zip(CLASSES, zipf):
        files = sorted((FIXTURE_IMAGES / "fashion-mnist" / label).glob("*.png"))
        shutil.copyfile(files[-1], curated / f"{label}.png")  # one curated seed image per class
        for path in files[:count]:
            shutil.copyfile(path, pool / f"{label}-{path.name}")
    spec = {
        "name": "mix",
        "sources": [{"kind": "folder", "name": "curated", "path": str(curated)},
                    {"kind": "folder", "name": "pool", "path": str(pool)}],
        "stages": {
            "decode": {"min_side": 16},
            "embed": {"model": "builtin"},
            "select": {"mode": "compose", "seed": 7, "parts": [
                {"kind": "source", "name": "curated", "sources": ["curated"]},
                {"kind": "retrieval", "name": "retrieved", "seeds": ["curated"], "k": 2},
                {"kind": "balanced", "name": "balanced", "target": 20,
                 "levels": [{"clusters": 12, "resampling_steps": 2, "sample_size": 3}, {"clusters": 4}]},
            ]},
        },
        "execution": {"executor": "ray"},
    }  # fmt: skip
    result = curation.run(spec, home=home)
    version = curation.open_version(result.version, home=home)
    samples = version.samples().to_pylist()
    by_part = {}
    for sample in samples:
        reasons = json.loads(sample["selection"])
        assert sample["part"] == reasons[0]["part"] and sample["parts"] == list(
            dict.fromkeys(r["part"] for r in reasons)
        )
        for reason in reasons:
            by_part.setdefault(reason["part"], []).append(sample)
            if reason["part"] == "retrieved":
                assert reason["rank"] in (1, 2) and "seed_image" in reason and -1 <= reason["similarity"] <= 1
                assert reason["seed_dataset"] == "curated"
            if reason["part"] == "balanced":
                assert len(reason["cluster_path"]) == 2 and reason["rule"] == "balanced-random"
    assert len(by_part["curated"]) == 10 and all(s["sources"] == ["curated"] for s in by_part["curated"])
    assert 0 < len(by_part["retrieved"]) <= 20 and len(by_part["balanced"]) == 20
    assert len({s["image_id"] for s in samples}) == len(samples)  # published once, whatever the parts
    assert any(len(s["parts"]) > 1 for s in samples)  # some pool images were both retrieved and balanced
    not_selected = [row for row in version.provenance().to_pylist() if row["reason"] == "not_selected"]
    assert len(not_selected) + len(samples) == 10 + sum(zipf)
    assert result.stats["select"]["selected"] == len(samples)

    report = json.loads(version.root.get("reports/selection.json"))
    assert report["samples_by_part"] == {part: sum(s["part"] == part for s in samples) for part in by_part}
    balanced = report["parts"]["balanced"]
    assert sum(balanced["selected_per_top_cluster"]) == 20 and sum(balanced["images_per_top_cluster_before"]) == 53
    assert sum(report["parts"]["retrieved"]["similarity_counts"]) == report["parts"]["retrieved"]["pulls"]
    plots = [item["path"] for item in version.manifest["files"] if item["kind"] == "report"]
    assert "reports/balanced-clusters-after.png" in plots and version.verify() == []
    from PIL import Image

    assert Image.open(version.root.open("reports/balanced-clusters-before.png")).size == (640, 240)
    from click.testing import CliRunner

    from curation.cli import cli

    shown = CliRunner().invoke(cli, ["--home", str(home), "show", result.version]).output
    assert "samples by part: " in shown and "balanced: 4 top clusters" in shown

    # Same spec, same seed: the same selection; with its k-means on two Ray actors, the same samples too.
    again = curation.run(spec, home=tmp_path / "again")
    assert curation.open_version(again.version, home=tmp_path / "again").manifest["content_sha256"] == \
        version.manifest["content_sha256"]  # fmt: skip
    spec["stages"]["select"]["shards"] = 2
    sharded = curation.run(spec, home=tmp_path / "sharded")
    assert sharded.stats["select"]["shards"] == {"actors": 2, "nodes": 1} and "shards" not in result.stats["select"]

    def rounded(rows):  # retrieval: FAISS in process, a torch scan on the actors; cosines agree to ~1e-6
        return [{**row, "selection": [{**r, "similarity": round(r.get("similarity", 0), 4)}
                                      for r in json.loads(row["selection"])]} for row in rows]  # fmt: skip

    assert rounded(curation.open_version(sharded.version, home=tmp_path / "sharded").samples().to_pylist()) == \
        rounded(samples)  # fmt: skip


def test_shards_start_only_for_parts_that_use_vectors(ray_local, home):
    """A composition of curated sources alone runs no k-means: no shard actors are started for it."""
    clip_art = {"kind": "folder", "name": "clip", "path": str(FIXTURE_IMAGES / "openclipart")}
    spec = {"name": "curated-only", "sources": [clip_art],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"},
                       "select": {"mode": "compose", "shards": 2,
                                  "parts": [{"kind": "source", "name": "clip", "sources": ["clip"]}]}},
            "execution": {"executor": "ray"}}  # fmt: skip
    result = curation.run(spec, home=home)
    assert result.stats["select"]["selected"] > 0 and "shards" not in result.stats["select"]


def test_show_says_a_balanced_part_had_an_empty_pool(tmp_path, home):
    """Every source is a curated part's: the balanced part has nothing to balance; `curate show` says so."""
    from click.testing import CliRunner

    from curation.cli import cli

    spec = {"name": "emptypool", "sources": [{"kind": "folder", "name": "clip",
                                              "path": str(FIXTURE_IMAGES / "openclipart")}],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"},
                       "select": {"mode": "compose", "parts": [
                           {"kind": "source", "name": "curated", "sources": ["clip"]},
                           {"kind": "balanced", "name": "bal", "target": 10,
                            "levels": [{"clusters": 4}, {"clusters": 2}]}]}},
            "execution": {"executor": "local"}}  # fmt: skip
    version = curation.run(spec, home=home).version
    shown = CliRunner().invoke(cli, ["--home", str(home), "show", version])
    assert shown.exit_code == 0, shown.output
    assert "bal: 0 top clusters (its pool was empty)" in shown.output
