"""stages.filter: the embedder's text tower drops images near unwanted prompts and images their own caption does
not describe, checked against open_clip itself (random-init weights: the test checks the rule, not meaning)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import curation
from curation.embed.vectors import load_matrix
from curation.errors import SpecError
from curation.store.catalog import Catalog
from curation.store.home import Home
from tests.conftest import FIXTURE_IMAGES

CAPTIONS = ["a drawing of an animal", "a red apple", "a map of a country", "an electronic circuit",
            "a portrait", "a musical instrument", "a tree in winter", "a car"]  # fmt: skip


def text_vectors(texts: list[str]) -> np.ndarray:
    import open_clip
    import torch

    torch.manual_seed(0)  # the embedder's own random init
    model = open_clip.create_model("ViT-S-16").eval()
    with torch.inference_mode():
        return torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("ViT-S-16")(texts))).numpy()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """8 clip-art images with a caption each, embedded once with open_clip:ViT-S-16 (random init)."""
    root = tmp_path_factory.mktemp("text-filter")
    pool = root / "pool"
    pool.mkdir()
    for path, caption in zip(sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:8], CAPTIONS):
        shutil.copyfile(path, pool / path.name)
        (pool / path.with_suffix(".json").name).write_text(json.dumps({"caption": caption}))
    spec = {
        "name": "clip",
        "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
        "stages": {"embed": {"model": "open_clip:ViT-S-16", "device": "cpu"}},
        "execution": {"executor": "local"},
    }
    result = curation.run(spec, home=root / "home")  # fmt: skip
    version = curation.open_version(result.version, home=root / "home")
    samples = version.samples().to_pylist()
    model_id = next(step["model_id"] for step in version.manifest["lineage"] if step["stage"] == "embed")
    ids = [sample["image_id"] for sample in samples]
    with Catalog.open(root / "home" / "catalog.duckdb", read_only=True) as catalog:
        vectors = np.asarray(load_matrix(catalog, Home(root / "home").vectors, model_id, ids), np.float32)
    return root, spec, {sample["image_id"]: sample["caption"] for sample in samples}, ids, vectors


def run_with(root, spec, name, rules) -> dict[str, tuple[str, str]]:
    result = curation.run({**spec, "name": name, "stages": {**spec["stages"], "filter": rules}}, home=root / "home")
    provenance = curation.open_version(result.version, home=root / "home").provenance().to_pylist()
    assert result.stats["filter"]["images"] == 8 and result.stats["embed"]["embedded"] == 0  # vectors reused
    return {row["image_id"]: (row["reason"], row["detail"]) for row in provenance}


def test_a_prompt_rule_drops_exactly_the_images_near_it(embedded):
    root, spec, _captions, ids, vectors = embedded
    scores = vectors @ text_vectors(["a screenshot of text"])[0]
    limit = float(np.sort(scores)[4])  # the four highest scores reach it
    fates = run_with(root, spec, "noprompt", {"prompts": [{"text": "a screenshot of text", "max_similarity": limit}]})
    dropped = {image_id for image_id, (reason, _) in fates.items() if reason == "prompt_match"}
    assert dropped == {ids[i] for i in np.flatnonzero(scores >= limit)} and len(dropped) == 4
    assert all("'a screenshot of text'" in fates[image_id][1] for image_id in dropped)


def test_a_caption_rule_drops_images_their_caption_does_not_describe(embedded):
    root, spec, captions, ids, vectors = embedded
    own = np.einsum("ij,ij->i", vectors, text_vectors([captions[image_id] for image_id in ids]))
    floor = float(np.sort(own)[3])  # the three lowest fall below it
    fates = run_with(root, spec, "captioned", {"min_caption_similarity": floor})
    dropped = {image_id for image_id, (reason, _) in fates.items() if reason == "caption_mismatch"}
    assert dropped == {ids[i] for i in np.flatnonzero(own < floor)} and len(dropped) == 3


def test_the_filter_needs_a_text_tower_and_a_rule(tmp_path):
    base = {"name": "f", "sources": [{"kind": "folder", "name": "p", "path": str(tmp_path)}]}
    with pytest.raises(SpecError, match="stages.filter needs a text tower"):
        curation.run({**base, "stages": {"embed": {"model": "builtin"}, "filter": {"min_caption_similarity": 0.3}}},
                     home=tmp_path / "home")  # fmt: skip
    with pytest.raises(SpecError, match="give prompts, min_caption_similarity or both"):
        curation.run({**base, "stages": {"embed": {"model": "open_clip:ViT-S-16"}, "filter": {}}},
                     home=tmp_path / "home")  # fmt: skip
