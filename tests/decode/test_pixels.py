"""Transparency lands on white whichever way a file declares it: an alpha channel, a palette's transparent entries
or a PNG tRNS chunk naming one transparent colour (L and RGB images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curation.decode.safe import open_rgb


def png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "key", "alpha_mode"), [("RGB", (0, 0, 0), "RGBA"), ("L", 0, "LA")])
def test_a_trns_colour_key_is_composited_on_white_like_the_alpha_cut_out(mode, key, alpha_mode):
    """A smooth object (no pixel of the key colour) on a background of the key colour: saved with tRNS it decodes
    to the same pixels as the same cut-out saved with an alpha channel, the background white, not the key."""
    smooth = np.random.default_rng(0).integers(1, 256, (6, 6, 3), dtype=np.uint8)
    canvas = np.zeros((128, 128, 3), np.uint8)
    canvas[32:96, 32:96] = np.asarray(Image.fromarray(smooth).resize((64, 64), Image.Resampling.BILINEAR))
    alpha = np.zeros((128, 128, 1), np.uint8)
    alpha[32:96, 32:96] = 255
    cut_out = Image.fromarray(np.concatenate([canvas, alpha], -1), "RGBA").convert(alpha_mode)
    keyed = open_rgb(png(Image.fromarray(canvas).convert(mode), transparency=key))
    assert np.array_equal(np.asarray(keyed), np.asarray(open_rgb(png(cut_out))))
    assert np.asarray(keyed)[0, 0].tolist() == [255, 255, 255]


def test_16_bit_grey_keeps_its_levels_and_its_transparent_level_lands_on_white():
    """A tRNS level of a 16-bit grey PNG (0-65535) names transparent pixels too; the others keep their grey."""
    levels = np.full((8, 8), 20000, np.uint16)  # 78 in 8 bits
    levels[:, :4] = 40000
    rgb = np.asarray(open_rgb(png(Image.fromarray(levels), transparency=40000)))
    assert (rgb[:, :4] == 255).all()
    assert (rgb[:, 4:] == 78).all()
