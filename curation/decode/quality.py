"""Pixel-level junk filters, the kind fastdup reports: blank or near-uniform images (placeholders, "image not
available" tiles), too dark or too bright, blurry, and banner-like aspect ratios.

Measured on the decoded first frame shrunk to at most MEASURE_SIDE pixels a side, in grey levels 0-255 with
transparency flattened on white, so one threshold means the same for a thumbnail and a 40-megapixel photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.config import QualityChecks
from curation.decode.pixels import flatten_to_rgb
from curation.types import Reason

MEASURE_SIDE = 128
RESIZABLE_MODES = {"RGB", "RGBA", "L", "LA", "CMYK"}  # Pillow resamples these in place


@dataclass(frozen=True)
class QualityFigures:
    contrast: float  # standard deviation of the grey levels
    brightness: float  # mean grey level
    sharpness: float  # variance of the 4-neighbour Laplacian (low: blurry or flat)
    aspect: float  # longer side / shorter side, of the full image


def measure(image: Image.Image) -> QualityFigures:
    """The figures of a decoded image, any mode (see the module docstring for the scale they are measured at).
    Common modes are shrunk before conversion, so a large photo costs a box reduction, not a full-size copy."""
    aspect = max(image.size) / max(1, min(image.size))
    if image.mode not in RESIZABLE_MODES:  # palette, 16-bit, bilevel: resampling needs real colours first
        image = flatten_to_rgb(image)
    if max(image.size) >= 2 * MEASURE_SIDE:  # box-average by a whole factor first: far cheaper than a resize
        image = image.reduce(max(image.size) // MEASURE_SIDE)
    if max(image.size) > MEASURE_SIDE:
        scale = MEASURE_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    grey = np.asarray(flatten_to_rgb(image).convert("L"), np.float32)
    if min(grey.shape) >= 3:
        laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
        sharpness = float(laplacian.var())
    else:
        sharpness = 0.0
    return QualityFigures(float(grey.std()), float(grey.mean()), sharpness, float(aspect))


def quality_reason(figures: QualityFigures, checks: QualityChecks) -> tuple[Reason, str] | None:
    """The first check an image fails, as (reason, detail), or None. Order: blank first, then exposure, then blur
    (a blank image is also dark or bright and flat; it is reported as what it is)."""
    tests = [
        (checks.min_contrast, figures.contrast, -1, Reason.LOW_INFORMATION, "grey-level std", "min_contrast"),
        (checks.min_brightness, figures.brightness, -1, Reason.TOO_DARK, "mean grey level", "min_brightness"),
        (checks.max_brightness, figures.brightness, 1, Reason.TOO_BRIGHT, "mean grey level", "max_brightness"),
        (checks.min_sharpness, figures.sharpness, -1, Reason.BLURRY, "Laplacian variance", "min_sharpness"),
        (checks.max_aspect_ratio, figures.aspect, 1, Reason.EXTREME_ASPECT, "aspect ratio", "max_aspect_ratio"),
    ]
    for limit, value, direction, reason, what, key in tests:
        if limit is not None and (value - limit) * direction > 0:
            relation = "<" if direction < 0 else ">"
            return reason, f"{what} {value:.2f} {relation} {key} {limit}"
    return None
