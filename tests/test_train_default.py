"""The shipped default embedder: loads offline through the embed stage, is small, and has its data statement
and lineage beside it (the version it was trained on, by manifest SHA-256)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("single_thread_torch")

from curation.config import EmbedStage  # noqa: E402
from curation.embed.backbone import DEFAULT_BACKBONE, read_backbone  # noqa: E402
from curation.embed.registry import create_embedder  # noqa: E402
from curation.train.knn import weighted_knn  # noqa: E402
from tests.conftest import FIXTURE_IMAGES  # noqa: E402

FOLDER = DEFAULT_BACKBONE.parent


def test_default_embedder_loads_offline_and_embeds():
    description, weights = read_backbone(DEFAULT_BACKBONE)  # also checks the weights' SHA-256
    assert description["arch"]["family"] == "curation-vit" and weights.stat().st_size < 8_000_000
    embedder = create_embedder(EmbedStage(model="bundled:default"))
    paths = sorted((FIXTURE_IMAGES / "fashion-mnist").rglob("*.png"))
    vectors, errors = embedder.embed([path.read_bytes() for path in paths])
    assert not any(errors) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    labels = np.array([sorted({p.parent.name for p in paths}).index(p.parent.name) for p in paths])
    half = np.arange(len(paths)) % 2 == 0  # k-NN within the fixtures: far above chance (0.1)
    assert weighted_knn(vectors[half], labels[half], vectors[~half], labels[~half]) > 0.4


def test_default_embedder_has_its_data_statement_and_lineage():
    lineage = json.loads((FOLDER / "default-vit-tiny.lineage.json").read_text())
    stem = lineage["dataset"].replace("@", "-")
    statement = json.loads((FOLDER / f"{stem}.statement.json").read_text())
    assert (FOLDER / f"{stem}.statement.md").is_file()
    assert json.dumps(statement).count(lineage["manifest_sha256"]) >= 1
