"""WebDataset tar source on real tar files: hostile members, sidecars, broken shards, limits, shard patterns."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from curation.config import S3Settings, WebDatasetSource
from curation.errors import SpecError
from curation.ingest.raw import SIDECAR_MAX_BYTES
from curation.ingest.tars import expand_shards, read_shard
from curation.types import Reason
from tests.corpus import image_bytes, tar_bytes, write_evil_tar

MAX_BYTES = 1 << 20


def read(shard: Path, max_bytes: int = MAX_BYTES):
    return list(read_shard(str(shard), S3Settings(), max_bytes))


def member(result, shard: Path) -> str:
    prefix = f"{shard}#"
    assert result.uri.startswith(prefix), result.uri
    return result.uri[len(prefix) :]


def fates(results, shard: Path) -> dict[str, str]:
    """{member name: 'kept' or reason} for member rows; container rows are keyed by the shard itself."""
    out = {}
    for result in results:
        name = str(shard) if result.uri == str(shard) else member(result, shard)
        assert name not in out, f"two rows for {name}"
        out[name] = "kept" if result.data is not None else str(result.reason)
    return out


def three_samples() -> list[tuple[str, bytes]]:
    return [(f"s{index}.jpg", image_bytes(30 + index)) for index in range(3)]


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


# --- the hostile tar ------------------------------------------------------------------------------------------


def test_hostile_tar_members_get_exactly_their_fates(tmp_path):
    shard = tmp_path / "shard.tar"
    expected = write_evil_tar(shard)
    results = read(shard)
    assert fates(results, shard) == expected
    for result in results:
        assert (result.data is None) == (result.reason is not None)
        if result.reason is not None:
            assert result.detail, f"{result.uri}: a reject must say why"


def test_hostile_tar_good_sample_carries_its_sidecar(tmp_path):
    shard = tmp_path / "shard.tar"
    write_evil_tar(shard)
    (good,) = [result for result in read(shard) if result.data is not None]
    assert member(good, shard) == "s0001.jpg"
    assert good.data == image_bytes(11)
    assert good.meta == {"license": "CC-BY-4.0", "caption": "noise", "attribution": "tests"}
    assert good.detail is None


def test_reading_the_hostile_tar_writes_nothing_to_disk(tmp_path, monkeypatch):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # an extraction of '../evil' would land inside tmp_path
    shard = tmp_path / "shard.tar"
    write_evil_tar(shard)
    watched = tmp_path.parent
    before = tree(watched)
    results = read(shard)
    assert len(results) == 5
    assert tree(watched) == before
    assert not [path for path in watched.rglob("*") if path.name in ("evil", "evil.jpg", "evil.png")]
    assert not Path("/abs/evil.png").exists()


def test_other_non_regular_members_are_unsafe(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, link in [("hard.jpg", tarfile.LNKTYPE, "a.jpg"), ("dev.jpg", tarfile.CHRTYPE, ""),
                                 ("fifo.png", tarfile.FIFOTYPE, "")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            archive.addfile(info)
        data = image_bytes(1)
        info = tarfile.TarInfo("a.jpg")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    shard = tmp_path / "links.tar"
    shard.write_bytes(buffer.getvalue())
    assert fates(read(shard), shard) == {
        "hard.jpg": "unsafe_tar_member",
        "dev.jpg": "unsafe_tar_member",
        "fifo.png": "unsafe_tar_member",
        "a.jpg": "kept",
    }


@pytest.mark.parametrize(
    "name", ["a/../../evil.jpg", "/etc/evil.jpg", "dir\\..\\evil.jpg"], ids=["dotdot", "absolute", "backslash"]
)
def test_traversal_names_are_rejected(tmp_path, name):
    shard = tmp_path / "t.tar"
    shard.write_bytes(tar_bytes([(name, image_bytes(1))]))
    assert fates(read(shard), shard) == {name: "path_traversal"}


# --- samples and their metadata -------------------------------------------------------------------------------


def test_txt_caption_and_json_license_attach_to_the_sample_image(tmp_path):
    shard = tmp_path / "captions.tar"
    shard.write_bytes(
        tar_bytes(
            [
                ("a.jpg", image_bytes(1)),
                ("a.txt", "a red square, ünïcode".encode()),
                ("a.json", b'{"license": "CC0"}'),
                ("a.cls", b"7"),
                ("b.png", image_bytes(2, fmt="PNG")),
                ("dir/c.jpg", image_bytes(3)),
                ("dir/c.json", b'{"caption": "nested", "attribution": {"name": "Ann"}}'),
            ]
        )
    )
    a, b, c = read(shard)
    assert (member(a, shard), member(b, shard), member(c, shard)) == ("a.jpg", "b.png", "dir/c.jpg")
    assert a.data == image_bytes(1)
    assert a.meta == {"caption": "a red square, ünïcode", "license": "CC0"}
    assert b.data == image_bytes(2, fmt="PNG") and b.meta == {}  # b's sample has no metadata of its own
    assert c.meta == {"caption": "nested", "attribution": '{"name": "Ann"}'}


def test_a_broken_sidecar_keeps_the_image_and_says_so(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes([("a.jpg", image_bytes(1)), ("a.json", b"{not json")]))
    (a,) = read(shard)
    assert a.data == image_bytes(1)
    assert a.meta == {}
    assert a.detail.startswith("sidecar ignored")


def test_an_oversized_sidecar_is_ignored(tmp_path):
    shard = tmp_path / "s.tar"
    huge = b'{"license": "CC0", "pad": "' + b"x" * SIDECAR_MAX_BYTES + b'"}'
    shard.write_bytes(tar_bytes([("a.jpg", image_bytes(1)), ("a.json", huge)]))
    (a,) = read(shard)
    assert a.data == image_bytes(1)
    assert "license" not in a.meta


def test_an_oversized_image_member_is_too_large_and_the_rest_is_read(tmp_path):
    big, small = image_bytes(1, size=(400, 400)), image_bytes(2, size=(8, 8))
    assert len(big) > 10_000 > len(small)
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes([("big.jpg", big), ("big.json", b'{"license": "CC0"}'), ("small.jpg", small)]))
    big_row, small_row = read(shard, max_bytes=10_000)
    assert member(big_row, shard) == "big.jpg"
    assert big_row.reason == Reason.TOO_LARGE and big_row.data is None
    assert str(len(big)) in big_row.detail and "10000" in big_row.detail
    assert small_row.reason is None and small_row.data == small


def test_gzipped_tar_is_read(tmp_path):
    shard = tmp_path / "shard.tar.gz"
    good = tmp_path / "shard.tar"
    write_evil_tar(good)
    shard.write_bytes(gzip.compress(good.read_bytes()))
    results = read(shard)
    assert fates(results, shard) == fates(read(good), good)  # same fates as the plain tar
    assert fates(results, shard)["s0001.jpg"] == "kept"
    (kept,) = [result for result in results if result.data is not None]
    assert kept.meta["license"] == "CC-BY-4.0"


# --- broken shards ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_a_fifo_named_like_a_shard_is_read_failed_without_blocking(tmp_path):
    shard = tmp_path / "shard-0000.tar"
    os.mkfifo(shard)
    (result,) = read(shard)
    assert result.reason == Reason.READ_FAILED and result.uri == str(shard)
    assert "not a regular file" in result.detail


def member_offsets(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getmembers()


def test_a_tar_cut_inside_the_second_member_keeps_the_first_then_one_corrupt_row(tmp_path):
    samples = three_samples()
    data = tar_bytes(samples)
    second = member_offsets(data)[1]
    shard = tmp_path / "cut.tar"
    shard.write_bytes(data[: second.offset_data + second.size // 2])
    first, broken = read(shard)
    assert member(first, shard) == "s0.jpg" and first.data == samples[0][1]
    assert broken.uri == str(shard)
    assert broken.reason == Reason.CORRUPT_CONTAINER
    assert broken.detail


@pytest.mark.parametrize("where", ["at-header", "inside-header"])
def test_a_tar_cut_at_a_member_boundary_is_not_silently_short(tmp_path, where):
    """A shard cut between members (a write interrupted at a block boundary) must not look complete."""
    samples = three_samples()
    data = tar_bytes(samples)
    second = member_offsets(data)[1]
    shard = tmp_path / "cut.tar"
    shard.write_bytes(data[: second.offset + (0 if where == "at-header" else 100)])
    results = read(shard)
    assert fates(results, shard) == {"s0.jpg": "kept", str(shard): "corrupt_container"}
    assert results[-1].uri == str(shard)


def test_a_garbage_header_midway_is_corrupt_container(tmp_path):
    samples = three_samples()
    data = bytearray(tar_bytes(samples))
    second = member_offsets(bytes(data))[1]
    data[second.offset : second.offset + 512] = b"\x5a" * 512
    shard = tmp_path / "garbled.tar"
    shard.write_bytes(bytes(data))
    assert fates(read(shard), shard) == {"s0.jpg": "kept", str(shard): "corrupt_container"}


def test_a_truncated_gzipped_tar_keeps_what_came_before(tmp_path):
    samples = [(f"s{index}.jpg", image_bytes(40 + index, size=(128, 128))) for index in range(6)]
    compressed = gzip.compress(tar_bytes(samples))
    shard = tmp_path / "cut.tar.gz"
    shard.write_bytes(compressed[: len(compressed) // 2])
    results = read(shard)
    assert results[-1].reason == Reason.CORRUPT_CONTAINER and results[-1].uri == str(shard)
    kept = results[:-1]
    assert 1 <= len(kept) < len(samples)
    assert [(member(result, shard), result.data) for result in kept] == samples[: len(kept)]


@pytest.mark.parametrize(
    "sparse",
    [
        {"GNU.sparse.map": "x,y", "GNU.sparse.offset": "0"},
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "zz", "GNU.sparse.name": "s.jpg"},
    ],
    ids=["map", "v1.0"],
)
def test_a_malformed_pax_sparse_header_is_one_corrupt_container_row(tmp_path, sparse):
    """tarfile raises ValueError (not TarError) on these numbers while it parses the header."""
    shard = tmp_path / "sparse.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data, headers in [("s0.jpg", image_bytes(1), {}), ("s1.jpg", image_bytes(2), sparse)]:
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), headers
            archive.addfile(info, io.BytesIO(data))
    results = read(shard)
    assert fates(results, shard) == {"s0.jpg": "kept", str(shard): "corrupt_container"}
    assert "ValueError" in results[-1].detail


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu-longname"])
def test_an_extended_header_bomb_is_corrupt_container_without_reading_it(tmp_path, kind):
    """64 MiB of zeros claimed by one PAX (or GNU long-name) header gzip to 64 KB; tarfile would read it whole."""
    claimed = 64 * 2**20
    shard = tmp_path / "bomb.tar.gz"
    with gzip.open(shard, "wb", compresslevel=1) as out:
        first = tar_bytes([("s0.jpg", image_bytes(1))])
        (s0,) = member_offsets(first)
        out.write(first[: s0.offset_data + -(-s0.size // 512) * 512])  # a good sample, no end-of-archive marker
        header = tarfile.TarInfo("././@LongHeader")
        header.type, header.size = kind, claimed
        out.write(header.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(claimed // 2**20):
            out.write(bytes(2**20))
        out.write(tar_bytes([("s1.jpg", image_bytes(2))]))
    tracemalloc.start()
    try:
        results = read(shard)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fates(results, shard) == {"s0.jpg": "kept", str(shard): "corrupt_container"}
    assert str(claimed) in results[-1].detail
    assert peak < 8 * 2**20, f"{peak} bytes held while reading"


@pytest.mark.parametrize(
    "content", [b"this is not a tar file at all\n" * 40, b"", bytes(range(256)) * 20, gzip.compress(b"not a tar" * 100)]
)
def test_a_non_tar_file_is_one_corrupt_container_row(tmp_path, content):
    shard = tmp_path / "junk.tar"
    shard.write_bytes(content)
    (result,) = read(shard)
    assert result.uri == str(shard)
    assert result.reason == Reason.CORRUPT_CONTAINER
    assert result.data is None and result.detail


def test_a_missing_shard_is_read_failed(tmp_path):
    shard = tmp_path / "absent.tar"
    (result,) = read(shard)
    assert result.uri == str(shard)
    assert result.reason == Reason.READ_FAILED
    assert result.detail


def test_a_complete_tar_has_no_corrupt_row(tmp_path):
    samples = three_samples()
    shard = tmp_path / "ok.tar"
    shard.write_bytes(tar_bytes(samples))
    assert [(member(result, shard), result.data) for result in read(shard)] == samples


# --- shard patterns -------------------------------------------------------------------------------------------


def wds(*urls: str) -> WebDatasetSource:
    return WebDatasetSource(kind="webdataset", name="wds", urls=urls)


@pytest.fixture
def shards(tmp_path) -> Path:
    for index in range(3):
        (tmp_path / f"shard-{index:03d}.tar").write_bytes(tar_bytes([(f"k{index}.jpg", image_bytes(index))]))
    (tmp_path / "other.tar").write_bytes(b"")
    return tmp_path


def test_brace_ranges_expand_in_order(shards):
    assert expand_shards(wds(f"{shards}/shard-{{000..002}}.tar")) == [
        f"{shards}/shard-000.tar",
        f"{shards}/shard-001.tar",
        f"{shards}/shard-002.tar",
    ]


def test_globs_expand_sorted_and_patterns_concatenate(shards):
    assert expand_shards(wds(f"{shards}/shard-*.tar", f"{shards}/other.tar")) == [
        f"{shards}/shard-000.tar",
        f"{shards}/shard-001.tar",
        f"{shards}/shard-002.tar",
        f"{shards}/other.tar",
    ]


def test_s3_uris_expand_braces_without_listing():
    assert expand_shards(wds("s3://bucket/data/shard-{0..1}.tar")) == [
        "s3://bucket/data/shard-0.tar",
        "s3://bucket/data/shard-1.tar",
    ]


@pytest.mark.parametrize("pattern", ["nothing-*.tar", "shard-{000..003}.tar", "absent.tar"])
def test_a_pattern_matching_nothing_is_a_spec_error(shards, pattern):
    with pytest.raises(SpecError, match="no tar shard matches") as error:
        expand_shards(wds(f"{shards}/{pattern}"))
    assert "'wds'" in str(error.value)
    if "{" in pattern:
        assert "shard-003.tar" in str(error.value)  # names the one that is missing
