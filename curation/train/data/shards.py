"""Reading a published version's WebDataset shards, each checked against the manifest's SHA-256 first.

A shard is read whole and hashed before one sample is used: a truncated upload or a tampered tar is a
TrainError naming the shard, never a silently shorter epoch. Samples are grouped by key the WebDataset way
(`<key>.<ext>` image + `<key>.json` metadata).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

from curation.errors import StoreError, TrainError
from curation.store.objects import ObjectStore

IMAGE_EXTENSIONS = {"jpg", "png", "gif", "webp", "bmp", "tiff"}


@dataclass(frozen=True)
class ShardInfo:
    tar: str  # key under the version root
    sha256: str
    samples: int


@dataclass(frozen=True)
class Sample:
    image_id: str
    part: str
    data: bytes


def shard_infos(manifest: dict) -> list[ShardInfo]:
    hashes = {item["path"]: item["sha256"] for item in manifest["files"]}
    return [ShardInfo(shard["tar"], hashes[shard["tar"]], shard["samples"]) for shard in manifest["shards"]]


def read_shard(root: ObjectStore, shard: ShardInfo) -> list[Sample]:
    """The shard's samples in tar order, after its bytes matched the manifest."""
    where = root.url(shard.tar)
    try:
        with root.open(shard.tar) as stream:
            data = stream.read()
    except StoreError as error:
        raise TrainError(f"{where}: cannot read shard ({error})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != shard.sha256:
        raise TrainError(f"{where}: SHA-256 {digest[:16]}... differs from the manifest's {shard.sha256[:16]}...; "
                         "the version is damaged (run `curate verify`)")  # fmt: skip
    images: dict[str, bytes] = {}
    metadata: dict[str, dict] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.rpartition(".")
                content = archive.extractfile(member).read()
                if extension == "json":
                    metadata[key] = json.loads(content)
                elif extension in IMAGE_EXTENSIONS:
                    images[key] = content
    except (tarfile.TarError, ValueError) as error:
        raise TrainError(f"{where}: not a readable WebDataset tar ({error})") from None
    if set(images) != set(metadata) or len(images) != shard.samples:
        raise TrainError(f"{where}: {len(images)} images and {len(metadata)} metadata records, manifest says "
                         f"{shard.samples} samples")  # fmt: skip
    return [Sample(metadata[key]["image_id"], metadata[key]["part"], images[key]) for key in images]
