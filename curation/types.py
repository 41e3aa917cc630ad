"""Shared record shapes: the reject reason codes and the Arrow schema of an ingest block's rows.

Every input that enters a run becomes exactly one `INPUT_SCHEMA` row; the decision columns say what became
of it. docs/reasons.md explains each reason to users.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa


class Reason(StrEnum):
    """Why an input was not kept. Stable strings: they are stored in catalogs and manifests."""

    EMPTY = "empty"  # zero bytes
    TOO_LARGE = "too_large"  # more bytes than decode.max_bytes; not read further
    NOT_AN_IMAGE = "not_an_image"  # no image decoder recognises the bytes (e.g. text named .jpg)
    UNSUPPORTED_FORMAT = "unsupported_format"  # an image, but not in decode.formats
    DECOMPRESSION_BOMB = "decompression_bomb"  # header claims more than decode.max_pixels
    TRUNCATED = "truncated"  # image data ends early
    CORRUPT = "corrupt"  # the decoder failed on the pixel data
    TOO_SMALL = "too_small"  # shorter side below decode.min_side
    LOW_INFORMATION = "low_information"  # blank or near-uniform: grey-level std below decode.quality.min_contrast
    TOO_DARK = "too_dark"  # mean grey level below decode.quality.min_brightness
    TOO_BRIGHT = "too_bright"  # mean grey level above decode.quality.max_brightness
    BLURRY = "blurry"  # Laplacian variance below decode.quality.min_sharpness
    EXTREME_ASPECT = "extreme_aspect"  # longer/shorter side above decode.quality.max_aspect_ratio
    PATH_TRAVERSAL = "path_traversal"  # tar member with an absolute path or '..'
    UNSAFE_TAR_MEMBER = "unsafe_tar_member"  # link, device or other non-regular tar member
    CORRUPT_CONTAINER = "corrupt_container"  # a tar shard that cannot be read (further)
    READ_FAILED = "read_failed"  # the file or object could not be read
    FETCH_FAILED = "fetch_failed"  # network error or timeout after retries
    HTTP_ERROR = "http_error"  # non-2xx status after retries
    ROBOTS_OPT_OUT = "robots_opt_out"  # X-Robots-Tag (noai, noimageai, ...) forbids taking it
    INVALID_URL = "invalid_url"  # not an http(s) URL
    MALFORMED_ROW = "malformed_row"  # a URL-list CSV row with the wrong number of fields; not fetched
    EMBED_FAILED = "embed_failed"  # the embedder could not decode or process an image that ingest accepted
    PROMPT_MATCH = "prompt_match"  # filter: its cosine to an unwanted text prompt reached the rule's limit
    CAPTION_MISMATCH = "caption_mismatch"  # filter: its caption's cosine to it is below min_caption_similarity
    NEAR_DUPLICATE = "near_duplicate"  # copy-detection duplicate of the group's kept representative
    PERCEPTUAL_DUPLICATE = "perceptual_duplicate"  # pHash duplicate of the group's kept representative
    CONTAMINATION = "contamination"  # its duplicate group touches an evaluation image
    NOT_SELECTED = "not_selected"  # composition: in no part (not retrieved by a seed, not drawn by balancing)
    OPTED_OUT = "opted_out"  # an opt-out request covers it (detail: the request id and how it matched)
    LICENSE_DENIED = "license_denied"  # its licence is on policy.licenses.deny, or not on a given allow list
    LICENSE_UNKNOWN = "license_unknown"  # no licence known, and policy.licenses.unknown is drop
    TRANSFORM_FAILED = "transform_failed"  # publish.image: the selected image could not be resized or re-encoded


KEPT = "kept"
REJECTED = "rejected"

# One row per input (file, object, tar member, URL). `image_id` is null when no bytes were obtained.
INPUT_SCHEMA = pa.schema(
    [
        pa.field("block", pa.int32(), nullable=False),  # block number in the run's plan
        pa.field("position", pa.int32(), nullable=False),  # order within the block; (block, position) is stable
        pa.field("source", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),  # path, s3://bucket/key, tar-uri#member, or URL
        pa.field("redirected_to", pa.string()),  # a URL's final URL when it redirected (where the bytes came from)
        pa.field("status", pa.string(), nullable=False),  # "kept" or "rejected"
        pa.field("reason", pa.string()),  # a Reason when rejected
        pa.field("detail", pa.string()),  # human-readable context for the reason
        pa.field("image_id", pa.string()),  # SHA-256 hex of the original bytes
        pa.field("bytes", pa.int64()),
        pa.field("format", pa.string()),  # Pillow format name (JPEG, PNG, ...)
        pa.field("width", pa.int32()),  # after EXIF orientation
        pa.field("height", pa.int32()),
        pa.field("mode", pa.string()),  # Pillow mode of the original (RGB, CMYK, I;16, P, RGBA, ...)
        pa.field("frames", pa.int32()),  # >1 for animated images; the first frame is what is used
        pa.field("license", pa.string()),
        pa.field("attribution", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("seen_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
