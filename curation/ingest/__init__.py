"""Sources: list a source's inputs into blocks at plan time, and read a block's bytes at run time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from curation.config import FolderSource, PipelineSpec, S3Source, UrlListSource, WebDatasetSource
from curation.ingest.exclusions import NO_EXCLUSIONS, Exclusions
from curation.ingest.folder import list_folder, read_files
from curation.ingest.raw import Block, RawInput, chunk
from curation.ingest.s3 import list_prefix, read_objects
from curation.ingest.tars import expand_shards, read_shard
from curation.ingest.urls import fetch_urls, read_url_table
from curation.types import Reason

__all__ = ["Block", "RawInput", "plan_blocks", "read_block"]


def _list_source(source, spec: PipelineSpec) -> list[Any]:
    if isinstance(source, FolderSource):
        return list_folder(source)
    if isinstance(source, S3Source):
        return list_prefix(source, spec.s3)
    if isinstance(source, UrlListSource):
        return read_url_table(source)
    if isinstance(source, WebDatasetSource):
        return expand_shards(source)
    raise TypeError(f"unknown source type {type(source).__name__}")


def plan_blocks(spec: PipelineSpec) -> list[Block]:
    """Every source's inputs cut into blocks; a tar shard is always a block of its own."""
    blocks: list[Block] = []
    for source in spec.sources:
        items = _list_source(source, spec)
        size = 1 if isinstance(source, WebDatasetSource) else spec.execution.block_size
        for piece in chunk(items, size):
            blocks.append(Block(len(blocks), source.name, source.kind, tuple(piece)))
    return blocks


def read_block(block: Block, spec: PipelineSpec, exclusions: Exclusions = NO_EXCLUSIONS) -> Iterator[RawInput]:
    """The block's inputs in a stable order, each with bytes or a reject reason, plus its source's default licence.
    URLs covered by an opt-out are not fetched at all."""
    source = next(source for source in spec.sources if source.name == block.source)
    max_bytes = spec.stages.decode.max_bytes
    if block.kind == "folder":
        inputs = read_files(block.items, max_bytes)
    elif block.kind == "s3":
        inputs = read_objects(block.items, spec.s3, max_bytes)
    elif block.kind == "urls":
        inputs = _fetch_unless_excluded(block.items, spec, exclusions)
    else:
        inputs = (item for shard in block.items for item in read_shard(shard, spec.s3, max_bytes))
    for raw in inputs:
        if source.license and not raw.meta.get("license"):
            raw.meta["license"] = source.license
        yield raw


def _fetch_unless_excluded(rows, spec: PipelineSpec, exclusions: Exclusions) -> Iterator[RawInput]:
    """Malformed table rows (read_url_table's 5-field rows) and excluded URLs are answered without a request."""
    covered = [exclusions.covering_uri(str(row[0])) if exclusions and len(row) == 4 else None for row in rows]
    wanted = tuple(row for row, request in zip(rows, covered) if not request and len(row) == 4)
    fetched = fetch_urls(wanted, spec.fetch, spec.stages.decode.max_bytes, exclusions)
    for row, request in zip(rows, covered):
        if len(row) == 5:
            yield RawInput(row[0], reason=Reason.MALFORMED_ROW, detail=row[4])
        elif request:
            meta = {"license": row[1], "caption": row[2], "attribution": row[3]}
            yield RawInput(str(row[0]), reason=Reason.OPTED_OUT, detail=f"{request} (url, not fetched)", meta=meta)
        else:
            yield next(fetched)
