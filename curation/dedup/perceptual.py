"""Perceptual hash (pHash): 64 bits from the low frequencies of a 32x32 greyscale DCT.

The pHash algorithm imagededup also uses, except that bits are `>` the median where imagededup uses `>=` (so hashes
are not interchangeable with its lists); imagededup itself imports torch at package import, too heavy for a
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


def near_pairs(hashes: list[int], max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance), i < j, for hash pairs within `max_distance` bits, without comparing all pairs.

    Pigeonhole: split the 64 bits into max_distance + 1 chunks; two hashes within max_distance bits agree exactly
    on at least one chunk, so only hashes sharing a chunk value are compared.
    """
    chunks = max_distance + 1
    bounds = [int(bound) for bound in np.linspace(0, 64, chunks + 1)]
    found: set[tuple[int, int]] = set()
    for low, high in zip(bounds[:-1], bounds[1:]):
        mask = (1 << (high - low)) - 1
        buckets: dict[int, list[int]] = {}
        for index, value in enumerate(hashes):
            buckets.setdefault((value >> low) & mask, []).append(index)
        for members in buckets.values():
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    found.add((members[a], members[b]))
    pairs = sorted((i, j, hamming(hashes[i], hashes[j])) for i, j in found)
    pairs = [pair for pair in pairs if pair[2] <= max_distance]
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    i, j, d = (np.array(column, np.int64) for column in zip(*pairs))
    return i, j, d
