"""The ingest stage: one block in -> blobs stored + one Parquet row per input out. Runs on any executor.

This is a pure function of (block, spec, stores): it never touches the catalog (one writer: the driver), and
its output file is its completion marker, so a retried or resumed block simply runs again or is skipped.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import PipelineSpec
from curation.decode.safe import inspect_image
from curation.ingest import Block, read_block
from curation.ingest.exclusions import NO_EXCLUSIONS, Exclusions
from curation.ingest.raw import RawInput, storable
from curation.store.blobs import BlobStore, image_id_of
from curation.store.objects import ObjectStore
from curation.types import INPUT_SCHEMA, KEPT, REJECTED, Reason


@dataclass(frozen=True)
class BlockSummary:
    block: int
    inputs: int
    kept: int
    seconds: float


def block_output_key(run_id: str, block: int) -> str:
    return f"{run_id}/ingest/block-{block:06d}.parquet"


def ingest_block(block: Block, spec: PipelineSpec, blobs: BlobStore, work: ObjectStore, run_id: str,
                 exclusions: Exclusions = NO_EXCLUSIONS) -> BlockSummary:  # fmt: skip
    started = time.perf_counter()
    seen_at = datetime.now(UTC)
    batches, kept = [], 0
    for position, raw in enumerate(_read_guarded(block, spec, exclusions)):
        common = {"block": block.index, "position": position, "source": block.source, "seen_at": seen_at}
        try:  # the last resort: whatever one input makes go wrong, here or in Arrow, becomes that input's row
            row = {**common, **_judge(raw, spec, exclusions)}
            batch = pa.RecordBatch.from_pylist([row], schema=INPUT_SCHEMA)
        except Exception as error:
            reason = Reason.READ_FAILED if raw.data is None else Reason.CORRUPT
            row = {**common, "uri": storable(raw.uri), "status": REJECTED, "reason": str(reason),
                   "detail": _unexpected(error)}  # fmt: skip
            batch = pa.RecordBatch.from_pylist([row], schema=INPUT_SCHEMA)
        if row["status"] == KEPT:
            blobs.put(raw.data, row["image_id"])
            kept += 1
        batches.append(batch)
    table = pa.Table.from_batches(batches, schema=INPUT_SCHEMA).combine_chunks()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    work.put(block_output_key(run_id, block.index), buffer.getvalue())
    return BlockSummary(block.index, len(batches), kept, time.perf_counter() - started)


def _read_guarded(block: Block, spec: PipelineSpec, exclusions: Exclusions) -> Iterator[RawInput]:
    """read_block's inputs, one per item even when a reader fails unexpectedly: that item gets a read_failed row
    naming the error and reading resumes after it. A tar stream cannot resume: the samples before the failure
    keep their rows and the shard gets one corrupt_container row, as for any break in a shard."""
    done = 0
    while done < len(block.items):
        try:
            for raw in read_block(replace(block, items=block.items[done:]), spec, exclusions):
                yield raw
                if block.kind != "webdataset":  # folder, s3 and urls readers give one input per item
                    done += 1
            return
        except Exception as error:
            if block.kind == "webdataset":
                yield RawInput(block.items[0], reason=Reason.CORRUPT_CONTAINER, detail=_unexpected(error))
                return
            item = block.items[done]  # a path, or a tuple led by its URI (s3 objects, URL rows)
            yield RawInput(str(item[0] if isinstance(item, tuple) else item), reason=Reason.READ_FAILED,
                           detail=_unexpected(error))  # fmt: skip
            done += 1


def _judge(raw: RawInput, spec: PipelineSpec, exclusions: Exclusions) -> dict:
    """The row's fields that depend on the input: opt-out, then safe decode."""
    row = {
        "uri": storable(raw.uri),  # what is recorded, and what opt-out requests name; raw.uri stays the path
        "redirected_to": raw.redirected_to and storable(raw.redirected_to),
        "detail": raw.detail and storable(raw.detail),
        **{key: raw.meta.get(key) and storable(raw.meta[key]) for key in ("license", "attribution", "caption")},
    }
    if raw.data is not None and exclusions:
        image_id = image_id_of(raw.data)
        request = exclusions.covering_uri(row["uri"]) or exclusions.covering_hash(image_id)
        if request:  # opted out: the bytes are not stored; the row names the request and keeps the hash (audit)
            row.update(image_id=image_id, bytes=len(raw.data), detail=request)
            raw = RawInput(raw.uri, reason=Reason.OPTED_OUT, detail=request, meta=raw.meta)
    if raw.data is None:
        return {**row, "status": REJECTED, "reason": str(raw.reason)}
    decoded = inspect_image(raw.data, spec.stages.decode)
    row.update(image_id=image_id_of(raw.data), bytes=len(raw.data), format=decoded.format, width=decoded.width,
               height=decoded.height, mode=decoded.mode, frames=decoded.frames)  # fmt: skip
    if decoded.ok:
        return {**row, "status": KEPT, "reason": None}
    return {**row, "status": REJECTED, "reason": str(decoded.reason), "detail": decoded.detail}


def _unexpected(error: Exception) -> str:
    return storable(f"unexpected {type(error).__name__}: {error}")[:300]
