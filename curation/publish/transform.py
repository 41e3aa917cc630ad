"""What a published image's bytes are: the original (default), or a resized and/or re-encoded copy
(`publish.image`, img2dataset's `image_size` / `resize_mode` / `encode_format`).

Pretraining crops from a few hundred pixels; web originals run to tens of megapixels, so shards of originals
cost storage and, above all, decode time in the trainer's data path. A transformed image is derived
deterministically from the original (same Pillow, same bytes out), written to the blob store under its own
SHA-256, and the sample keeps its original image id: provenance, opt-outs and audit still name the original,
and the sample row records the published bytes' hash and the transform that made them. Re-encoded images
carry no metadata (EXIF, GPS, ICC): only pixels are published.

The work runs as blocks of image ids on the run's executor; each block's rows are written to
`runs/RUN/publish/derive-NNNNNN.parquet`, its resume marker.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from curation.config import ImageTransform
from curation.core.progress import Progress
from curation.decode.pixels import flatten_to_rgb, has_transparency, narrow_wide_grey
from curation.ingest import Block
from curation.ingest.raw import chunk
from curation.store.blobs import BlobStore
from curation.store.objects import ObjectStore, read_parquet

DERIVED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # the original
        ("sha256", pa.string()),  # of the published bytes (null: the transform failed)
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("mode", pa.string()),
        ("error", pa.string()),  # why the original could not be transformed
    ]
)
SAVE_OPTIONS = {  # fixed encoder settings: the same pixels give the same bytes
    "JPEG": lambda quality: {"quality": quality, "optimize": False, "progressive": False},
    "WEBP": lambda quality: {"quality": quality, "method": 4},
    "PNG": lambda quality: {"optimize": False, "compress_level": 6},
}
FORMAT_OF_ORIGINAL = {"MPO": "JPEG"}  # an MPO's first frame is a JPEG


@dataclass(frozen=True)
class Derived:
    data: bytes
    format: str
    width: int
    height: int
    mode: str


def target_size(width: int, height: int, settings: ImageTransform) -> tuple[int, int]:
    """The resized (width, height) before any crop; the original size when no resize applies."""
    if settings.resize == "none":
        return width, height
    side = max(width, height) if settings.resize == "longer_side" else min(width, height)
    scale = settings.size / side
    if scale >= 1 and not settings.upscale:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def transform_image(data: bytes, original_format: str, settings: ImageTransform) -> Derived | None:
    """The published form of an image, or None when it is the original bytes unchanged (no resize or crop
    applies and the format stays). Raises on bytes Pillow cannot decode."""
    image_format = settings.format or FORMAT_OF_ORIGINAL.get(original_format, original_format)
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        size = target_size(width, height, settings)
        crop = settings.resize == "center_crop" and width != height
        if size == (width, height) and not crop and image_format == original_format:
            return None
        if size != (width, height):  # JPEG decodes at 1/2, 1/4 or 1/8 scale; Lanczos does the rest
            image.draft(image.mode, size)  # never below the target: 44 dB against a full decode (benchmark)
        decoded = image.size
        image = _encodable(ImageOps.exif_transpose(image), image_format)  # orientation goes into the pixels
    if image.size == decoded[::-1] != decoded:  # the orientation turned it a quarter (Pillow turns TIFFs itself)
        size = size[::-1]
    if crop:  # the centred square is cut from the source and only it resized: no wide intermediate
        side, edge = min(image.size), min(size)
        left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
        box = (left, top, left + side, top + side)
        image = image.crop(box) if edge == side else image.resize((edge, edge), Image.Resampling.LANCZOS, box=box)
    elif image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, image_format, **SAVE_OPTIONS.get(image_format, lambda quality: {})(settings.quality))
    with Image.open(out) as written:  # the file's own mode (a GIF is saved as a palette)
        return Derived(out.getvalue(), image_format, written.size[0], written.size[1], written.mode)


def _encodable(image: Image.Image, image_format: str) -> Image.Image:
    """Pixels the encoder takes: JPEG has no alpha (transparency on white, as everywhere else: pixels.py);
    PNG and WebP keep it. Grey stays grey (16-bit grey as 8-bit); palettes become RGB(A), which also lets them be
    resampled."""
    image = narrow_wide_grey(image)
    if has_transparency(image):
        return flatten_to_rgb(image) if image_format == "JPEG" else image.convert("RGBA")
    return image if image.mode == "L" else flatten_to_rgb(image)


def derive_key(run_id: str, block: int) -> str:
    return f"{run_id}/publish/derive-{block:06d}.parquet"


def derive_block(block: Block, settings: ImageTransform, blobs: BlobStore, work: ObjectStore, run_id: str) -> int:
    """Transform one block of (image id, format) items; the published bytes go to the blob store. A failure
    is that image's row (its error), not the block's: the rest of the block still publishes."""
    rows = []
    for image_id, original_format in block.items:
        try:
            derived = transform_image(blobs.get(image_id), original_format, settings)
        except Exception as error:  # noqa: BLE001 - whatever the decoder raised is this image's recorded reason
            rows.append({"image_id": image_id, "error": f"{type(error).__name__}: {error}"})
            continue
        if derived is None:
            rows.append({"image_id": image_id, "sha256": image_id})
            continue
        sha256 = blobs.put(derived.data)
        rows.append({"image_id": image_id, "sha256": sha256, "format": derived.format, "width": derived.width,
                     "height": derived.height, "bytes": len(derived.data), "mode": derived.mode})  # fmt: skip
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=DERIVED_SCHEMA), buffer)
    work.put(derive_key(run_id, block.index), buffer.getvalue())
    return len(rows)


def derive_images(samples: list[dict[str, Any]], settings: ImageTransform, blobs: BlobStore, work: ObjectStore,
                  run_id: str, executor: Callable[[], Any], *, block_size: int,
                  progress: Progress) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Each sample's published form, by image id, and the stage's figures. A block whose output exists for the
    same image ids is not redone (resume); the executor starts only when a block is left."""
    items = [(sample["image_id"], sample["format"]) for sample in samples]
    blocks = [Block(index, "publish", "derive", tuple(part)) for index, part in enumerate(chunk(items, block_size))]
    done = {}
    for block in blocks:
        if work.exists(derive_key(run_id, block.index)):
            table = read_parquet(work, derive_key(run_id, block.index))
            if table["image_id"].to_pylist() == [image_id for image_id, _ in block.items]:
                done[block.index] = table
    pending = [block for block in blocks if block.index not in done]
    started = time.perf_counter()
    if pending:
        with progress.bar("derive", total=len(items), initial=len(items) - sum(len(b.items) for b in pending),
                          unit="img") as bar:  # fmt: skip
            for count in executor().map(derive_block, pending, settings, blobs, work, run_id):
                bar.update(count)
    seconds = time.perf_counter() - started
    tables = [done[block.index] if block.index in done else read_parquet(work, derive_key(run_id, block.index))
              for block in blocks]  # fmt: skip
    rows = [row for table in tables for row in table.to_pylist()]
    derived = {row["image_id"]: row for row in rows}
    changed = [sample for sample in samples if derived[sample["image_id"]]["sha256"] not in (None, sample["image_id"])]
    stats = {
        "images": len(rows),
        "transformed": len(changed),
        "unchanged": sum(row["sha256"] == row["image_id"] for row in rows),
        "failed": sum(row["error"] is not None for row in rows),
        "blocks": len(pending),
        "resumed_blocks": len(done),
        "seconds": round(seconds, 3),
        "images_per_s": round(sum(len(block.items) for block in pending) / seconds, 1) if pending else None,
        "bytes_in": sum(sample["bytes"] for sample in changed),  # of the originals that were transformed
        "bytes_out": sum(derived[sample["image_id"]]["bytes"] for sample in changed),
    }
    return derived, stats


def published_form(sample: dict[str, Any], derived: dict[str, Any] | None, settings: ImageTransform | None) -> dict:
    """A sample row as published: its image's format, size and bytes are those of the published file, whose
    SHA-256 and transform it records (the original's stay in the catalog, under the image id)."""
    if derived is None or derived["sha256"] == sample["image_id"]:
        return {**sample, "sha256": sample["image_id"], "transform": None}
    fields = {name: derived[name] for name in ("format", "width", "height", "bytes", "mode")}
    transform = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    return {**sample, **fields, "frames": 1, "sha256": derived["sha256"], "transform": transform}
