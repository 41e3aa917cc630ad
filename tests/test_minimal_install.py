"""curation on a machine with only the trainer's needs (a lent GPU box: no Ray, boto3, FastAPI, open_clip or
imagededup): it imports, publishes with the local executor and trains, and an S3 spec there fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import FIXTURE_IMAGES, REPO

ABSENT = ("ray", "boto3", "botocore", "fastapi", "uvicorn", "starlette", "multipart", "open_clip", "imagededup")


def run_without(absent: tuple[str, ...], body: str, tmp_path) -> subprocess.CompletedProcess:
    """Run `body` in a fresh interpreter in which importing any of `absent` fails, as if not installed."""
    script = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in absent) + body
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})  # fmt: skip


def test_publishes_and_trains_without_ray_or_boto3(tmp_path):
    spec = {"name": "bare", "sources": [{"kind": "folder", "name": "fm", "path": str(FIXTURE_IMAGES)}],
            "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "local"},
            "publish": {"shard_max_samples": 32}}  # fmt: skip
    body = f"""
import json, curation
from click.testing import CliRunner
from curation.cli import cli
home = {str(tmp_path / "home")!r}
result = curation.run(json.loads({json.dumps(json.dumps(spec))}), home=home)
print("version", result.version)
out = CliRunner().invoke(cli, ["--home", home, "train", "--dataset", result.version, "--config",
                               "curation/train/configs/tiny-cpu.yaml", "--out", {str(tmp_path / "run")!r},
                               "--set", "run.steps=2", "--set", "data.workers=0", "--set", "optim.batch_size=8",
                               "--set", "optim.warmup_steps=1", "--set", "loss.teacher_temp_warmup_steps=2"])
print(out.output)
assert out.exit_code == 0, out.output
for name in {ABSENT!r}:
    assert sys.modules.get(name) is None, name
s3 = dict(json.loads({json.dumps(json.dumps(spec))}), sources=[{{"kind": "s3", "name": "b", "uri": "s3://b/p"}}])
try:
    curation.run(s3, home=home)
except Exception as error:
    print("s3 error:", type(error).__name__, error)
"""
    result = run_without(ABSENT, body, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "version bare@v1" in result.stdout
    assert (tmp_path / "run" / "export").is_dir()
    assert "s3 error: StoreError S3 needs boto3" in result.stdout and "pip install boto3" in result.stdout
