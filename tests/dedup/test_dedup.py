"""Dedup and decontamination: exact pairs/edges against brute force, transitive groups, a deterministic
representative, bounded memory, and end-to-end runs with planted copies and an evaluation set."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import curation
from curation.audit.statement import build_statement
from curation.cli import cli
from curation.config import DedupStage, PipelineSpec
from curation.core.progress import Progress
from curation.dedup.driver import phash_block
from curation.dedup.graph import cross_edges, knn_edges
from curation.dedup.groups import Edges, components, group_duplicates
from curation.dedup.perceptual import hamming, near_pairs, perceptual_edges
from curation.errors import StoreError
from curation.ingest import Block
from curation.store.blobs import BlobStore
from curation.store.objects import LocalStore
from tests.audit.test_optout_apply import transformed
from tests.conftest import FIXTURE_IMAGES
from tests.corpus import image_bytes


def test_perceptual_pairs_equal_brute_force():
    rng = random.Random(1)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    for index in range(0, 60, 3):  # planted near copies: flip 0..5 bits
        flipped = hashes[index]
        for bit in rng.sample(range(64), index % 6):
            flipped ^= 1 << bit
        hashes.append(flipped)
    hashes[7] = hashes[11] = -1  # images without a hash pair with nothing
    for distance in (0, 2, 4, 5, 6, 10):  # multi-index hashing up to 5, brute-force search past it
        i, j, d = near_pairs(hashes, distance)
        brute = {(a, b) for a in range(len(hashes)) for b in range(a + 1, len(hashes))
                 if hashes[a] >= 0 and hashes[b] >= 0 and hamming(hashes[a], hashes[b]) <= distance}  # fmt: skip
        assert list(zip(i.tolist(), j.tolist())) == sorted(brute)
        assert d.tolist() == [hamming(hashes[a], hashes[b]) for a, b in sorted(brute)]


def _components(count: int, i: np.ndarray, j: np.ndarray) -> list[int]:
    return components(count, [Edges("perceptual", i, j, np.ones(len(i)), 1.0)]).tolist()


def test_perceptual_edges_give_the_groups_of_all_pairs_with_edges_linear_in_shared_hashes():
    rng = random.Random(2)
    distinct = [rng.getrandbits(64) for _ in range(200)]
    hashes = [rng.choice(distinct) for _ in range(600)] + [distinct[0] ^ 0b111, -1]  # repeats, a near copy, none
    for distance in (0, 4, 8):
        i, j, d = perceptual_edges(hashes, distance)
        assert _components(len(hashes), i, j) == _components(len(hashes), *near_pairs(hashes, distance)[:2])
        assert all(d[n] == hamming(hashes[a], hashes[b]) <= distance for n, (a, b) in enumerate(zip(i, j)))
    popular = [12345] * 5000  # 5,000 re-encodes of one picture: 4,999 edges, not 12.5 million pairs
    i, j, d = perceptual_edges(popular, 4)
    assert len(i) == 4999 and set(_components(5000, i, j)) == {0} and not d.any()


def test_a_failing_store_read_is_not_cached_as_an_image_without_a_hash(tmp_path):
    """Only undecodable bytes mean "no perceptual hash"; a read that fails raises (Ray retries the task), so a
    passing outage cannot leave an image out of perceptual dedup for good."""
    blobs = BlobStore(LocalStore(tmp_path / "blobs"))
    good, broken = blobs.put(image_bytes(1)), blobs.put(b"not an image at all")
    assert [value is None for _, value in phash_block(Block(0, "phash", "phash", (good, broken)), blobs)] == [
        False, True]  # fmt: skip
    with pytest.raises(StoreError):
        phash_block(Block(0, "phash", "phash", (good, "f" * 64)), blobs)  # never stored: the read fails


def clustered(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count // 20, dim))
    points = centres[rng.integers(0, len(centres), count)] + 0.15 * rng.normal(size=(count, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_knn_edges_match_brute_force(index):
    vectors = clustered(2000, 32)
    settings = DedupStage(k=8, index=index, nprobe=4, batch_size=300)  # IVF: 4 of 51 cells
    i, j, s = knn_edges(vectors, 0.95, settings)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -1)
    top = np.argsort(-scores, axis=1)[:, :8]
    brute = {(min(a, b), max(a, b)) for a in range(len(vectors)) for b in top[a] if scores[a, b] >= 0.95}
    found = set(zip(i.tolist(), j.tolist()))
    assert np.all(i < j) and np.all(s >= 0.95)
    recall = len(found & brute) / len(brute)
    assert recall == 1.0 if index == "flat" else recall >= 0.95
    assert found <= {(a, b) for a, b in zip(*np.nonzero(np.triu(scores >= 0.95, 1)))}  # no false edges


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_a_threshold_of_one_finds_identical_images_stored_as_float16(index):
    originals = clustered(400, 64, seed=3)
    vectors = np.concatenate([originals, originals]).astype(np.float16)  # every image twice: 400 identical pairs
    i, j, _ = knn_edges(vectors, 1.0, DedupStage(k=4, index=index, nprobe=64))
    assert {(a, b) for a, b in zip(i.tolist(), j.tolist())} >= {(a, a + 400) for a in range(400)}
    references = originals[:50].astype(np.float16)
    hits = cross_edges(vectors, references, 1.0, DedupStage())
    assert len(hits[0]) >= 100  # each reference matches both of its copies


def test_exhaustive_ivf_join_equals_exact_search_when_rows_have_more_hits_than_k():
    """With every cell probed, the self-join must give exactly the brute-force graph, including where a row has
    far more neighbours over the threshold than k (only its k best count) and where cells are split into blocks."""
    from curation.dedup import graph

    vectors = clustered(1500, 24, seed=5)
    scores = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :6]
    assert ((scores >= 0.5).sum(axis=1) > 6).mean() > 0.5  # most rows are crowded
    brute = {(min(a, b), max(a, b)) for a in range(len(vectors)) for b in top[a] if scores[a, b] >= 0.5}
    exact = knn_edges(vectors, 0.5, DedupStage(k=6, index="flat"))
    limit, graph._BLOCK_ELEMENTS = graph._BLOCK_ELEMENTS, 1000  # force many small product blocks per cell
    progress = Progress()
    try:
        timings = {}
        joined = knn_edges(vectors, 0.5, DedupStage(k=6, index="ivf", nprobe=10_000), timings=timings,
                           progress=progress)  # fmt: skip
    finally:
        graph._BLOCK_ELEMENTS = limit
    (stage,) = progress.snapshot()["stages"]
    assert stage["name"] == "dedup graph" and stage["unit"] == "cell" and stage["done"] == stage["total"] == 38
    for i, j, s in (exact, joined):
        assert set(zip(i.tolist(), j.tolist())) == brute
        np.testing.assert_allclose(s, scores[i, j], atol=1e-5)
    assert timings["build_s"] > 0 and timings["imbalance"] >= 1


def test_gpu_search_is_chosen_only_when_the_pool_fits_the_free_memory():
    from curation.dedup.graph import gpu_has_room

    gib = 2**30
    assert gpu_has_room(1_000_000, 768, 78 * gib)  # 1.4 GiB of float16 + 4 GiB of tile and top-k
    assert not gpu_has_room(60_000_000, 768, 78 * gib)  # 86 GiB of float16 alone
    assert not gpu_has_room(1_000_000, 768, 5 * gib) and gpu_has_room(1_000, 768, 5 * gib)


def test_torch_tiled_search_gives_the_exact_graph():
    """The CUDA path (tiled matrix products + top-k), run here in float32 on the CPU with tiles of 7 rows."""
    from curation.dedup import graph

    vectors = clustered(700, 24, seed=6)
    settings = DedupStage(k=5, index="flat")
    limit, graph._TILE_ELEMENTS = graph._TILE_ELEMENTS, 7 * len(vectors)
    try:
        progress = Progress()
        parts = list(graph._torch_search(vectors, 0.6, settings.k + 1, settings, {}, progress, "g", device="cpu"))
    finally:
        graph._TILE_ELEMENTS = limit
    assert len(parts) == 100  # 700 rows / 7 per tile
    assert progress.snapshot()["stages"] == [{"name": "g", "started_at": ANY, "total": 700, "done": 700, "unit": "img",
                                              "rate": ANY, "eta_s": ANY}]  # fmt: skip
    found = graph._pairs(*(np.concatenate(column) for column in zip(*parts)), settings.k, len(vectors))
    exact = knn_edges(vectors, 0.6, settings)
    assert set(zip(found[0].tolist(), found[1].tolist())) == set(zip(exact[0].tolist(), exact[1].tolist()))
    assert len(exact[0]) > 500


def test_groups_are_transitive_and_deterministic():
    ids = [f"{n:064x}" for n in range(6)]
    pixels = [100, 400, 400, 50, 10, 10]
    chain = Edges("copy_detection", np.array([0, 1]), np.array([1, 2]), np.array([0.95, 0.92]), 0.9)  # 0~1, 1~2
    pair = Edges("perceptual", np.array([4]), np.array([5]), np.array([1.0]), 0.94)
    members = group_duplicates(ids, pixels, [chain, pair])
    assert {m.image_id: m.representative for m in members} == {ids[0]: ids[1], ids[2]: ids[1], ids[5]: ids[4]}
    # ties on pixels go to the smallest id; node 3 is in no group
    shuffled = Edges("copy_detection", np.array([1, 0]), np.array([2, 1]), np.array([0.92, 0.95]), 0.9)
    assert group_duplicates(ids, pixels, [pair, shuffled]) == members


def test_curated_images_represent_their_groups_before_bigger_ones():
    ids = [f"{n:064x}" for n in range(4)]
    pixels = [900, 100, 400, 50]
    edges = [Edges("copy_detection", np.array([0, 1, 2]), np.array([1, 2, 3]), np.array([0.95] * 3), 0.9)]
    kept = lambda *tiers: {m.representative for m in group_duplicates(ids, pixels, edges, tiers)}  # noqa: E731
    assert kept() == {ids[0]}  # the most pixels
    assert kept(frozenset({ids[1], ids[3]})) == {ids[1]}  # the first tier, then the most pixels in it
    assert kept(frozenset({ids[3]}), frozenset({ids[1]})) == {ids[3]}  # e.g. published before curated
    assert kept(frozenset(), frozenset({ids[2]}), frozenset({ids[0]})) == {ids[2]}  # an empty tier is skipped


def test_a_curated_copy_is_kept_over_a_bigger_web_original(tmp_path):
    """Composition names the curated source (a `source` part; the web is a balanced part's pool): dedup keeps the
    curated (smaller) copy and drops the web original."""
    curated, web = tmp_path / "curated", tmp_path / "web"
    curated.mkdir()
    web.mkdir()
    files = sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:6]
    for path in files:
        shutil.copyfile(path, web / path.name)
    (curated / "small-copy.jpg").write_bytes(transformed(files[0].read_bytes(), 0.6, 90))
    spec = {"name": "cur", "sources": [{"kind": "folder", "name": "curated", "path": str(curated)},
                                       {"kind": "folder", "name": "web", "path": str(web)}],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"}, "dedup": {"threshold": 0.9},
                       "select": {"mode": "compose", "parts": [
                           {"kind": "source", "name": "curated", "sources": ["curated"]},
                           {"kind": "balanced", "name": "web", "target": 5, "levels": [{"clusters": 2}]}]}},
            "execution": {"executor": "local"}}  # fmt: skip
    result = curation.run(spec, home=tmp_path / "home")
    version = curation.open_version(result.version, home=tmp_path / "home")
    dropped = [row for row in version.provenance().to_pylist() if row["stage"] == "dedup"]
    assert [row["uri"].rsplit("/", 1)[1] for row in dropped] == [files[0].name]
    kept = {s["provenance"][0]["uri"].rsplit("/", 1)[1] for s in version.samples().to_pylist()}
    assert "small-copy.jpg" in kept and files[0].name not in kept and len(kept) == 6


def test_memory_stays_bounded_on_a_pool_no_dense_matrix_could_hold(tmp_path):
    """200k vectors under a 6 GiB address-space cap (torch and faiss reserve ~3 GiB of it at import): a dense
    200k x 200k float32 matrix would need 160 GB."""
    script = (
        "import resource, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
        "from curation.config import DedupStage\n"
        "from curation.dedup.graph import knn_edges\n"
        "from tests.dedup.test_dedup import clustered\n"
        "v = clustered(200_000, 16, seed=3)\n"
        "v[1] = v[0]\n"
        "i, j, s = knn_edges(v, 0.999, DedupStage(k=4, index='auto', ivf_min_size=100_000, nprobe=4))\n"
        "assert (0, 1) in set(zip(i.tolist(), j.tolist())), 'the planted copy was missed'\n"
        "print('edges', len(i))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("edges")


@pytest.fixture
def planted(tmp_path):
    """20 real clip-art images; resized/re-encoded copies of 3 of them; an evaluation set holding a copy of one."""
    pool, evaluation = tmp_path / "pool", tmp_path / "eval"
    pool.mkdir()
    evaluation.mkdir()
    files = sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:20]
    for path in files:
        shutil.copyfile(path, pool / path.name)
    for n, path in enumerate(files[:3]):
        (pool / f"copy-{n}.jpg").write_bytes(transformed(path.read_bytes(), 0.7, 70))
    (pool / "copy-of-10.jpg").write_bytes(transformed(files[10].read_bytes(), 0.85, 85))  # joins 10's group
    (evaluation / "test-image.jpg").write_bytes(transformed(files[10].read_bytes(), 0.8, 80))
    return {"pool": pool, "evaluation": evaluation, "files": files}


def dedup_spec(planted: dict, **stages) -> dict:
    return {
        "name": "dd",
        "sources": [{"kind": "folder", "name": "pool", "path": str(planted["pool"])}],
        "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"}, "dedup": {"threshold": 0.9}, **stages},
        "execution": {"executor": "ray", "block_size": 8},
    }


def test_planted_copies_leave_one_per_group_with_reasons(ray_local, planted, home):
    result = curation.run(dedup_spec(planted), home=home)
    version = curation.open_version(result.version, home=home)
    kept_uris = {s["provenance"][0]["uri"].rsplit("/", 1)[1] for s in version.samples().to_pylist()}
    assert kept_uris == {path.name for path in planted["files"]}  # every original kept, no distinct image merged
    dropped = {row["uri"].rsplit("/", 1)[1]: row for row in version.provenance().to_pylist() if row["stage"] == "dedup"}
    assert set(dropped) == {"copy-0.jpg", "copy-1.jpg", "copy-2.jpg", "copy-of-10.jpg"}
    for row in dropped.values():
        detail = json.loads(row["detail"])
        assert row["reason"] in ("near_duplicate", "perceptual_duplicate")
        assert detail["kept"] == detail["group"] and detail["similarity"] >= detail["threshold"]
    assert sum(version.manifest["dropped"]["dedup"].values()) == 4
    assert result.stats["dedup"]["copy_edges"] >= 1 and result.stats["dedup"]["copy_graph_search_s"] >= 0
    assert result.stats["dedup"]["largest_group"] == 2 and "warning" not in result.stats["dedup"]

    listing = CliRunner().invoke(cli, ["--home", str(home), "dups", result.run_id, "--json"])
    groups = {(row["group_id"], row["uri"].rsplit("/", 1)[1]) for row in json.loads(listing.output)}
    assert len({group for group, _ in groups}) == 4 and {uri for _, uri in groups} == set(dropped)


def test_same_inputs_same_groups(ray_local, planted, tmp_path):
    first = curation.run(dedup_spec(planted), home=tmp_path / "h1")
    second = curation.run(dedup_spec(planted), home=tmp_path / "h2")
    runs = []
    for result, name in ((first, "h1"), (second, "h2")):
        output = CliRunner().invoke(cli, ["--home", str(tmp_path / name), "dups", result.run_id, "--json"]).output
        runs.append([(row["group_id"], row["image_id"], row["representative"]) for row in json.loads(output)])
    assert runs[0] == runs[1]
    content = [curation.open_version(r.version, home=tmp_path / h).manifest["content_sha256"]
               for r, h in ((first, "h1"), (second, "h2"))]  # fmt: skip
    assert content[0] == content[1]


def test_decontamination_drops_the_whole_component_and_nothing_else(ray_local, planted, home):
    test_set = {"kind": "folder", "name": "test-set", "path": str(planted["evaluation"])}
    spec = dedup_spec(planted, decontaminate={"sets": [test_set], "threshold": 0.8})
    spec["stages"]["dedup"] = None  # decontamination alone: the copy of image 10 must go with image 10
    version = curation.open_version(curation.run(spec, home=home).version, home=home)
    contaminated = {row["uri"].rsplit("/", 1)[1]: json.loads(row["detail"]) for row in version.provenance().to_pylist()
                    if row["reason"] == "contamination"}  # fmt: skip
    assert set(contaminated) == {planted["files"][10].name, "copy-of-10.jpg"}
    assert all(d["evaluation_uri"].endswith("test-image.jpg") for d in contaminated.values())
    assert version.samples().num_rows == 24 - 2  # 20 originals + 4 copies, minus the contaminated component
    eval_uris = [entry["uri"] for s in version.samples().to_pylist() for entry in s["provenance"]]
    assert not any("test-image" in uri for uri in eval_uris)  # evaluation images are never published
    statement = build_statement(home, version.ref)  # the data statement says so too
    assert statement["known_gaps"]["decontamination_run"] is True
    assert statement["dedup_and_decontamination"] == {"decontaminate": {"contamination": 2}}


def _unit(vector: np.ndarray) -> np.ndarray:
    centred = vector - vector.mean()
    return centred / np.linalg.norm(centred)


def _toward(start: np.ndarray, goal: np.ndarray, cosine: float) -> np.ndarray:
    """The unit vector at `cosine` to `start`, turned toward `goal` (in their plane)."""
    side = _unit(goal - (goal @ start) * start)
    return _unit(cosine * start + np.sqrt(1 - cosine**2) * side)


def _save_pattern(pattern: np.ndarray, path: Path, scale: int) -> None:
    """A grey 16x16 pattern blown up by pixel repetition: the builtin embedder sees the pattern's own direction,
    so the images' cosines are the patterns' (give or take the rounding to grey levels)."""
    grey = np.clip(128 + 40 * pattern / pattern.std(), 0, 255).round().astype(np.uint8).reshape(16, 16)
    Image.fromarray(np.repeat(np.repeat(grey, scale, 0), scale, 1)).convert("RGB").save(path)


def _crafted_run(tmp_path: Path, images: dict[str, tuple[np.ndarray, int]], evaluation: np.ndarray,
                 dedup: dict | None, **decontaminate):  # fmt: skip
    pool, test_set = tmp_path / "pool", tmp_path / "eval"
    pool.mkdir(parents=True)
    test_set.mkdir()
    for name, (pattern, scale) in images.items():
        _save_pattern(pattern, pool / name, scale)
    _save_pattern(evaluation, test_set / "E.png", 4)
    spec = {"name": "crafted", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"}, "dedup": dedup,
                       "decontaminate": {"sets": [{"kind": "folder", "name": "test", "path": str(test_set)}],
                                         "threshold": 0.45, **decontaminate}},
            "execution": {"executor": "local"}}  # fmt: skip
    home = tmp_path / "home"
    result = curation.run(spec, home=home)
    rows = curation.open_version(result.version, home=home).provenance().to_pylist()
    return result, {row["uri"].rsplit("/", 1)[1]: row for row in rows}


@pytest.mark.parametrize("bigger", ["A.png", "B.png"])
def test_a_contaminated_group_goes_whole_whichever_copy_dedup_kept(tmp_path, bigger):
    """A and B are copies (cosine 0.94); only B is near the evaluation image (0.61; A 0.29). Dedup keeps the
    bigger one; decontamination must drop both either way, the group's every member as contamination."""
    rng = np.random.default_rng(5)
    evaluation = _unit(rng.normal(size=256))
    b = _toward(evaluation, rng.normal(size=256), 0.61)
    a = _toward(b, -evaluation, 0.94)
    images = {"A.png": (a, 8 if bigger == "A.png" else 4), "B.png": (b, 8 if bigger == "B.png" else 4),
              **{f"other{n}.png": (_unit(rng.normal(size=256)), 4) for n in range(4)}}  # fmt: skip
    result, rows = _crafted_run(tmp_path / bigger, images, evaluation, {"threshold": 0.9, "perceptual": False})
    assert {name for name, row in rows.items() if row["reason"] == "contamination"} == {"A.png", "B.png"}
    assert {name for name, row in rows.items() if row["status"] == "kept"} == {f"other{n}.png" for n in range(4)}
    details = {name: json.loads(rows[name]["detail"]) for name in ("A.png", "B.png")}
    assert details["B.png"]["similarity"] > 0.45 and details["A.png"]["similarity"] is None  # A: through B
    assert details["A.png"]["group_similarity"] == details["B.png"]["similarity"]
    listing = CliRunner().invoke(cli, ["--home", str(tmp_path / bigger / "home"), "dups", result.run_id])
    assert listing.exit_code == 0, listing.output
    assert "(itself dropped later: contamination)" in listing.output  # dedup's keeper did not stay
    assert "matched evaluation image " in listing.output and "/eval/E.png" in listing.output


def test_decontamination_joins_pool_images_at_the_copy_threshold_unless_told_lower(tmp_path):
    """P2 merely resembles P1 (0.5), which matches the evaluation image: by default P2 is not a copy and stays;
    with pool_threshold at the evaluation threshold (0.45) the chain takes it too."""
    rng = np.random.default_rng(7)
    evaluation = _unit(rng.normal(size=256))
    p1 = _toward(evaluation, rng.normal(size=256), 0.7)
    p2 = _toward(p1, -evaluation, 0.5)
    images = {"P1.png": (p1, 4), "P2.png": (p2, 4)}
    _, rows = _crafted_run(tmp_path / "default", images, evaluation, None)
    assert (rows["P1.png"]["reason"], rows["P2.png"]["status"]) == ("contamination", "kept")
    result, rows = _crafted_run(tmp_path / "chained", images, evaluation, None, pool_threshold=0.45)
    assert rows["P2.png"]["reason"] == "contamination"
    assert json.loads(rows["P2.png"]["detail"])["pool_threshold"] == 0.45
    assert result.stats["decontaminate"]["largest_group"] == 2


def test_a_small_test_image_is_protected_whatever_the_pools_decode_rules(ray_local, planted, tmp_path, home):
    evaluation = tmp_path / "small-eval"
    evaluation.mkdir()
    thumbnail = Image.open(planted["files"][4]).convert("RGB").resize((40, 20))  # below the pool's min_side
    thumbnail.save(evaluation / "thumb.png")
    (evaluation / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (planted["pool"] / "thumb-upscaled.jpg").write_bytes(transformed((evaluation / "thumb.png").read_bytes(), 3.0, 90))
    spec = dedup_spec(planted, decontaminate={"sets": [{"kind": "folder", "name": "test", "path": str(evaluation)}],
                                              "threshold": 0.8})  # fmt: skip
    spec["stages"]["decode"] = {"min_side": 32}
    spec["stages"]["dedup"] = None
    result = curation.run(spec, home=home)
    version = curation.open_version(result.version, home=home)
    contaminated = {row["uri"].rsplit("/", 1)[1] for row in version.provenance().to_pylist()
                    if row["reason"] == "contamination"}  # fmt: skip
    assert "thumb-upscaled.jpg" in contaminated
    stats = result.stats["decontaminate"]
    assert (stats["evaluation_images"], stats["evaluation_unusable"]) == (1, 1)
    assert "broken.png" in stats["warning"]


def test_incremental_dedup_against_a_published_version(ray_local, planted, tmp_path, home):
    first_pool = tmp_path / "first"
    first_pool.mkdir()
    for path in planted["files"][:10]:
        shutil.copyfile(path, first_pool / path.name)
    base = dedup_spec(planted)
    base["name"] = "crawl"
    base["sources"] = [{"kind": "folder", "name": "crawl-1", "path": str(first_pool)}]
    assert curation.run(base, home=home).version == "crawl@v1"
    # The next crawl: new copies of two published images, plus ten images never seen.
    second_pool = tmp_path / "second"
    second_pool.mkdir()
    for path in planted["files"][10:]:
        shutil.copyfile(path, second_pool / path.name)
    (second_pool / "again-0.jpg").write_bytes(transformed(planted["files"][0].read_bytes(), 0.6, 75))
    (second_pool / "again-1.jpg").write_bytes(transformed(planted["files"][1].read_bytes(), 0.8, 65))
    # A published image crawled again, byte for byte, beside a bigger copy of it: the published one still wins
    shutil.copyfile(planted["files"][2], second_pool / "same-as-published.png")
    (second_pool / "bigger-copy.jpg").write_bytes(transformed(planted["files"][2].read_bytes(), 2.0, 90))
    later = dedup_spec(planted, dedup={"threshold": 0.9, "against": ["crawl@v1"]})
    later["name"] = "crawl-2"
    later["sources"] = [{"kind": "folder", "name": "crawl-2", "path": str(second_pool)}]
    result = curation.run(later, home=home)
    version = curation.open_version(result.version, home=home)
    dropped = {row["uri"].rsplit("/", 1)[1]: json.loads(row["detail"]) for row in version.provenance().to_pylist()
               if row["stage"] == "dedup"}  # fmt: skip
    assert set(dropped) == {"again-0.jpg", "again-1.jpg", "bigger-copy.jpg"}
    assert all(detail["kept_is_published"] for detail in dropped.values())
    assert version.samples().num_rows == 11  # ten new images and the published one it crawled again
    assert (result.stats["dedup"]["published_images"], result.stats["dedup"]["published_in_pool"]) == (10, 1)


def test_a_threshold_over_the_float16_limit_is_recorded_as_the_one_searched(tmp_path):
    """threshold 1.0 is searched as 0.999 (float16 vectors); provenance must say 0.999, never a threshold above
    the similarity it records."""
    pool = tmp_path / "pool"
    pool.mkdir()
    picture = Image.open(io.BytesIO(image_bytes(3, (64, 48), fmt="PNG"))).convert("RGB")
    picture.save(pool / "a.png")
    picture.save(pool / "a-again.bmp")  # the same pixels, other bytes: another image id, an identical vector
    spec = {"name": "one", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"},
                       "dedup": {"threshold": 1.0, "perceptual": False}},
            "execution": {"executor": "local"}}  # fmt: skip
    version = curation.open_version(curation.run(spec, home=tmp_path / "home").version, home=tmp_path / "home")
    (dropped,) = [json.loads(row["detail"]) for row in version.provenance().to_pylist() if row["stage"] == "dedup"]
    assert dropped["threshold"] == 0.999 and dropped["similarity"] >= dropped["threshold"]


def test_copy_detection_needs_an_embedder():
    from curation.config import parse_spec
    from curation.errors import SpecError

    with pytest.raises(SpecError, match="needs stages.embed"):
        parse_spec({"name": "x", "sources": [{"kind": "folder", "name": "a", "path": "."}], "stages": {"dedup": {}}})
    parse_spec({"name": "x", "sources": [{"kind": "folder", "name": "a", "path": "."}],
                "stages": {"dedup": {"copy_detection": False}}})  # fmt: skip


def test_a_chain_of_look_alikes_is_reported_not_silent(tmp_path):
    """120 distinct images that differ only by faint noise chain into one duplicate group: the run still does
    what the spec says, but its stats and the CLI say the group is suspect."""
    from curation.dedup.driver import chaining_warning

    assert chaining_warning(2, 20) is None and chaining_warning(150, 100_000) is None  # small, or a sliver
    assert "150 of 1000 images" in chaining_warning(150, 1000)
    pool = tmp_path / "pool"
    pool.mkdir()
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1))
    rng = np.random.default_rng(0)
    for n in range(120):
        pixels = np.clip(ramp + rng.normal(0, 2, ramp.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(pool / f"ramp-{n:03d}.png")
    spec = {"name": "chain", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"embed": {"model": "builtin"}, "dedup": {"threshold": 0.9}},
            "execution": {"executor": "local"}}  # fmt: skip
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec))
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "run", str(spec_file)])
    assert result.exit_code == 0, result.output
    assert "dedup: 119 images dropped in 1 groups (largest 120)" in result.output
    assert "WARNING dedup: the largest duplicate group holds 120 of 120 images" in result.output
    listing = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "dups", "--largest", "1", "--members", "3"])
    assert listing.exit_code == 0, listing.output
    assert "119 dropped" in listing.output and listing.output.count("  - ") == 3
    assert "... and 116 more" in listing.output


