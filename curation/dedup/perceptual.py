"""Perceptual hash (pHash): 64 bits from the low frequencies of a 32x32 greyscale DCT.

The same algorithm as imagededup's PHash (imagededup itself imports torch at package import, too heavy for a
base install). Resized and re-encoded copies stay within a few bits; crops and flips do not.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from curation.decode.safe import open_rgb

HASH_SIDE = 8
DCT_SIDE = 32


def _dct_matrix(size: int) -> np.ndarray:
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix(DCT_SIDE)


def phash(data: bytes) -> int:
    """64-bit perceptual hash of image bytes (raises on undecodable bytes, like any decoder)."""
    grey = open_rgb(data, DCT_SIDE * 4).convert("L").resize((DCT_SIDE, DCT_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:HASH_SIDE, :HASH_SIDE].reshape(-1)
    bits = low > np.median(low[1:])  # the DC term is left out of the median, as in the original pHash
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(first: int, second: int) -> int:
    return (first ^ second).bit_count()
