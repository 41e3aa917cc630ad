"""The ingest stage: one block in -> blobs stored + one Parquet row per input out. Runs on any executor.

This is a pure function of (block, spec, stores): it never touches the catalog (one writer: the driver), and
its output file is its completion marker, so a retried or resumed block simply runs again or is skipped.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
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
    rows = []
    for position, raw in enumerate(read_block(block, spec, exclusions)):
        row = {
            "block": block.index,
            "position": position,
            "source": block.source,
            "uri": storable(raw.uri),  # what is recorded, and what opt-out requests name; raw.uri stays the path
            "seen_at": seen_at,
            "detail": raw.detail and storable(raw.detail),
            **{key: raw.meta.get(key) and storable(raw.meta[key]) for key in ("license", "attribution", "caption")},
        }
        if raw.data is not None and exclusions:
            image_id = image_id_of(raw.data)
            request = exclusions.covering_uri(row["uri"]) or exclusions.covering_hash(image_id)
            if request:  # opted out: the bytes are not stored; the row names the request and keeps the hash (audit)
                row.update(image_id=image_id, bytes=len(raw.data), detail=request)
                raw = RawInput(raw.uri, reason=Reason.OPTED_OUT, detail=request, meta=raw.meta)
        if raw.data is not None:
            image_id = image_id_of(raw.data)
            decoded = inspect_image(raw.data, spec.stages.decode)
            row.update(
                image_id=image_id,
                bytes=len(raw.data),
                format=decoded.format,
                width=decoded.width,
                height=decoded.height,
                mode=decoded.mode,
                frames=decoded.frames,
            )
            if decoded.ok:
                blobs.put(raw.data, image_id)
                row.update(status=KEPT, reason=None)
            else:
                row.update(status=REJECTED, reason=str(decoded.reason), detail=decoded.detail)
        else:
            row.update(status=REJECTED, reason=str(raw.reason))
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    work.put(block_output_key(run_id, block.index), buffer.getvalue())
    kept = sum(row["status"] == KEPT for row in rows)
    return BlockSummary(block.index, len(rows), kept, time.perf_counter() - started)
