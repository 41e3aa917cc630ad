"""Safe decode: decide whether bytes are an acceptable image without ever letting them crash the run.

The header is read first and the pixel count checked before any pixel is decoded, so a 20000x20000 PNG costs
a few bytes of parsing, not gigabytes. Then the first frame is decoded fully, which is the only way to find
truncated or corrupt data. The bytes themselves are never altered: the content address is of the original.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from curation.config import DecodeStage
from curation.decode.pixels import flatten_to_rgb
from curation.decode.quality import measure, quality_reason
from curation.types import Reason

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, not decode as grey
EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # transpose, rotate 270, transverse, rotate 90: width and height swap
MAX_FRAMES = 2**31 - 1  # the `frames` column is int32; no file holds more frames than that


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """What safe decode learned. `reason` is None when the image is acceptable."""

    reason: Reason | None
    detail: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    frames: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def inspect_image(data: bytes, settings: DecodeStage) -> DecodeResult:
    """Classify `data` as an acceptable image or a reject with a reason; never raises on bad bytes."""
    if not data:
        return DecodeResult(Reason.EMPTY, "zero bytes")
    if len(data) > settings.max_bytes:
        return DecodeResult(Reason.TOO_LARGE, f"{len(data)} bytes > max_bytes {settings.max_bytes}")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < settings.max_pixels:
        # Pillow refuses above twice its own limit before our check could allow a larger max_pixels; only ever
        # raised, so threads with other settings still get at least theirs, and our check below still decides
        Image.MAX_IMAGE_PIXELS = settings.max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return _inspect(data, settings)
        except Image.DecompressionBombError as error:
            return DecodeResult(Reason.DECOMPRESSION_BOMB, str(error))
        except UnidentifiedImageError:
            return DecodeResult(Reason.NOT_AN_IMAGE, "no decoder recognises these bytes")
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            message = str(error)
            truncated = "truncated" in message.lower() or isinstance(error, EOFError)
            return DecodeResult(Reason.TRUNCATED if truncated else Reason.CORRUPT, message[:300])
        except (MemoryError, RecursionError) as error:  # hostile files can exhaust decoders
            return DecodeResult(Reason.CORRUPT, f"{type(error).__name__} while decoding")
        except Exception as error:  # noqa: BLE001 - decoder plugins raise anything; the run must go on
            return DecodeResult(Reason.CORRUPT, f"{type(error).__name__}: {str(error)[:300]}")


def _inspect(data: bytes, settings: DecodeStage) -> DecodeResult:
    with Image.open(io.BytesIO(data)) as image:
        image_format = image.format or "UNKNOWN"
        width, height = image.size
        mode = image.mode
        frames = int(getattr(image, "n_frames", 1))  # APNG: acTL's claim, unchecked by Pillow
        frames = frames if frames <= MAX_FRAMES else None  # an impossible claim is unknown, not a crash
        known = dict(format=image_format, width=width, height=height, mode=mode, frames=frames)
        if image_format not in settings.formats:
            return DecodeResult(Reason.UNSUPPORTED_FORMAT, f"{image_format} not in {list(settings.formats)}", **known)
        if width * height > settings.max_pixels:
            detail = f"{width}x{height} = {width * height} pixels > max_pixels {settings.max_pixels}"
            return DecodeResult(Reason.DECOMPRESSION_BOMB, detail, **known)
        image.seek(0)
        image.load()
        if image.getexif().get(EXIF_ORIENTATION, 1) in ROTATED_ORIENTATIONS:  # displayed rotated by 90 degrees
            width, height = height, width
        known.update(width=width, height=height)
        if min(width, height) < settings.min_side:
            detail = f"{width}x{height}: shorter side < min_side {settings.min_side}"
            return DecodeResult(Reason.TOO_SMALL, detail, **known)
        failed = settings.quality and quality_reason(measure(image), settings.quality)
    if failed:
        return DecodeResult(*failed, **known)
    return DecodeResult(None, None, **known)


def open_rgb(data: bytes, draft_side: int | None = None) -> Image.Image:
    """Decoded RGB pixels of the first frame, EXIF orientation applied, transparency on white (pixels.py).
    `draft_side` lets JPEG decode at a reduced scale when that suffices."""
    with Image.open(io.BytesIO(data)) as image:
        if draft_side:
            image.draft("RGB", (draft_side, draft_side))
        return flatten_to_rgb(ImageOps.exif_transpose(image))
