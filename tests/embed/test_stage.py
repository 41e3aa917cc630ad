"""The embed stage in the pipeline, on Ray: every decoded image gets a vector under its model id, the cache holds
across runs and pools, a worker that dies is retried with the same result, the FAISS-facing matrix is right."""

from __future__ import annotations

import os
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest

import curation
from curation.config import EmbedStage
from curation.embed.registry import create_embedder
from curation.embed.stage import EmbedBlocks
from curation.embed.vectors import load_matrix, read_block_index
from curation.errors import StoreError
from curation.executors import RayExecutor
from curation.ingest.raw import Block
from curation.store.blobs import BlobStore
from curation.store.catalog import Catalog
from curation.store.objects import LocalStore
from tests.corpus import image_bytes


def pool_with(tmp_path: Path, name: str, seeds: list[int]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for seed in seeds:
        (folder / f"img-{seed}.jpg").write_bytes(image_bytes(seed, size=(64, 64)))
    return folder


def spec(pools: dict[str, Path], model: str = "builtin", **embed) -> dict:
    return {
        "name": "emb",
        "sources": [{"kind": "folder", "name": name, "path": str(path)} for name, path in pools.items()],
        "stages": {"embed": {"model": model, "block_size": 4, "batch_size": 3, **embed}},
        "execution": {"executor": "ray", "block_size": 4},
    }


def vectors_of(home: Path, model_id: str, image_ids: list[str]) -> np.ndarray:
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        return np.asarray(load_matrix(catalog, LocalStore(home / "vectors"), model_id, image_ids), np.float32)


def test_run_embeds_every_image_once_and_caches_by_model(ray_local, tmp_path, home):
    first_pool = pool_with(tmp_path, "a", list(range(10)))
    (first_pool / "broken.jpg").write_bytes(b"nope")
    result = curation.run(spec({"a": first_pool}), home=home)
    stats = result.stats["embed"]
    assert stats["embedded"] == 10 and stats["failed"] == 0 and stats["cached_images"] == 0
    model_id = create_embedder(EmbedStage(model="builtin")).model_id
    version = curation.open_version(result.version, home=home)
    embed_step = next(step for step in version.manifest["lineage"] if step["stage"] == "embed")
    assert embed_step["model_id"] == model_id and embed_step["dim"] == 768
    ids = sorted(version.samples()["image_id"].to_pylist())
    matrix = vectors_of(home, model_id, ids)
    assert matrix.shape == (10, 768) and np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=2e-3)
    direct, _ = create_embedder(EmbedStage(model="builtin")).embed([image_bytes(s, size=(64, 64)) for s in range(10)])
    order = [ids.index(sha256(image_bytes(s, size=(64, 64))).hexdigest()) for s in range(10)]
    assert np.allclose(matrix[order], direct, atol=2e-3)  # float16 storage

    # A second pool sharing 5 images: only the 5 new ones are embedded.
    second_pool = pool_with(tmp_path, "b", list(range(5, 15)))
    again = curation.run(spec({"a": first_pool, "b": second_pool}), home=home)
    assert again.stats["embed"]["embedded"] == 5 and again.stats["embed"]["cached_images"] == 10
    rerun = curation.run(spec({"a": first_pool, "b": second_pool}), home=home)
    assert rerun.stats["embed"]["embedded"] == 0 and rerun.unchanged

    # Another model embeds everything again, under its own id.
    other = curation.run(spec({"a": first_pool, "b": second_pool}, model="timm:vit_tiny_patch16_224"), home=home)
    assert other.stats["embed"]["embedded"] == 15 and other.stats["embed"]["dim"] == 192
    assert not other.unchanged  # same shards, different lineage: a new version
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        models = catalog.rows("SELECT model_id, count(*) AS n FROM embeddings GROUP BY model_id ORDER BY n")
    assert [row["n"] for row in models] == [15, 15]


def test_load_matrix_refuses_unknown_ids(ray_local, tmp_path, home):
    curation.run(spec({"a": pool_with(tmp_path, "a", [1, 2])}), home=home)
    model_id = create_embedder(EmbedStage(model="builtin")).model_id
    with pytest.raises(KeyError, match="no builtin"):
        vectors_of(home, model_id, ["0" * 64])


class DieOnce(EmbedBlocks):
    """An embed worker whose process dies in the middle of its first call for block 1 (as an OOM kill would)."""

    def __init__(self, stage, blobs, vectors, run_id, marker_dir: str):
        super().__init__(stage, blobs, vectors, run_id)
        self.marker_dir = Path(marker_dir)

    def __call__(self, block: Block):
        marker = self.marker_dir / f"died-{block.index}"
        if block.index == 1 and not marker.exists():
            marker.write_text("1")
            os._exit(1)
        return super().__call__(block)


