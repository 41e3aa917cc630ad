"""The bundled backbone format: export, validate, load; tampering and mismatches are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.config import EmbedStage
from curation.embed.backbone import export_backbone, read_backbone
from curation.embed.registry import create_embedder
from curation.embed.stage import EmbedBlocks
from curation.embed.vectors import read_block_index
from curation.errors import SpecError
from curation.ingest.raw import Block
from curation.store.blobs import BlobStore
from curation.store.objects import LocalStore
from tests.corpus import image_bytes

ARCH = "vit_tiny_patch16_224"


@pytest.fixture
def exported(tmp_path):
    reference = create_embedder(EmbedStage(model=f"timm:{ARCH}"))
    path = export_backbone(reference.model, tmp_path / "tiny", family="timm", name=ARCH,
                           preprocess=reference.preprocess)  # fmt: skip
    return reference, path


def test_export_then_load_gives_the_same_vectors(exported):
    reference, path = exported
    description, weights = read_backbone(path)
    assert description["format"] == "curation-backbone/1" and weights.suffix == ".safetensors"
    bundled = create_embedder(EmbedStage(model=f"bundled:{path}"))
    images = [image_bytes(1, size=(256, 256)), image_bytes(2)]
    assert np.allclose(bundled.embed(images)[0], reference.embed(images)[0], atol=1e-5)
    assert bundled.model_id.startswith(f"bundled:{ARCH}@w{description['weights_sha256'][:16]}")


def test_architecture_settings_are_part_of_the_model_id(exported, tmp_path):
    """The same weights load into a model with other settings (here the pooling) and give other vectors: its
    cached vectors must not be reused for them."""
    reference, path = exported
    averaging = {"global_pool": "avg", "fc_norm": False}  # the same parameters, another pooling
    pooled = export_backbone(reference.model, tmp_path / "avg", family="timm", name=ARCH,
                             preprocess=reference.preprocess, kwargs=averaging)  # fmt: skip
    token, averaged = (create_embedder(EmbedStage(model=f"bundled:{p}")) for p in (path, pooled))
    assert read_backbone(path)[0]["weights_sha256"] == read_backbone(pooled)[0]["weights_sha256"]
    images = [image_bytes(1, size=(256, 256))]
    assert not np.allclose(token.embed(images)[0], averaged.embed(images)[0], atol=1e-3)
    assert token.model_id != averaged.model_id


def test_tampered_weights_are_refused(exported):
    _reference, path = exported
    weights = path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SpecError, match="SHA-256 differs"):
        create_embedder(EmbedStage(model=f"bundled:{path}"))


def test_bad_descriptions_are_refused(exported, tmp_path):
    _reference, path = exported
    with pytest.raises(SpecError, match="not found"):
        create_embedder(EmbedStage(model=f"bundled:{tmp_path / 'missing.json'}"))
    description = json.loads(path.read_text())
    path.write_text(json.dumps({**description, "format": "other/9"}))
    with pytest.raises(SpecError, match="not a curation-backbone/1 description"):
        read_backbone(path)
    path.write_text(json.dumps({**description, "preprocess": {**description["preprocess"], "crop": 192}}))
    with pytest.raises(SpecError, match="differs from the architecture"):
        create_embedder(EmbedStage(model=f"bundled:{path}"))
    path.write_text(json.dumps({**description, "arch": {**description["arch"], "family": "mystery"}}))
    with pytest.raises(SpecError, match="unknown backbone family"):
        create_embedder(EmbedStage(model=f"bundled:{path}"))


def test_a_model_that_outputs_nan_fails_its_images_instead_of_storing_nan(exported, tmp_path):
    reference, _ = exported
    for parameter in reference.model.parameters():
        parameter.data.fill_(float("nan"))
        break
    broken = export_backbone(reference.model, tmp_path / "nan", family="timm", name=ARCH,
                             preprocess=reference.preprocess)  # fmt: skip
    stage = EmbedStage(model=f"bundled:{broken}", batch_size=2)
    blobs, vectors = BlobStore(LocalStore(tmp_path / "blobs")), LocalStore(tmp_path / "vectors")
    ids = [blobs.put(image_bytes(seed)) for seed in range(3)]
    summary = EmbedBlocks(stage, blobs, vectors, "run-1")(Block(0, "embed", "embed", tuple(ids)))
    model_id = create_embedder(stage).model_id
    index = read_block_index(vectors, model_id, "run-1", 0).to_pylist()
    assert summary.embedded == 0 and all(row["row"] == -1 for row in index)
    assert {row["error"] for row in index} == {"the model gave a non-finite or zero vector"}
