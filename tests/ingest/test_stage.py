"""The ingest stage on real folders and tars: every input gets exactly one storable row, whatever its name or
metadata holds."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from curation.config import parse_spec
from curation.ingest import folder, plan_blocks
from curation.ingest.exclusions import NO_EXCLUSIONS, Exclusions
from curation.ingest.stage import block_output_key, ingest_block
from curation.store.blobs import BlobStore
from curation.store.objects import LocalStore
from tests.corpus import image_bytes


def ingest(tmp_path: Path, sources: list[dict], exclusions: Exclusions = NO_EXCLUSIONS, **decode) -> list[dict]:
    """The rows every planned block writes, in plan order."""
    spec = parse_spec({"name": "t", "sources": sources, "stages": {"decode": {"min_side": 16, **decode}}})
    work, blobs = LocalStore(tmp_path / "work"), BlobStore(LocalStore(tmp_path / "blobs"))
    rows = []
    for block in plan_blocks(spec):
        ingest_block(block, spec, blobs, work, "run", exclusions)
        rows += pq.read_table(io.BytesIO(work.get(block_output_key("run", block.index)))).to_pylist()
    return rows


def test_a_file_name_that_is_not_utf8_is_kept_under_an_escaped_uri(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "good.png").write_bytes(image_bytes(1, fmt="PNG"))
    (root / "café.png").write_bytes(image_bytes(2, fmt="PNG"))
    with open(os.path.join(os.fsencode(root), b"bad-\xff.png"), "wb") as handle:
        handle.write(image_bytes(3, fmt="PNG"))
    rows = ingest(tmp_path, [{"kind": "folder", "name": "f", "path": str(root)}])
    assert {row["uri"]: row["status"] for row in rows} == {
        f"{root}/bad-\\xff.png": "kept",
        f"{root}/café.png": "kept",  # a valid name is recorded as it is
        f"{root}/good.png": "kept",
    }


def test_an_opt_out_names_the_escaped_uri(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    with open(os.path.join(os.fsencode(root), b"bad-\xff.png"), "wb") as handle:
        handle.write(image_bytes(3, fmt="PNG"))
    exclusions = Exclusions(urls=(("opt-1", f"{root}/bad-\\xff.png"),))
    (row,) = ingest(tmp_path, [{"kind": "folder", "name": "f", "path": str(root)}], exclusions)
    assert (row["reason"], row["detail"]) == ("opted_out", "opt-1")


def test_tar_member_names_and_sidecar_text_that_arrow_cannot_store_are_escaped(tmp_path):
    shard = tmp_path / "shard.tar"
    members = [("go\udcffd.png", image_bytes(1, fmt="PNG")), ("a.png", image_bytes(2, fmt="PNG")),
               ("a.json", rb'{"caption": "caf\ud800", "license": "CC0"}')]  # fmt: skip
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT, errors="surrogateescape") as archive:
        for name, data in members:  # the first name is stored as the bytes b"go\xffd.png"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    rows = ingest(tmp_path, [{"kind": "webdataset", "name": "t", "urls": [str(shard)]}])
    by_member = {row["uri"].split("#", 1)[1]: row for row in rows}
    assert set(by_member) == {"go\\xffd.png", "a.png"}
    assert all(row["status"] == "kept" for row in rows), rows
    assert by_member["a.png"]["caption"] == "caf\ufffd" and by_member["a.png"]["license"] == "CC0"


def test_a_reader_failing_on_one_input_gives_it_a_row_and_reads_the_rest(tmp_path, monkeypatch):
    """Whatever a reader raises on one input (here a fault injected into the sidecar parser, standing for a bug
    no reader code expects), that input gets a read_failed row naming the error and the rest are read."""
    root = tmp_path / "images"
    root.mkdir()
    for seed, name in enumerate(["0.png", "1.png", "z.png"]):
        (root / name).write_bytes(image_bytes(seed, fmt="PNG"))
    (root / "1.json").write_bytes(b'{"caption": "boom"}')
    parse_sidecar = folder.parse_sidecar

    def failing_on_boom(raw: bytes):
        if b"boom" in raw:
            raise RuntimeError("injected sidecar fault")
        return parse_sidecar(raw)

    monkeypatch.setattr(folder, "parse_sidecar", failing_on_boom)
    rows = ingest(tmp_path, [{"kind": "folder", "name": "f", "path": str(root)}])
    assert [(row["uri"], row["status"], row["reason"]) for row in rows] == [
        (f"{root}/0.png", "kept", None),
        (f"{root}/1.png", "rejected", "read_failed"),
        (f"{root}/z.png", "kept", None),
    ]
    assert "RuntimeError" in rows[1]["detail"] and "injected sidecar fault" in rows[1]["detail"]


def test_an_image_whose_sidecar_name_is_too_long_is_kept_and_says_so(tmp_path):
    """A 255-byte name is a valid file, but its sidecar's name (x.json) is too long for the OS."""
    root = tmp_path / "images"
    root.mkdir()
    long_name = "a" * 251 + ".png"
    (root / long_name).write_bytes(image_bytes(0, fmt="PNG"))
    (row,) = ingest(tmp_path, [{"kind": "folder", "name": "f", "path": str(root)}])
    assert (row["uri"], row["status"]) == (f"{root}/{long_name}", "kept")
    assert row["detail"] == "sidecar ignored: File name too long"
