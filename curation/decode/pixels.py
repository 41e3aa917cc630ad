"""How decoded pixels become RGB, one rule for every consumer (embedders, quality checks): transparent pixels are
composited onto white. Dropping alpha instead would expose whatever colour hides under it, often black, and make
unrelated cut-outs look alike."""

from __future__ import annotations

from PIL import Image


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels, transparency composited onto white."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
