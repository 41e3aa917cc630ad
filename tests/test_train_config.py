"""Training configs: the defaults and the bundled YAML files give schedules that finish warming up, and values
that would break a run are refused up front with the key named."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")

from curation.errors import SpecError  # noqa: E402
from curation.train.config import load_train_config, parse_train_config  # noqa: E402
from curation.train.train import Schedules  # noqa: E402
from tests.conftest import REPO  # noqa: E402

BUNDLED = sorted((REPO / "curation" / "train" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", [None, *BUNDLED], ids=lambda path: path.name if path else "defaults")
def test_schedules_reach_their_peak_lr_and_final_teacher_temperature_within_the_run(path):
    config = load_train_config(path)
    schedules, steps = Schedules.from_config(config, world_size=1), config.run.steps
    peak = config.optim.lr * config.optim.batch_size / 256
    assert max(schedules.lr(step) for step in range(steps)) == pytest.approx(peak)
    assert schedules.teacher_temp(steps - 1) == config.loss.teacher_temp


def test_warmups_as_long_as_the_run_are_refused_naming_the_keys():
    with pytest.raises(SpecError, match=r"optim\.warmup_steps \(100\) must be less than run\.steps \(100\)"):
        parse_train_config({"run": {"steps": 100}})
    with pytest.raises(SpecError, match=r"loss\.teacher_temp_warmup_steps \(300\) must not exceed run\.steps \(200\)"):
        parse_train_config({"run": {"steps": 200}})
    parse_train_config({"run": {"steps": 300}})  # a teacher temperature warm-up that ends with the run is fine


@pytest.mark.parametrize(("key", "value"), [
    ("optim.batch_size", 0), ("optim.batch_size", -1), ("run.steps", 0), ("run.checkpoint_every", 0),
    ("run.steps_per_epoch", 0), ("run.log_every", 0), ("gram.refresh_every", 0), ("data.shuffle_buffer", 0),
    ("heads.prototypes", 0), ("model.patch_size", 0), ("optim.lr", 0.0), ("optim.lr", -1e-3),
    ("loss.teacher_temp", 0.0), ("loss.student_temp", -0.1), ("loss.teacher_temp_from", 0.0),
    ("loss.mask_share", 1.5), ("loss.mask_ratio", [0.1, 1.2]), ("data.homogeneous_share", -0.1),
    ("crops.global_scale", [0.32, 1.5]), ("optim.momentum", 1.1), ("optim.betas", [0.9, 1.0]),
    ("optim.warmup_steps", -1), ("data.workers", -1), ("run.seed", -1),
])  # fmt: skip
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    with pytest.raises(SpecError, match=rf"\n  {re.escape(key)}(\.\d)?: Input should be (greater|less)"):
        load_train_config(None, {key: value})


def test_values_at_the_edges_of_their_ranges_are_accepted():
    config = load_train_config(None, {"optim.warmup_steps": 0, "loss.teacher_temp_warmup_steps": 0, "run.steps": 1,
                                      "data.workers": 0, "loss.mask_share": 1.0, "crops.local_crops": 0,
                                      "loss.koleo_weight": 0.0})  # fmt: skip
    assert config.run.steps == 1 and config.crops.local_crops == 0


def test_a_section_or_a_file_that_is_not_a_mapping_is_a_spec_error(tmp_path):
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("run: 5\n")
    with pytest.raises(SpecError, match="run must be a mapping of keys to set run.steps, got 5"):
        load_train_config(scalar, {"run.steps": 2})
    listed = tmp_path / "list.yaml"
    listed.write_text("- run\n- optim\n")
    with pytest.raises(SpecError, match="a training config must be a mapping of sections, got list"):
        load_train_config(listed, {"run.steps": 2})
    with pytest.raises(SpecError, match=r"\n  run: Input should be a valid dictionary"):
        load_train_config(scalar)
