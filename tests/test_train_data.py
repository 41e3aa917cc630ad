"""The trainer's data path over a real published version: verified shards, disjoint streams, distinct images
per batch, homogeneous batches, exact positions, and clear errors for damaged or superseded versions."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("single_thread_torch")

import curation  # noqa: E402
from curation import audit  # noqa: E402
from curation.errors import TrainError  # noqa: E402
from curation.store.objects import LocalStore  # noqa: E402
from curation.train.data.shards import Sample, ShardInfo, read_shard, shard_infos  # noqa: E402
from curation.train.data.stream import BatchStream, StreamSettings, assemble_batches  # noqa: E402
from curation.train.dataset import open_training_set  # noqa: E402
from tests.conftest import FIXTURE_IMAGES, S3_KEY_ID, S3_SECRET  # noqa: E402

SPEC = {"name": "fixture", "sources": [{"kind": "folder", "name": "fixtures", "path": str(FIXTURE_IMAGES)}],
        "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "local"},
        "publish": {"shard_max_samples": 32}}  # fmt: skip


@pytest.fixture(scope="module")
def published_home(tmp_path_factory):
    """fixture@v1: the 204 fixture images in 7 shards, published without Ray (local executor)."""
    home = tmp_path_factory.mktemp("train-data") / "home"
    curation.run(SPEC, home=home)
    return home


def stream_for(home, *, batch_size=16, rank=0, world_size=1, workers=0, rotation=0, start=None, share=0.0):
    version = open_training_set(home, "fixture@v1").version
    settings = StreamSettings(batch_size, 24, seed=3, shuffle_buffer=64, homogeneous_share=share)
    return BatchStream(version.root, shard_infos(version.manifest), settings, rank=rank, world_size=world_size,
                       workers=workers, rotation=rotation, start=start)  # fmt: skip


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_batches_hold_distinct_images_even_from_a_repeating_stream():
    samples = [Sample(f"id{i % 10}", "a", b"") for i in range(200)]  # every image 20 times
    batches = list(assemble_batches(samples, np.random.default_rng(0), 8, 16, 0.0))
    assert batches and all(len({s.image_id for s in batch}) == 8 for batch in batches)


def test_homogeneous_share_draws_batches_from_one_part():
    samples = [Sample(f"id{i}", "ab"[i % 2], b"") for i in range(400)]
    homogeneous = list(assemble_batches(samples, np.random.default_rng(0), 8, 64, 1.0))
    assert all(len({s.part for s in batch}) == 1 for batch in homogeneous)
    mixed = list(assemble_batches(samples, np.random.default_rng(0), 8, 64, 0.0))
    assert sum(len({s.part for s in batch}) == 2 for batch in mixed) > len(mixed) // 2


def test_stream_yields_decoded_batches_without_repeats(published_home):
    batches = take(iter(stream_for(published_home)), 15)  # more than one pass over 204 images
    assert batches[0]["images"].shape == (16, 3, 24, 24) and batches[0]["images"].dtype == torch.uint8
    assert all(len(set(batch["image_ids"])) == 16 for batch in batches)
    assert {batch["position"][1] for batch in batches} == {0, 1}  # the stream went on into pass 1


def test_streams_split_the_version_disjointly(published_home):
    """2 ranks x 2 workers: each sample of a pass goes to exactly one stream."""
    seen = []
    for rank in range(2):
        for worker in range(2):
            stream = stream_for(published_home, rank=rank, world_size=2, workers=2, rotation=worker)
            seen += [s.image_id for s in stream.samples(0, stream.stream_id())]
    assert len(seen) == len(set(seen)) == 204


def test_every_stream_gets_a_fair_share_of_images_in_every_pass(published_home):
    """7 shards (six of 32 images, one of 12) over 4 streams: whole shards are packed by image count, so no
    stream is ever left with only the small shard (fewer images than a batch, which stopped the run)."""
    streams = [stream_for(published_home, rank=rank, world_size=2, workers=2, rotation=worker)
               for rank in range(2) for worker in range(2)]  # fmt: skip
    for pass_number in range(20):
        shares = [[s.image_id for s in stream.samples(pass_number, stream.stream_id())] for stream in streams]
        assert min(len(share) for share in shares) >= 32 and max(len(share) for share in shares) <= 64
        assert sum(len(share) for share in shares) == len({i for share in shares for i in share}) == 204
    large = stream_for(published_home, batch_size=40, rank=1, world_size=2, workers=2, rotation=1)
    assert next(iter(large))["images"].shape[0] == 40  # some share of whole shards < 40: a per-sample split


def test_a_position_resumes_the_exact_batch(published_home):
    fresh = take(iter(stream_for(published_home)), 14)
    stream, pass_number, index = fresh[9]["position"]
    resumed = next(iter(stream_for(published_home, start={stream: (pass_number, index + 1)})))
    assert resumed["image_ids"] == fresh[10]["image_ids"] and torch.equal(resumed["images"], fresh[10]["images"])


def test_damaged_shards_are_refused_with_the_shard_named(published_home, tmp_path):
    version = open_training_set(published_home, "fixture@v1").version
    shard = shard_infos(version.manifest)[0]
    with pytest.raises(TrainError, match=r"shard-000000\.tar: SHA-256 .* differs from the manifest"):
        read_shard(version.root, ShardInfo(shard.tar, "0" * 64, shard.samples))
    truncated = version.root.get(shard.tar)[:1500]
    store = LocalStore(tmp_path)
    store.put("bad.tar", truncated)
    with pytest.raises(TrainError, match=r"bad\.tar: (not a readable WebDataset tar|\d+ images and)"):
        read_shard(store, ShardInfo("bad.tar", hashlib.sha256(truncated).hexdigest(), shard.samples))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("abc.png")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    store.put("orphan.tar", buffer.getvalue())
    with pytest.raises(TrainError, match=r"1 images and 0 metadata records"):
        read_shard(store, ShardInfo("orphan.tar", hashlib.sha256(buffer.getvalue()).hexdigest(), 1))


def test_a_tampered_manifest_is_refused(tmp_path):
    home = tmp_path / "home"
    curation.run(SPEC, home=home)
    manifest = home / "datasets" / "fixture" / "v1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"fixture@v1"', '"fixture@v1" '))
    with pytest.raises(TrainError, match="differs from the catalog"):
        open_training_set(home, "fixture@v1")


def test_a_version_superseded_by_an_optout_is_refused_unless_allowed(tmp_path):
    home = tmp_path / "home"
    curation.run(SPEC, home=home)
    image_id = open_training_set(home, "fixture@v1").version.samples().column("image_id")[0].as_py()
    audit.add_optout(home, kind="sha256", value=image_id, reason="test")
    audit.apply_optouts(home, "fixture")
    with pytest.raises(TrainError, match=r"fixture@v1 is superseded by an opt-out.*Train on fixture@v2"):
        open_training_set(home, "fixture@v1")
    assert open_training_set(home, "fixture@v1", allow_superseded=True).lineage["status"] == "superseded_by_optout"
    assert open_training_set(home, "fixture@latest").lineage["dataset"] == "fixture@v2"


def test_requests_filed_after_a_version_was_checked_are_named(tmp_path, caplog):
    home = tmp_path / "home"
    curation.run(SPEC, home=home)
    assert "unapplied_optout_requests" not in open_training_set(home, "fixture@v1").lineage
    image_id = open_training_set(home, "fixture@v1").version.samples().column("image_id")[0].as_py()
    request = audit.add_optout(home, kind="sha256", value=image_id)
    with caplog.at_level("WARNING", logger="curation"):
        lineage = open_training_set(home, "fixture@v1").lineage
    assert lineage["unapplied_optout_requests"] == [request.request_id]
    assert "curate optout apply fixture" in caplog.text
    audit.apply_optouts(home, "fixture")
    assert "unapplied_optout_requests" not in open_training_set(home, "fixture@v2").lineage
    audit.add_optout(home, kind="sha256", value="0" * 64)  # covers nothing in the version
    assert "unapplied_optout_requests" in open_training_set(home, "fixture@v2").lineage
    assert audit.apply_optouts(home, "fixture").ref == "fixture@v2"  # nothing to remove: no child ...
    assert "unapplied_optout_requests" not in open_training_set(home, "fixture@v2").lineage  # ... but checked


def test_stream_reads_a_version_published_to_s3(s3_spec, bucket, tmp_path, monkeypatch):
    home = tmp_path / "home"
    curation.run({**SPEC, "publish": {"uri": f"s3://{bucket}/datasets", "shard_max_samples": 64}, "s3": s3_spec},
                 home=home)  # fmt: skip
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)  # readers take credentials from the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    version = open_training_set(home, "fixture@v1").version
    assert version.root.url("x").startswith(f"s3://{bucket}/")
    stream = BatchStream(version.root, shard_infos(version.manifest), StreamSettings(16, 24, shuffle_buffer=32))
    batch = next(iter(stream))
    assert batch["images"].shape == (16, 3, 24, 24) and len(set(batch["image_ids"])) == 16
