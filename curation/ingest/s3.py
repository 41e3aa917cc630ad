"""S3 prefix source: every object under s3://bucket/prefix with an image extension; `x.json` is x's sidecar."""

from __future__ import annotations

from collections.abc import Iterator

from curation.config import S3Settings, S3Source
from curation.errors import SpecError
from curation.ingest.raw import SIDECAR_MAX_BYTES, RawInput, has_image_extension, parse_sidecar
from curation.store.s3client import make_s3_client, s3_errors, split_s3_uri
from curation.types import Reason


def list_prefix(source: S3Source, settings: S3Settings) -> list[tuple[str, str | None]]:
    """Sorted (s3:// URI, sidecar key or None) of the image objects under the prefix.

    Sidecars are found while listing, so reading costs one GET per image plus one per sidecar that exists.
    """
    bucket, prefix = split_s3_uri(source.uri)
    client = make_s3_client(settings)
    keys = set()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.update(item["Key"] for item in page.get("Contents", []))
    except s3_errors() as error:
        raise SpecError(f"source {source.name!r}: cannot list {source.uri}: {error}") from None
    items = []
    for key in sorted(keys):
        if has_image_extension(key, source.extensions):
            sidecar = key.rsplit(".", 1)[0] + ".json"
            items.append((f"s3://{bucket}/{key}", sidecar if sidecar in keys else None))
    return items


def read_objects(items: tuple[tuple[str, str | None], ...], settings: S3Settings, max_bytes: int) -> Iterator[RawInput]:
    client = make_s3_client(settings)
    for uri, sidecar in items:
        bucket, key = split_s3_uri(uri)
        try:  # one GET: its declared length decides before any byte is read, and the read stops past the limit
            response = client.get_object(Bucket=bucket, Key=key)  # (an object replaced meanwhile cannot slip by)
            with response["Body"] as body:
                declared = response["ContentLength"]
                data = body.read(max_bytes + 1) if declared <= max_bytes else b""
            if declared > max_bytes or len(data) > max_bytes:
                detail = f"{declared} bytes > max_bytes {max_bytes}" if declared > max_bytes else "more than max_bytes"
                yield RawInput(uri, reason=Reason.TOO_LARGE, detail=detail)
                continue
        except s3_errors() as error:
            yield RawInput(uri, reason=Reason.READ_FAILED, detail=str(error)[:300])
            continue
        meta, problem = _sidecar(client, bucket, sidecar) if sidecar else ({}, None)
        yield RawInput(uri, data=data, detail=problem, meta=meta)


def _sidecar(client, bucket: str, key: str) -> tuple[dict, str | None]:
    try:
        raw = client.get_object(Bucket=bucket, Key=key)["Body"].read(SIDECAR_MAX_BYTES + 1)
    except s3_errors() as error:
        return {}, f"sidecar ignored: {error}"
    return parse_sidecar(raw)
