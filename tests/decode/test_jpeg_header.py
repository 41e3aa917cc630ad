"""The JPEG header walk (used by the GPU decode path) agrees with Pillow and never raises on hostile bytes."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from curation.decode.jpeg_header import JpegHeader, read_jpeg_header
from tests.corpus import exif_rotated_jpeg, image_bytes, jpeg_header_claiming


def big_endian_exif(orientation: int) -> bytes:
    """An APP1 payload in Motorola byte order (Pillow writes Intel order): IFD0 with one orientation entry."""
    entry = struct.pack(">HHIH2x", 0x0112, 3, 1, orientation)
    return b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + b"\x00" * 4


def jpeg(size=(50, 30), mode="RGB", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 200, 30, 0)[: len(mode)]).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def pillow_header(data: bytes) -> JpegHeader:
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(0x0112, 1)
        return JpegHeader(image.width, image.height, orientation if 1 <= orientation <= 8 else 1)


@pytest.mark.parametrize(
    "data",
    [
        jpeg(),
        jpeg(progressive=True),
        jpeg(mode="L"),
        jpeg(mode="CMYK"),
        jpeg(size=(7, 900), quality=20, optimize=True),
        *[exif_rotated_jpeg(orientation) for orientation in range(1, 9)],
        jpeg(exif=big_endian_exif(8)),
        jpeg(exif=big_endian_exif(9)),  # out of range: treated as unrotated, as the CPU path does
    ],
    ids=lambda data: str(len(data)),
)
def test_size_and_orientation_agree_with_pillow(data):
    assert read_jpeg_header(data) == pillow_header(data)


def test_big_endian_orientation_and_a_bombs_claimed_size_are_read():
    assert read_jpeg_header(jpeg(exif=big_endian_exif(6))).orientation == 6
    assert read_jpeg_header(jpeg_header_claiming(20000, 20000)) == JpegHeader(20000, 20000, 1)  # Pillow refuses it


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", image_bytes(1, fmt="PNG"), b"\xff\xd8\xff\xe0\x00\x01 junk"])
def test_what_is_not_a_readable_jpeg_gives_none(data):
    assert read_jpeg_header(data) is None


def test_truncated_and_mutated_jpegs_never_raise():
    """Every prefix gives None or the full header (the walk reads only what the frame header needs); random
    byte mutations give None or some header, never an exception."""
    data = exif_rotated_jpeg(6)
    full = read_jpeg_header(data)
    for cut in range(len(data)):
        assert read_jpeg_header(data[:cut]) in (None, full)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        mutated = bytearray(data)
        positions = rng.integers(0, 200, size=3)  # the segment headers live near the start
        mutated[positions[0]] = int(rng.integers(0, 256))
        mutated[positions[1]] = int(rng.integers(0, 256))
        mutated[positions[2]] = int(rng.integers(0, 256))
        assert read_jpeg_header(bytes(mutated)) is None or isinstance(read_jpeg_header(bytes(mutated)), JpegHeader)


def test_the_first_of_two_exif_segments_gives_the_orientation_as_in_pillow():
    data = exif_rotated_jpeg(1)
    second = big_endian_exif(6)
    app1 = data.index(b"\xff\xe1")
    (length,) = struct.unpack_from(">H", data, app1 + 2)
    end = app1 + 2 + length
    two = data[:end] + b"\xff\xe1" + struct.pack(">H", len(second) + 2) + second + data[end:]
    assert read_jpeg_header(two) == pillow_header(two) == JpegHeader(64, 32, 1)
