"""README stays true: CI runs its test command verbatim, and the quickstart it names exists and is valid."""

from __future__ import annotations

import re

from curation.config import load_spec
from tests.conftest import REPO


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    quickstart, tests = readme_commands()[:2]
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()
    assert "pytest" in tests and "curate run pipelines/quickstart.yaml" in quickstart


def test_quickstart_spec_named_by_the_readme_is_valid():
    quickstart = readme_commands()[0]
    path = re.search(r"curate run (\S+)", quickstart).group(1)
    assert load_spec(REPO / path).name in quickstart
