"""Search by example (`curate search`, `audit.search`): a version's samples ranked against an image or a sample,
by the version's own embedder and stored vectors; bad queries get clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import curation
from curation import audit
from curation.audit.queries import QueryError
from curation.cli import cli
from curation.embed.vectors import load_matrix
from curation.errors import VersionError
from curation.store.catalog import Catalog
from curation.store.home import Home
from tests.audit.test_optout_apply import transformed
from tests.conftest import FIXTURE_IMAGES
from tests.corpus import png_header_only


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """clips@v1: 30 clip-art images embedded with the builtin descriptor; plain@v1: the same, no embed stage.
    Run in-process (the local executor): the search is what is under test, not Ray."""
    root = tmp_path_factory.mktemp("similar")
    pool = root / "pool"
    pool.mkdir()
    for path in sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:30]:
        shutil.copyfile(path, pool / path.name)
    home = root / "home"
    source = [{"kind": "folder", "name": "clips", "path": str(pool), "license": "CC0"}]
    local = {"executor": "local"}
    curation.run({"name": "clips", "sources": source, "stages": {"embed": {"model": "builtin"}}, "execution": local},
                 home=home)  # fmt: skip
    curation.run({"name": "plain", "sources": source, "execution": local}, home=home)
    return home, sorted(pool.iterdir())


def stored_vectors(home, ref: str) -> tuple[list[str], np.ndarray]:
    version = curation.open_version(ref, home=home)
    ids = version.samples()["image_id"].to_pylist()
    model_id = next(step["model_id"] for step in version.manifest["lineage"] if step["stage"] == "embed")
    with Catalog.open(Home(home).catalog_path, read_only=True) as catalog:
        return ids, np.asarray(load_matrix(catalog, Home(home).vectors, model_id, ids), np.float32)


def test_a_transformed_copy_finds_its_original_first(versions):
    home, files = versions
    target = files[7]
    result = audit.search(home, "clips", image=transformed(target.read_bytes(), 0.6, 70), k=5)
    neighbours = result["neighbours"]
    assert [hit["rank"] for hit in neighbours] == [1, 2, 3, 4, 5]
    assert neighbours[0]["image_id"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert neighbours[0]["similarity"] > 0.9 and neighbours[0]["uri"] == str(target)
    assert neighbours[0]["source"] == "clips" and neighbours[0]["license"] == "CC0"
    similarities = [hit["similarity"] for hit in neighbours]
    assert similarities == sorted(similarities, reverse=True) and similarities[1] < neighbours[0]["similarity"]
    assert result["model_id"].startswith("builtin:") and result["ref"] == "clips@v1"


def test_an_exact_copy_is_itself_at_similarity_one(versions):
    from curation.audit.similar import query_embedder

    home, files = versions
    data = files[3].read_bytes()
    loads = query_embedder.cache_info().misses
    result = audit.search(home, "clips@v1", image=data, k=1)
    audit.search(home, "clips@v1", image=files[4].read_bytes(), k=1)
    assert query_embedder.cache_info().misses <= loads + 1  # the model is loaded once for many queries
    assert result["query_image_id"] == hashlib.sha256(data).hexdigest() == result["neighbours"][0]["image_id"]
    assert result["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=2e-3)  # float16 storage


def test_a_sample_query_leaves_itself_out_and_agrees_with_brute_force(versions):
    home, _files = versions
    ids, vectors = stored_vectors(home, "clips")
    query = 11
    result = audit.search(home, "clips", image_id=ids[query].upper(), k=8)  # as pasted from elsewhere
    scores = vectors @ vectors[query]
    scores[query] = -np.inf
    expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:8]]
    assert [hit["image_id"] for hit in result["neighbours"]] == expected
    assert [hit["similarity"] for hit in result["neighbours"]] == pytest.approx(np.sort(scores)[::-1][:8], abs=1e-5)
    everything = audit.search(home, "clips", image_id=ids[query], k=1000)  # more than the version holds
    assert len(everything["neighbours"]) == len(ids) - 1 and ids[query] not in {
        hit["image_id"] for hit in everything["neighbours"]
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "give exactly one"),
        ({"image": b"x", "image_id": "a" * 64}, "give exactly one"),
        ({"image_id": "f" * 64}, "is not a sample of clips@v1"),
        ({"image": b"\xff\xd8\xff not really a jpeg"}, "not a usable image"),
        ({"image": png_header_only(50_000, 50_000)}, "decompression_bomb"),
        ({"image_id": "a" * 64, "k": 0}, "k must be between 1 and 1000"),
    ],
)
def test_bad_queries_are_clear_errors(versions, query, message):
    home, _files = versions
    with pytest.raises(QueryError, match=message):
        audit.search(home, "clips", **query)


def test_versions_without_vectors_or_that_do_not_exist(versions):
    home, files = versions
    with pytest.raises(QueryError, match="published without stages.embed"):
        audit.search(home, "plain", image=files[0].read_bytes())
    with pytest.raises(VersionError):
        audit.search(home, "nothing@v1", image=files[0].read_bytes())


def test_the_cli_lists_neighbours(versions):
    home, files = versions
    runner = CliRunner()
    shown = runner.invoke(cli, ["--home", str(home), "search", "clips", "--image", str(files[5]), "-k", "3"])
    assert shown.exit_code == 0, shown.output
    assert "clips@v1: 3 nearest to" in shown.output and str(files[5]) in shown.output.splitlines()[2]
    listed = runner.invoke(cli, ["--home", str(home), "search", "clips", "--image", str(files[5]), "--json"])
    data = json.loads(listed.output)
    assert len(data["neighbours"]) == 10 and data["neighbours"][0]["uri"] == str(files[5])


@pytest.mark.parametrize("chunk", [7, 64, 65_536])
def test_the_chunked_scan_is_the_exact_top_k(monkeypatch, chunk):
    import curation.audit.similar as similar
    import curation.select.retrieval as retrieval

    monkeypatch.setattr(retrieval, "STREAM_ROWS", chunk)
    rng = np.random.default_rng(chunk)
    matrix = rng.normal(size=(500, 16)).astype(np.float32)
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float16)
    matrix[100] = matrix[200]  # a tie: the lower row comes first
    query = matrix[200].astype(np.float32)
    found = similar.nearest_rows(matrix, query, 10, exclude=200)
    scores = matrix.astype(np.float32) @ query
    scores[200] = -np.inf
    assert [row for row, _ in found] == np.lexsort((np.arange(500), -scores))[:10].tolist()
    assert found[0][0] == 100 and found[0][1] == pytest.approx(1.0, abs=1e-3)
    assert len(similar.nearest_rows(matrix[:5], query, 10)) == 5  # k beyond the rows: all of them


def test_text_search_with_a_clip_like_embedder(tmp_path):
    """open_clip's text tower ranks the samples (here random-init weights: the ranking is checked against open_clip
    itself, not against meaning); an image-only embedder refuses text clearly."""
    import open_clip
    import torch

    pool = tmp_path / "pool"
    pool.mkdir()
    for path in sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:6]:
        shutil.copyfile(path, pool / path.name)
    spec = {
        "name": "clip",
        "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
        "stages": {"embed": {"model": "open_clip:ViT-S-16", "device": "cpu"}},
        "execution": {"executor": "local"},
    }
    curation.run(spec, home=tmp_path / "home")  # fmt: skip
    result = audit.search(tmp_path / "home", "clip", text="a red apple", k=4)
    assert result["query_text"] == "a red apple" and result["query_image_id"] is None

    torch.manual_seed(0)  # the embedder's own random init
    model = open_clip.create_model("ViT-S-16").eval()
    with torch.inference_mode():
        query = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("ViT-S-16")(["a red apple"])))
    ids, vectors = stored_vectors(tmp_path / "home", "clip")
    scores = vectors @ query[0].numpy()
    assert [hit["image_id"] for hit in result["neighbours"]] == [ids[i] for i in np.argsort(-scores)[:4]]
    assert [hit["similarity"] for hit in result["neighbours"]] == pytest.approx(np.sort(scores)[::-1][:4], abs=1e-3)
    with pytest.raises(QueryError, match="the text query is empty"):
        audit.search(tmp_path / "home", "clip", text="  ")


def test_text_search_needs_a_text_tower(versions):
    home, _files = versions
    with pytest.raises(QueryError, match="has no text encoder: search it by an image"):
        audit.search(home, "clips", text="a red apple")


def test_a_query_is_refused_when_the_versions_embedder_changed_in_place(tmp_path):
    """A backbone re-exported to the same path makes other vectors: a query embedded with it would be compared
    with the version's old vectors and answered wrongly, so it is refused; a sample query still works."""
    import torch

    from curation.config import EmbedStage
    from curation.embed.backbone import export_backbone
    from curation.embed.registry import create_embedder

    reference = create_embedder(EmbedStage(model="timm:vit_tiny_patch16_224"))
    path = export_backbone(reference.model, tmp_path / "tiny", family="timm", name="vit_tiny_patch16_224",
                           preprocess=reference.preprocess)  # fmt: skip
    pool = tmp_path / "pool"
    pool.mkdir()
    files = sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:6]
    for file in files:
        shutil.copyfile(file, pool / file.name)
    home = tmp_path / "home"
    curation.run({"name": "tiny", "sources": [{"kind": "folder", "name": "p", "path": str(pool)}],
                  "stages": {"embed": {"model": f"bundled:{path}"}}, "execution": {"executor": "local"}},
                 home=home)  # fmt: skip
    query = files[2].read_bytes()
    assert audit.search(home, "tiny", image=query, k=1)["neighbours"][0]["similarity"] == pytest.approx(1, abs=2e-3)

    with torch.no_grad():
        for parameter in reference.model.parameters():
            parameter.add_(0.05)
    export_backbone(reference.model, tmp_path / "tiny", family="timm", name="vit_tiny_patch16_224",
                    preprocess=reference.preprocess)  # fmt: skip
    from curation.audit.similar import query_embedder

    assert audit.search(home, "tiny", image=query, k=1)["neighbours"]  # the model in memory is still the one
    query_embedder.cache_clear()  # as in a new process (`curate search`), which loads the file as it is now
    with pytest.raises(QueryError, match="its weights changed since"):
        audit.search(home, "tiny", image=query, k=1)
    sample = hashlib.sha256(query).hexdigest()
    assert audit.search(home, "tiny", image_id=sample, k=1)["neighbours"]  # stored vectors need no embedder
