"""Deterministic WebDataset shards: same samples in -> byte-identical tars and Parquet indexes out.

Samples go in image-id order; every tar header field that could vary between machines or runs (mtime, owner,
permissions) is fixed; per-sample JSON is written with sorted keys. Keys are the image ids (hex, no dots), so
`webdataset` groups `<key>.jpg` and `<key>.json` into one sample.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.progress import Progress
from curation.store.blobs import BlobStore

EXTENSION_BY_FORMAT = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
}

PROVENANCE_TYPE = pa.struct(
    [
        ("source", pa.string()),
        ("uri", pa.string()),
        ("redirected_to", pa.string()),  # a URL's final URL when it redirected
        ("license", pa.string()),
        ("attribution", pa.string()),
        ("caption", pa.string()),
    ]
)
SAMPLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("image_id", pa.string()),
        ("shard", pa.string()),
        ("member", pa.string()),  # the image's member name inside the tar
        ("part", pa.string()),  # composition part (the trainer draws homogeneous batches from one part)
        ("parts", pa.list_(pa.string())),  # every part that selected it, in priority order
        ("selection", pa.string()),  # JSON list of the reasons: part, rule, seed image/rank/similarity, cluster path
        ("sha256", pa.string()),  # of the published image bytes: the image id unless publish.image changed them
        ("transform", pa.string()),  # JSON of the publish.image settings that made them; null: the original
        ("format", pa.string()),  # format, size, bytes and mode are the published file's
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("mode", pa.string()),
        ("frames", pa.int32()),
        ("license", pa.string()),  # the first licence among its provenance rows (sorted by source, uri)
        ("attribution", pa.string()),
        ("caption", pa.string()),
        ("sources", pa.list_(pa.string())),
        ("provenance", pa.list_(PROVENANCE_TYPE)),
    ]
)


@dataclass(frozen=True)
class ShardFile:
    tar: str  # path relative to the version root
    index: str
    samples: int


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def sample_json(sample: dict[str, Any]) -> bytes:
    return json.dumps(sample, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def write_shards(
    samples: list[dict[str, Any]], blobs: BlobStore, root: Path, *, max_samples: int, max_bytes: int, progress: Progress
) -> list[ShardFile]:
    """Write `samples` (sorted by image id, rows of SAMPLE_SCHEMA without shard/member) into root/shards/."""
    (root / "shards").mkdir(parents=True, exist_ok=True)
    written: list[ShardFile] = []
    batch: list[dict[str, Any]] = []
    batch_bytes = 0
    bar = progress.bar("publish", total=len(samples), unit="img")

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch:
            written.append(_write_one(batch, blobs, root, len(written)))
            bar.update(len(batch), shards=len(written))
        batch, batch_bytes = [], 0

    with bar:
        for sample in samples:
            if batch and (len(batch) >= max_samples or batch_bytes + sample["bytes"] > max_bytes):
                flush()
            batch.append(sample)
            batch_bytes += sample["bytes"]
        flush()
    return written


def _write_one(batch: list[dict[str, Any]], blobs: BlobStore, root: Path, number: int) -> ShardFile:
    tar_name = f"shards/shard-{number:06d}.tar"
    index_name = f"shards/shard-{number:06d}.parquet"
    rows = []
    with tarfile.open(root / tar_name, "w", format=tarfile.USTAR_FORMAT) as archive:
        for sample in batch:
            member = f"{sample['key']}.{EXTENSION_BY_FORMAT[sample['format']]}"
            row = {**sample, "shard": tar_name, "member": member}
            archive.addfile(*_member(member, blobs.get_verified(sample["sha256"])))
            archive.addfile(*_member(f"{sample['key']}.json", sample_json(row)))
            rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), root / index_name)
    return ShardFile(tar_name, index_name, len(rows))