def test_an_actor_killed_mid_block_is_retried_with_the_same_vectors(ray_local, tmp_path):
    blobs = BlobStore(LocalStore(tmp_path / "blobs"))
    ids = [blobs.put(image_bytes(seed)) for seed in range(9)]
    blocks = [Block(i, "embed", "embed", tuple(ids[i * 3 : i * 3 + 3])) for i in range(3)]
    stage = EmbedStage(model="builtin", batch_size=2)
    outputs = {}
    for name, worker, extra in (("clean", EmbedBlocks, ()), ("killed", DieOnce, (str(tmp_path),))):
        store = LocalStore(tmp_path / name)
        summaries = list(RayExecutor(max_retries=2).map_actors(worker, blocks, stage, blobs, store, "run", *extra,
                                                                  actors=2))  # fmt: skip
        assert sorted(s.block for s in summaries) == [0, 1, 2] and all(s.embedded == 3 for s in summaries)
        model_id = create_embedder(stage).model_id
        outputs[name] = [read_block_index(store, model_id, "run", i).to_pylist() for i in range(3)]
        outputs[name + "-npy"] = [p.read_bytes() for p in sorted((tmp_path / name).rglob("*.npy"))]
    assert (tmp_path / "died-1").exists()  # the kill really happened
    assert outputs["clean"] == outputs["killed"] and outputs["clean-npy"] == outputs["killed-npy"]


def test_a_resumed_run_whose_embedder_changed_plans_its_embedding_afresh(tmp_path, home, monkeypatch):
    """The run stopped after embedding, before committing; then its backbone was re-exported in place (another
    model id). The resume must embed for the new model, not finish the old model's plan and then miss vectors."""
    import torch

    import curation.embed.driver as driver
    from curation.embed.backbone import export_backbone

    reference = create_embedder(EmbedStage(model="timm:vit_tiny_patch16_224"))

    def export() -> Path:
        return export_backbone(reference.model, tmp_path / "tiny", family="timm", name="vit_tiny_patch16_224",
                               preprocess=reference.preprocess)  # fmt: skip

    path = export()
    pools = {"a": pool_with(tmp_path, "a", [1, 2, 3, 4, 5])}
    run_spec = {**spec(pools, model=f"bundled:{path}"), "execution": {"executor": "local", "block_size": 4}}
    curation.run(run_spec, home=home)  # these five are cached for the first model: the next plan leaves them out
    for seed in (6, 7, 8):
        (pools["a"] / f"img-{seed}.jpg").write_bytes(image_bytes(seed, size=(64, 64)))

    def stop(*args):
        raise KeyboardInterrupt("stopped between embedding and committing")

    monkeypatch.setattr(driver, "commit_blocks", stop)
    with pytest.raises(KeyboardInterrupt):
        curation.run(run_spec, home=home)
    monkeypatch.undo()
    with torch.no_grad():
        for parameter in reference.model.parameters():
            parameter.add_(0.05)
    export()
    result = curation.run(run_spec, home=home)
    assert result.resumed_blocks == 2  # the same run, resumed
    new_model = result.stats["embed"]["model_id"]
    assert new_model != create_embedder(EmbedStage(model="timm:vit_tiny_patch16_224")).model_id
    assert result.stats["embed"]["embedded"] == 8
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        assert len(catalog.embedded_ids(new_model)) == 8


def test_a_damaged_vectors_file_is_a_clear_error_and_the_next_run_embeds_its_images_again(tmp_path, home):
    pools = {"a": pool_with(tmp_path, "a", list(range(8)))}
    run_spec = {**spec(pools), "execution": {"executor": "local", "block_size": 4}}
    version = curation.open_version(curation.run(run_spec, home=home).version, home=home)
    model_id = create_embedder(EmbedStage(model="builtin")).model_id
    ids = sorted(version.samples()["image_id"].to_pylist())
    before = np.asarray(vectors_of(home, model_id, ids), np.float32)
    cached = next((home / "vectors").rglob("matrix-*.npy"))
    cached.write_bytes(cached.read_bytes()[:200])  # the gathered matrix: simply gathered again
    assert np.array_equal(vectors_of(home, model_id, ids), before)

    block = sorted((home / "vectors").rglob("*-000001.npy"))[0]  # a block of 4 of the 8 vectors
    block.write_bytes(block.read_bytes()[:300])
    next(block.parent.glob("matrix-*.npy")).unlink()
    with pytest.raises(StoreError, match=f"{block}: damaged vectors file"):
        vectors_of(home, model_id, ids)

    again = curation.run(run_spec, home=home)
    assert again.stats["embed"]["embedded"] == 4 and again.unchanged
    assert np.array_equal(vectors_of(home, model_id, ids), before)  # the same model gives the same vectors
