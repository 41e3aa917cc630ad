"""The trainer end to end on CPU with a tiny ViT: loss goes down, resume is exact, 2-process gloo DDP works,
checkpoints carry lineage into the audit, and the exported backbone embeds through the embed stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("single_thread_torch")

import curation  # noqa: E402
from curation.audit.queries import audit_image, audit_version  # noqa: E402
from curation.cli import cli  # noqa: E402
from curation.config import EmbedStage  # noqa: E402
from curation.core.progress import Progress  # noqa: E402
from curation.embed.registry import create_embedder  # noqa: E402
from curation.errors import TrainError  # noqa: E402
from curation.train.checkpoint import load_checkpoint  # noqa: E402
from curation.train.config import parse_train_config  # noqa: E402
from curation.train.train import train  # noqa: E402
from tests.conftest import FIXTURE_IMAGES, REPO, free_port  # noqa: E402
from tests.corpus import image_bytes  # noqa: E402

SPEC = {"name": "fixture", "sources": [{"kind": "folder", "name": "fixtures", "path": str(FIXTURE_IMAGES)}],
        "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "local"},
        "publish": {"shard_max_samples": 32}}  # fmt: skip
TINY = {
    "model": {"preset": "tiny", "patch_size": 8, "depth": 2, "drop_path": 0.1},
    "heads": {"prototypes": 64, "ibot_prototypes": 64, "hidden_dim": 64, "bottleneck_dim": 32},
    "crops": {"global_size": 32, "local_size": 16, "local_crops": 2, "load_size": 36},
    "loss": {"teacher_temp_warmup_steps": 2},
    "optim": {"batch_size": 8, "warmup_steps": 1, "lr": 0.004},
    "data": {"workers": 0, "shuffle_buffer": 32},
    "run": {"steps": 4, "checkpoint_every": 2, "log_every": 1},
}


def tiny(**sections) -> dict:
    config = json.loads(json.dumps(TINY))
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    return config


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("train-run") / "home"
    curation.run(SPEC, home=home)
    return home


def test_a_few_steps_reduce_the_loss(home, tmp_path):
    config = parse_train_config(tiny(run__steps=12, optim__schedule="constant", run__checkpoint_every=100))
    progress = Progress()
    history = train(config, home=home, dataset="fixture@v1", out_dir=tmp_path / "run", progress=progress).history
    (stage,) = progress.snapshot()["stages"]
    assert stage["name"] == "train" and stage["done"] == stage["total"] == 12 and stage["unit"] == "step"
    assert stage["loss"] == round(history[-1]["loss"], 4) and stage["img_s"] > 0
    losses = [record["loss"] for record in history]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert {"dino", "ibot", "koleo", "teacher_entropy", "feature_std"} <= set(history[-1])


def test_resume_reproduces_the_next_steps_exactly(home, tmp_path):
    """Two dataloader workers, a checkpoint at an odd step, and the Gram phase active across the resume."""
    config = parse_train_config(tiny(run__steps=5, run__checkpoint_every=3, data__workers=2, gram__enabled=True,
                                     gram__start_step=1, gram__refresh_every=2, gram__ramp_steps=1))  # fmt: skip
    straight = train(config, home=home, dataset="fixture@v1", out_dir=tmp_path / "straight").history
    first = train(config, home=home, dataset="fixture@v1", out_dir=tmp_path / "resumed", stop_after=3)
    assert first.export is None and first.checkpoint.name == "step-0000003.pt"
    second = train(config, home=home, dataset="fixture@v1", out_dir=tmp_path / "resumed")
    assert [r["step"] for r in second.history] == [3, 4]
    assert [r["loss"] for r in second.history] == [r["loss"] for r in straight[3:]]  # bit-identical
    assert "gram" in second.history[0]
    assert second.history[0]["wall_s"] > load_checkpoint(first.checkpoint)["wall_s"] > 0  # training time adds up


def test_checkpoints_carry_lineage_and_the_export_embeds(home, tmp_path):
    result = train(parse_train_config(tiny()), home=home, dataset="fixture@v1", out_dir=tmp_path / "run")
    state = load_checkpoint(result.checkpoint)
    sidecar = json.loads(result.checkpoint.with_suffix(".json").read_text())
    version = curation.open_version("fixture@v1", home=home)
    for lineage in (state["lineage"], sidecar):
        assert lineage["dataset"] == "fixture@v1" and lineage["manifest_sha256"] == version.manifest_sha256
    listed = audit_version(home, "fixture@v1")["checkpoints"]  # the home is shared with the other tests here
    assert [c["step"] for c in listed if c["path"].startswith(str(tmp_path.resolve()))] == [2, 4]
    image_id = version.samples().column("image_id")[0].as_py()
    assert str(result.checkpoint.resolve()) in {c["path"] for c in audit_image(home, image_id)["checkpoints"]}

    description = json.loads(result.export.read_text())
    assert description["arch"]["family"] == "curation-vit"
    embedder = create_embedder(EmbedStage(model=f"bundled:{result.export}"))
    vectors, errors = embedder.embed([image_bytes(1), image_bytes(2)])
    assert errors == [None, None] and vectors.shape == (2, 192)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5) and not np.allclose(vectors[0], vectors[1])

    embedded = curation.run({**SPEC, "name": "reembedded", "stages": {**SPEC["stages"], "embed": {
        "model": f"bundled:{result.export}", "block_size": 64}}}, home=home)  # fmt: skip
    manifest = curation.open_version(embedded.version, home=home).manifest
    assert any(step.get("model_id") == embedder.model_id for step in manifest["lineage"])


def test_a_non_finite_loss_stops_the_run(home, tmp_path):
    config = parse_train_config(tiny(optim__lr=1e30, optim__clip_grad=1e30, optim__warmup_steps=0))
    with pytest.raises(TrainError, match="not finite.*NaN guard"):
        train(config, home=home, dataset="fixture@v1", out_dir=tmp_path / "run")


RESUMABLE = """import sys
from curation.train.config import load_train_config
from curation.train.train import train

