"""Training configs: the defaults and the bundled YAML files give schedules that finish warming up, and values
that would break a run are refused up front with the key named."""

from __future__ import annotations

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