def float16_matrix(path: Path, vectors: np.ndarray) -> np.memmap:
    """The vectors as load_matrix hands them to dedup: a read-only memory-mapped float16 .npy file."""
    np.save(path, vectors.astype(np.float16))
    return np.load(path, mmap_mode="r")


def test_the_ivf_join_reads_the_float16_matrix_and_on_ray_gives_the_same_edges(ray_local, tmp_path):
    """Run as Ray tasks over blocks of cells, the self-join gives the edges of the in-process join byte for byte;
    both read the memory-mapped float16 matrix (no float32 copy) and agree with a float32 copy of its values."""
    from curation.dedup import graph
    from curation.executors.ray import RayExecutor

    matrix = float16_matrix(tmp_path / "pool.npy", clustered(3000, 24, seed=7))
    settings = DedupStage(k=8, index="ivf", nprobe=4, batch_size=500)
    in_process = knn_edges(matrix, 0.9, settings)
    progress = Progress()
    on_ray = knn_edges(matrix, 0.9, settings, progress=progress, runner=RayExecutor())
    copied = knn_edges(np.asarray(matrix, np.float32), 0.9, settings)
    assert len(in_process[0]) > 100
    assert all(np.array_equal(a, b) for a, b in zip(in_process, on_ray))
    assert np.array_equal(in_process[0], copied[0]) and np.array_equal(in_process[1], copied[1])
    (stage,) = progress.snapshot()["stages"]
    assert stage["done"] == stage["total"] == graph.ivf_cells(3000)
    with pytest.raises(TypeError, match="memory-mapped"):
        knn_edges(np.asarray(matrix, np.float32), 0.9, settings, runner=RayExecutor())

    references = np.asarray(matrix[::50], np.float32) + 0.01  # decontamination's search: pool rows vs references
    alone = graph.cross_edges(matrix, references, 0.9, settings)
    spread = graph.cross_edges(matrix, references, 0.9, settings, runner=RayExecutor())  # 6 batches, 6 tasks
    assert len(alone[0]) >= 60 and all(np.array_equal(a, b) for a, b in zip(alone, spread))


