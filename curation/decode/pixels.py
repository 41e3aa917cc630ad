"""How decoded pixels become RGB, one rule for every consumer (embedders, quality checks): transparent pixels are
composited onto white. Dropping alpha instead would expose whatever colour hides under it, often black, and make
unrelated cut-outs look alike."""

from __future__ import annotations

import numpy as np
from PIL import Image

WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey levels (0-65535) as Pillow opens them


def has_transparency(image: Image.Image) -> bool:
    """An alpha band, or "transparency" in the info: a palette's transparent entries or, in L and RGB images (a
    PNG's tRNS chunk), one colour."""
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def narrow_wide_grey(image: Image.Image) -> Image.Image:
    """16-bit grey levels scaled to 8 bits ("L"; "LA" where a tRNS level marks a transparent grey). Pillow's own
    convert clips them, so every level above 255, nearly all of a picture, would turn white; and its transparent
    level (up to 65535) would match no 8-bit pixel. Other modes are returned as they are."""
    if image.mode not in WIDE_GREY_MODES:
        return image
    levels = np.asarray(image.convert("I"))  # int32, one per pixel
    grey = Image.fromarray(np.clip(levels >> 8, 0, 255).astype(np.uint8), "L")
    transparent_level = image.info.get("transparency")
    if not isinstance(transparent_level, int):
        return grey
    alpha = Image.fromarray(np.where(levels == transparent_level, 0, 255).astype(np.uint8), "L")
    return Image.merge("LA", (grey, alpha))


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels, transparency composited onto white; 16-bit grey levels scaled to 8 bits (narrow_wide_grey)."""
    image = narrow_wide_grey(image)
    if not has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
