"""Makers of test inputs: the hostile corpus (each file with the fate it must get) and small valid images."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", mode: str = "RGB", **save) -> bytes:
    """A small deterministic noise image; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: a decompression bomb's shape, in 60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """A 64x32 noise JPEG with this EXIF orientation (6, rotate 90, displays as 32x64)."""
    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose frame header (SOF0) claims width x height: a bomb's shape to any header reader."""
    data = bytearray(image_bytes(0, size=(16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def apng_claiming(frames: int) -> bytes:
    """A 64x48 PNG whose acTL chunk (APNG's animation control) claims this many frames."""
    png = image_bytes(15, fmt="PNG")
    actl = struct.pack(">III", 8, 0, 0)  # length 8, then the chunk type, data and CRC below
    actl = actl[:4] + b"acTL" + struct.pack(">II", frames, 0)
    ihdr_end = 8 + 25  # signature, then IHDR's length, type, 13 data bytes and CRC
    return png[:ihdr_end] + actl + struct.pack(">I", zlib.crc32(actl[4:]) & 0xFFFFFFFF) + png[ihdr_end:]


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    image = Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def palette_png() -> bytes:
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)).quantize(16)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]], *, symlink: tuple[str, str] | None = None) -> bytes:
    """A tar with the given (name, data) members, names taken verbatim (so '../evil' stays '../evil')."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            archive.addfile(info)
    return buffer.getvalue()


def write_hostile_corpus(folder: Path) -> dict[str, str]:
    """Write the hostile corpus into `folder`; returns {file name: expected fate ('kept' or a reason code)}. A name
    that is not UTF-8 is recorded with its bytes escaped (`os.fsencode(uri).decode("utf-8", "backslashreplace")`)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = image_bytes(1)
    files: dict[str, tuple[bytes, str]] = {
        "good.jpg": (good, "kept"),
        "truncated.jpg": (image_bytes(2, size=(200, 150))[:900], "truncated"),
        "zero.jpg": (b"", "empty"),
        "text.jpg": (b"this is a text file, not an image\n" * 4, "not_an_image"),
        "bomb.png": (png_header_only(20000, 20000), "decompression_bomb"),
        "cmyk.jpg": (image_bytes(4, mode="CMYK"), "kept"),
        "sixteen-bit.png": (sixteen_bit_png(), "kept"),
        "palette.png": (palette_png(), "kept"),
        "alpha.png": (image_bytes(5, fmt="PNG", mode="RGBA"), "kept"),
        "animated.gif": (animated_gif(), "kept"),
        "rotated.jpg": (exif_rotated_jpeg(), "kept"),
        "tiny.png": (image_bytes(6, size=(8, 8), fmt="PNG"), "too_small"),
        "corrupt.png": (image_bytes(8, fmt="PNG")[:60] + b"\x00garbage" * 20, "corrupt_or_truncated"),
        "frames-2-31.png": (apng_claiming(2**31), "kept"),  # more frames claimed than the int32 column holds
    }
    sidecars = {  # beside an image of the same name: each is ignored or cleaned, and the image kept
        "deep-sidecar.json": b"[" * 100_000 + b"]" * 100_000,
        "surrogate-sidecar.json": rb'{"caption": "caf\ud800"}',  # a lone surrogate: no UTF-8 (nor Arrow) takes it
    }
    files["deep-sidecar.png"] = (image_bytes(9, fmt="PNG"), "kept")
    files["surrogate-sidecar.png"] = (image_bytes(10, fmt="PNG"), "kept")
    files["a" * 251 + ".png"] = (image_bytes(16, fmt="PNG"), "kept")  # its sidecar's name is too long: ignored
    files["not-utf8-\udcff.png"] = (image_bytes(14, fmt="PNG"), "kept")  # the name's bytes: b"not-utf8-\xff.png"
    for name, (data, _fate) in files.items():
        (folder / name).write_bytes(data)
    for name, data in sidecars.items():
        (folder / name).write_bytes(data)
    return {name: fate for name, (data, fate) in files.items()}


def write_evil_tar(path: Path) -> dict[str, str]:
    """A WebDataset-style tar with a good sample (+ sidecar), traversal members and a symlink."""
    good = image_bytes(11)
    sidecar = b'{"license": "CC-BY-4.0", "caption": "noise", "attribution": "tests"}'
    path.write_bytes(
        tar_bytes(
            [
                ("s0001.jpg", good),
                ("s0001.json", sidecar),
                ("../evil.jpg", image_bytes(12)),
                ("../evil", b"x"),
                ("/abs/evil.png", image_bytes(13, fmt="PNG")),
            ],  # fmt: skip
            symlink=("link.jpg", "/etc/passwd"),
        )
    )
    return {
        "s0001.jpg": "kept",
        "../evil.jpg": "path_traversal",
        "../evil": "path_traversal",
        "/abs/evil.png": "path_traversal",
        "link.jpg": "unsafe_tar_member",
    }
