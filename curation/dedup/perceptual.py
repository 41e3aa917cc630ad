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
HASH_MASK = (1 << 64) - 1
MIN_TABLE_BITS = 10  # shorter multi-hash tables put most hashes in one bucket: brute force is faster then


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
    return ((first ^ second) & HASH_MASK).bit_count()


def near_pairs(hashes: list[int], max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance), i < j, for hash pairs within `max_distance` bits; -1 (an image without a hash) pairs
    with nothing. Exact, in FAISS's binary indexes:

    - multi-index hashing while each table keeps >= MIN_TABLE_BITS bits (pigeonhole: split the bits into
      max_distance + 1 tables; two hashes within max_distance bits agree exactly in at least one table, so only
      hashes sharing a table entry are compared);
    - brute-force Hamming search beyond that (popcounts in C++; results only, never an N x N matrix), since with
      short tables nearly everything shares an entry.
    """
    import faiss

    valid = np.fromiter((value >= 0 for value in hashes), bool, len(hashes))
    rows = np.flatnonzero(valid)
    codes = np.fromiter((hashes[row] & HASH_MASK for row in rows), np.uint64, len(rows)).view(np.uint8)
    codes = codes.reshape(-1, 8)
    empty = np.empty(0, np.int64)
    if len(rows) < 2:
        return empty, empty, empty
    tables = max_distance + 1
    if 64 // tables >= MIN_TABLE_BITS:
        index = faiss.IndexBinaryMultiHash(64, tables, 64 // tables)
    else:
        index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    limits, distances, neighbours = index.range_search(codes, max_distance + 1)  # radius is exclusive
    queries = np.repeat(np.arange(len(rows)), np.diff(limits).astype(np.int64))
    keep = queries < neighbours
    order = np.lexsort((neighbours[keep], queries[keep]))
    i, j = rows[queries[keep][order]], rows[neighbours[keep][order]]
    return i.astype(np.int64), j.astype(np.int64), distances[keep][order].astype(np.int64)


def perceptual_edges(hashes: list[int], max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) edges with the connected components of all `near_pairs`, in O(images + pairs of distinct
    hashes): images sharing one hash (thousands of re-encodes of a popular picture) are joined to the first of
    them (distance 0), and distinct hashes pair through their first images, instead of every pair of images."""
    rows = np.flatnonzero(np.fromiter((value >= 0 for value in hashes), bool, len(hashes)))
    values = np.fromiter((hashes[row] for row in rows), np.uint64, len(rows))
    distinct, first, which = np.unique(values, return_index=True, return_inverse=True)
    first_row = rows[first]  # the first image holding each distinct hash
    near_i, near_j, distance = near_pairs([int(value) for value in distinct], max_distance)
    twins = np.flatnonzero(rows != first_row[which])
    i = np.concatenate([first_row[near_i], first_row[which[twins]]]).astype(np.int64)
    j = np.concatenate([first_row[near_j], rows[twins]]).astype(np.int64)
    return i, j, np.concatenate([distance, np.zeros(len(twins), np.int64)])
