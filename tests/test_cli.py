"""The `curate` command line: run, runs, versions, show, verify, diff, rejects; --json everywhere; exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from curation.cli import cli
from tests.conftest import write_spec
from tests.corpus import image_bytes


def curate(home: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    command = [str(Path(sys.executable).parent / "curate"), "--home", str(home), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"})  # fmt: skip


@pytest.fixture
def two_versions(ray_local, tmp_path):
    """demo@v1 from 4 images (one broken), then demo@v2 with one image added and one removed."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for index in range(3):
        (pool / f"img{index}.jpg").write_bytes(image_bytes(index))
    (pool / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    spec_path = write_spec(tmp_path / "spec.yaml", {"name": "demo", "sources": [{"kind": "folder", "name": "pool",
                                                                              "path": str(pool)}]})  # fmt: skip
    home = tmp_path / "home"
    runner = CliRunner()
    first = runner.invoke(cli, ["--home", str(home), "run", str(spec_path), "--json"])
    assert first.exit_code == 0, first.output
    (pool / "img0.jpg").unlink()
    (pool / "img9.jpg").write_bytes(image_bytes(9))
    second = runner.invoke(cli, ["--home", str(home), "run", str(spec_path), "--json"])
    assert second.exit_code == 0, second.output
    return home, pool, json.loads(first.output), json.loads(second.output)


def invoke_json(home: Path, *args: str):
    result = CliRunner().invoke(cli, ["--home", str(home), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_run_json_reports_versions_and_stats(two_versions):
    _home, _pool, first, second = two_versions
    assert first["version"] == "demo@v1" and second["version"] == "demo@v2"
    assert first["stats"]["ingest"]["inputs"] == 4 and first["stats"]["ingest"]["kept"] == 3
    assert first["stats"]["publish"]["samples"] == 3


def test_versions_show_diff_rejects(two_versions):
    home, pool, first, second = two_versions
    versions = invoke_json(home, "versions")
    assert [row["ref"] for row in versions] == ["demo@v1", "demo@v2"]
    assert invoke_json(home, "versions", "demo")[1]["samples"] == 3

    manifest = invoke_json(home, "show", "demo@v2")
    assert manifest["parent"]["ref"] == "demo@v1" and manifest["changes"] == {"added": 1, "removed": 1}

    diff = invoke_json(home, "diff", "demo@v1", "demo@v2")
    assert diff["added"] == [hashlib.sha256(image_bytes(9)).hexdigest()]
    assert diff["removed"] == [hashlib.sha256(image_bytes(0)).hexdigest()]

    rejects = invoke_json(home, "rejects", first["run_id"])
    assert [(row["uri"], row["reason"]) for row in rejects] == [(str(pool / "broken.jpg"), "not_an_image")]
    summary = invoke_json(home, "rejects", "latest", "--summary")
    assert sum(row["inputs"] for row in summary) == 1

    runs = invoke_json(home, "runs")
    assert [row["version"] for row in runs] == ["demo@v2", "demo@v1"]
    text = CliRunner().invoke(cli, ["--home", str(home), "show", "demo@v1"]).output
    assert "samples 3 in 1 shards" in text


def test_verify_exit_codes(two_versions):
    home, *_ = two_versions
    ok = curate(home, "verify", "demo@v1")
    assert ok.returncode == 0 and "demo@v1: OK" in ok.stdout
    shard = home / "datasets" / "demo" / "v1" / "shards" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = curate(home, "verify", "demo@v1", "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert not report["ok"] and "shard-000000.tar" in report["problems"][0]


def test_user_errors_exit_2_with_a_message_not_a_traceback(tmp_path):
    home = tmp_path / "home"
    missing = curate(home, "show", "nothing@v1")
    assert missing.returncode == 2 and "no dataset named 'nothing'" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_ref = curate(home, "verify", "Not A Ref")
    assert bad_ref.returncode == 2 and "not a version reference" in bad_ref.stderr
    bad_spec = write_spec(tmp_path / "bad.yaml", {"name": "x", "sources": [], "bogus": 1})
    result = curate(home, "run", str(bad_spec))
    assert result.returncode == 2 and "bogus: unknown key" in result.stderr and str(bad_spec) in result.stderr
    unknown_run = curate(home, "rejects", "no-such-run")
    assert unknown_run.returncode == 2 and "no run 'no-such-run'" in unknown_run.stderr


def test_unusable_paths_are_one_line_errors(tmp_path):
    """An export into a missing folder and a home that is a file: `error: ...` and exit 2, not a traceback."""
    home = tmp_path / "home"
    export = curate(home, "optout", "export", str(tmp_path / "no-dir" / "x.jsonl"))
    assert export.returncode == 2
    assert export.stderr == f"error: {tmp_path / 'no-dir' / 'x.jsonl'}: No such file or directory\n"
    (tmp_path / "a-file").write_text("")
    listing = curate(tmp_path / "a-file", "runs")
    assert listing.returncode == 2 and listing.stderr == f"error: home {tmp_path / 'a-file'} is not a folder\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_device_cuda_without_a_gpu_is_refused_before_the_run_starts(tmp_path):
    (tmp_path / "pool").mkdir()
    spec = write_spec(tmp_path / "cuda.yaml", {
        "name": "c", "sources": [{"kind": "folder", "name": "p", "path": "pool"}], "execution": {"executor": "local"},
        "stages": {"embed": {"model": "timm:vit_tiny_patch16_224", "device": "cuda"}},
    })  # fmt: skip
    run = curate(tmp_path / "home", "run", str(spec))
    assert run.returncode == 2
    assert run.stderr == "error: stages.embed.device: device cuda requested but torch sees no CUDA GPU\n"
    assert not (tmp_path / "home").exists()  # no catalog, no run record: nothing was started
