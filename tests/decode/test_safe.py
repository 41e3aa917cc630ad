"""Safe decode over the hostile corpus: every file gets its fate, nothing raises."""

from __future__ import annotations

import pytest
from PIL import Image

from curation.config import DecodeStage
from curation.decode.safe import inspect_image
from curation.types import Reason
from tests.corpus import (
    animated_gif,
    apng_claiming,
    exif_rotated_jpeg,
    image_bytes,
    png_header_only,
    write_hostile_corpus,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, write_hostile_corpus(folder)


def test_every_hostile_file_gets_its_fate(corpus):
    folder, expected = corpus
    settings = DecodeStage(min_side=16)
    for name, fate in expected.items():
        if fate == "read_failed":  # decided while reading, before any decode
            continue
        result = inspect_image((folder / name).read_bytes(), settings)
        if fate == "kept":
            assert result.ok, f"{name}: {result.reason} {result.detail}"
        elif fate == "corrupt_or_truncated":
            assert result.reason in (Reason.CORRUPT, Reason.TRUNCATED), name
        else:
            assert result.reason == Reason(fate), f"{name}: {result.reason} {result.detail}"
        assert result.ok or result.detail, f"{name}: a reject must say why"


def test_bomb_is_rejected_from_the_header_without_decoding():
    result = inspect_image(png_header_only(20000, 20000), DecodeStage())
    assert result.reason == Reason.DECOMPRESSION_BOMB
    assert "400000000" in result.detail or "20000x20000" in result.detail


def test_configured_pixel_limit_applies_below_pillows():
    data = image_bytes(1, size=(100, 100))
    assert inspect_image(data, DecodeStage(max_pixels=10_000)).ok
    assert inspect_image(data, DecodeStage(max_pixels=9_999)).reason == Reason.DECOMPRESSION_BOMB


def test_configured_pixel_limit_applies_above_pillows(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2,000 pixels, as above 179M by default
    data = image_bytes(1, size=(100, 100))
    assert inspect_image(data, DecodeStage(max_pixels=10_000)).ok
    result = inspect_image(data, DecodeStage(max_pixels=9_999))
    assert result.reason == Reason.DECOMPRESSION_BOMB and "max_pixels 9999" in result.detail  # ours, not Pillow's


def test_exif_orientation_swaps_reported_size():
    result = inspect_image(exif_rotated_jpeg(), DecodeStage())
    assert (result.width, result.height) == (32, 64)


def test_animated_gif_is_kept_with_its_frame_count():
    result = inspect_image(animated_gif(), DecodeStage())
    assert result.ok and result.frames == 3 and result.format == "GIF"


def test_an_apng_claiming_more_frames_than_can_be_stored_is_kept_with_frames_unknown():
    assert inspect_image(apng_claiming(1000), DecodeStage()).frames >= 1000  # a claim that fits is recorded
    result = inspect_image(apng_claiming(2**31), DecodeStage())
    assert result.ok and result.frames is None and result.format == "PNG"


def test_sixteen_bit_png_is_kept():
    from tests.corpus import sixteen_bit_png

    result = inspect_image(sixteen_bit_png(), DecodeStage())
    assert result.ok and result.mode.startswith("I;16")


def test_modes_are_recorded():
    assert inspect_image(image_bytes(2, mode="CMYK"), DecodeStage()).mode == "CMYK"
    assert inspect_image(image_bytes(2, fmt="PNG", mode="RGBA"), DecodeStage()).mode == "RGBA"


def test_size_and_format_limits():
    data = image_bytes(3)
    assert inspect_image(data, DecodeStage(max_bytes=len(data) - 1)).reason == Reason.TOO_LARGE
    assert inspect_image(data, DecodeStage(formats=("PNG",))).reason == Reason.UNSUPPORTED_FORMAT
    assert inspect_image(data, DecodeStage(min_side=49)).reason == Reason.TOO_SMALL
    assert inspect_image(data, DecodeStage(min_side=48)).ok