def test_cell_blocks_cover_every_cell_once_with_even_work():
    from curation.dedup.graph import _cell_ranges

    work = np.random.default_rng(0).zipf(1.5, 500).astype(np.int64)
    ranges = _cell_ranges(work, 8)
    assert ranges[0][0] == 0 and ranges[-1][1] == 500 and len(ranges) <= 8
    assert all(stop == start for (_, stop), (start, _) in zip(ranges, ranges[1:]))  # consecutive, no gaps
    even = _cell_ranges(np.ones(800, np.int64), 8)
    assert [stop - start for start, stop in even] == [100] * 8
    assert _cell_ranges(np.array([5]), 8) == [(0, 1)]


def test_a_distributed_dedup_run_drops_the_planted_copies(ray_local, planted, home):
    test_set = {"kind": "folder", "name": "test-set", "path": str(planted["evaluation"])}
    spec = dedup_spec(planted, dedup={"threshold": 0.9, "index": "ivf", "distributed": True, "perceptual": False},
                      decontaminate={"sets": [test_set], "threshold": 0.8})  # fmt: skip
    version = curation.open_version(curation.run(spec, home=home).version, home=home)
    rows = version.provenance().to_pylist()
    dropped = {row["uri"].rsplit("/", 1)[1] for row in rows if row["stage"] == "dedup"}
    assert dropped == {"copy-0.jpg", "copy-1.jpg", "copy-2.jpg"}
    contaminated = {row["uri"].rsplit("/", 1)[1] for row in rows if row["reason"] == "contamination"}
    assert contaminated == {planted["files"][10].name, "copy-of-10.jpg"}  # its dedup copy too, as contamination
    spec["execution"]["executor"] = "local"
    with pytest.raises(ValueError, match="stages.dedup.distributed"):
        PipelineSpec.model_validate(spec)