config, home, out = sys.argv[1:]
train(load_train_config(config), home=home, dataset="fixture@v1", out_dir=out, stop_after=2)
"""


def test_two_processes_with_gloo_resume_exactly(home, tmp_path):
    """6 steps straight (`curate train`) equal 2 + 2 + 2 steps with two resumes: the same losses and positions.
    A resumed rank once sent back its stale copy of the other rank's position, so the second resume replayed."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(run__steps=6, run__checkpoint_every=2)))
    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE)
    bin_dir = Path(sys.executable).parent
    curate = [str(bin_dir / "curate"), "--home", str(home), "train", "--dataset", "fixture@v1", "--config", str(config),
              "--out"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def torchrun(*command: str) -> None:
        launcher = [str(bin_dir / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port())]
        finished = subprocess.run([*launcher, *command], capture_output=True, text=True, timeout=240, env=env)
        assert finished.returncode == 0, finished.stderr[-3000:]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(*curate, str(straight))
    torchrun(str(script), str(config), str(home), str(resumed))
    torchrun(str(script), str(config), str(home), str(resumed))
    torchrun(*curate, str(resumed))

    def losses(out: Path) -> list[tuple[int, float]]:
        return [(record["step"], record["loss"]) for record in map(json.loads, (out / "log.jsonl").open())]

    assert [step for step, _ in losses(resumed)] == list(range(6))
    assert losses(resumed) == losses(straight)  # bit-identical
    for step in (2, 4, 6):
        name = f"checkpoints/step-{step:07d}.pt"
        state = load_checkpoint(straight / name)
        assert state["world_size"] == 2 and state["positions"] == {0: (0, step), 1: (0, step)}  # a stream per rank
        assert load_checkpoint(resumed / name)["positions"] == state["positions"]
    assert (straight / "export" / "backbone.json").is_file() and (resumed / "export" / "backbone.json").is_file()


def test_cli_train_then_eval_knn(home, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny()))
    runner = CliRunner()
    trained = runner.invoke(cli, ["--home", str(home), "train", "--dataset", "fixture@latest", "--config", str(config),
                                  "--out", str(tmp_path / "run"), "--set", "run.steps=2", "--json"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.output)
    assert result["steps"] == 2 and result["checkpoint"].endswith("step-0000002.pt")
    labelled = str(FIXTURE_IMAGES / "fashion-mnist")
    evaluated = runner.invoke(cli, ["eval-knn", result["checkpoint"], "--train", labelled, "--test", labelled,
                                    "--limit", "4", "--json"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["test_images"] == report["train_images"] == 40
    linear = runner.invoke(cli, ["eval-linear", "builtin", "--train", labelled, "--test", labelled, "--limit", "4",
                                 "--json"])  # fmt: skip
    assert linear.exit_code == 0, linear.output
    assert json.loads(linear.output)["accuracy"] == 1.0  # 40 training images in a wide feature space: separable
    bad = runner.invoke(cli, ["--home", str(home), "train", "--dataset", "fixture@v1", "--out", str(tmp_path / "x"),
                              "--set", "run.stepz=2"])  # fmt: skip
    assert bad.exit_code != 0 and "run.stepz: unknown key" in str(bad.exception or bad.output)


@pytest.mark.parametrize(("command", "option", "value"), [
    ("eval-knn", "--k", "0"), ("eval-knn", "--temperature", "0"), ("eval-knn", "--limit", "0"),
    ("eval-linear", "--weight-decay", "-1"), ("eval-linear", "--limit", "-2"),
])  # fmt: skip
def test_evaluation_options_out_of_range_are_refused(command, option, value):
    labelled = str(FIXTURE_IMAGES / "fashion-mnist")
    result = CliRunner().invoke(cli, [command, "builtin", "--train", labelled, "--test", labelled, option, value])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
