"""Pixel-level junk filters (stages.decode.quality): blank, dark, bright, blurry and banner-shaped images get their
reason; real images and every unusual-but-valid mode pass; the figures do not depend on the image's size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from curation.config import DecodeStage, QualityChecks
from curation.decode.quality import measure
from curation.decode.safe import inspect_image
from curation.types import Reason
from tests.conftest import FIXTURE_IMAGES
from tests.corpus import image_bytes, write_hostile_corpus

ALL_CHECKS = QualityChecks(min_contrast=2.0, min_brightness=20, max_brightness=235, min_sharpness=50,
                           max_aspect_ratio=4)  # fmt: skip


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """Smooth structure plus fine detail: mid-grey on average, sharp, with contrast."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = 128 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 25, (size[1], size[0]))
    return Image.fromarray(np.clip(np.stack([base, base * 0.9, base * 1.1], -1), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (Image.new("RGB", (300, 200), (90, 140, 200)), Reason.LOW_INFORMATION),  # a solid placeholder
        (Image.new("RGBA", (64, 64), (0, 0, 0, 0)), Reason.LOW_INFORMATION),  # fully transparent: white
        (Image.fromarray(np.asarray(photo().convert("L")) // 8).convert("RGB"), Reason.TOO_DARK),
        (Image.fromarray(255 - np.asarray(photo().convert("L")) // 8).convert("RGB"), Reason.TOO_BRIGHT),
        (photo().filter(ImageFilter.GaussianBlur(6)), Reason.BLURRY),
        (photo(size=(800, 120)), Reason.EXTREME_ASPECT),
    ],
)
def test_each_kind_of_junk_gets_its_reason(image, reason):
    result = inspect_image(encoded(image), DecodeStage(quality=ALL_CHECKS))
    assert result.reason == reason, (result.reason, result.detail)
    assert result.width == image.width and result.detail  # what was measured and the limit crossed
    assert inspect_image(encoded(image), DecodeStage()).ok  # quality checks are off unless configured


def test_real_images_pass_every_check():
    for path in sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:20]:
        result = inspect_image(path.read_bytes(), DecodeStage(quality=QualityChecks()))
        assert result.ok, (path.name, result.detail)
    assert inspect_image(encoded(photo(), "JPEG"), DecodeStage(quality=ALL_CHECKS)).ok


def test_a_16_bit_grey_picture_is_measured_like_its_8_bit_version():
    grey = np.asarray(photo().convert("L"))
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)  # the same levels, 0-65535
    assert sixteen.mode.startswith("I;16")
    assert measure(sixteen) == measure(Image.fromarray(grey))
    assert inspect_image(encoded(sixteen), DecodeStage(quality=ALL_CHECKS)).ok


def test_the_default_checks_only_drop_blank_images():
    checks = QualityChecks()
    assert (checks.min_brightness, checks.max_brightness, checks.min_sharpness, checks.max_aspect_ratio) == (None,) * 4
    nearly_blank = np.full((100, 100, 3), 250, np.uint8)
    nearly_blank[50, 50] = 150  # one grey speck does not make an image
    assert inspect_image(encoded(Image.fromarray(nearly_blank)), DecodeStage(quality=checks)).reason == (
        Reason.LOW_INFORMATION
    )
    white_page_with_drawing = np.full((100, 100, 3), 255, np.uint8)
    white_page_with_drawing[20:80, 45:55] = 0
    assert inspect_image(encoded(Image.fromarray(white_page_with_drawing)), DecodeStage(quality=checks)).ok


def test_figures_do_not_depend_on_the_images_size():
    """Content coarser than the measuring scale gives the same figures at 128 px and at 2048 px."""
    y, x = np.mgrid[0:96, 0:128]
    content = Image.fromarray((128 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.uint8)).convert("RGB")
    first, second = measure(content), measure(content.resize((2048, 1536), Image.Resampling.BICUBIC))
    assert abs(first.contrast - second.contrast) < 0.03 * first.contrast
    assert abs(first.brightness - second.brightness) < 1 and first.aspect == second.aspect
    assert abs(first.sharpness - second.sharpness) < 0.15 * first.sharpness


def test_every_valid_mode_is_measured_not_rejected(tmp_path):
    """CMYK, 16-bit, palette, alpha, animated and EXIF-rotated inputs: measured, never 'corrupt'."""
    expected = write_hostile_corpus(tmp_path)
    settings = DecodeStage(min_side=16, quality=QualityChecks(min_contrast=0.5))
    for name, fate in expected.items():
        result = inspect_image((tmp_path / name).read_bytes(), settings)
        if fate == "kept":
            assert result.ok or result.reason == Reason.LOW_INFORMATION, (name, result.reason, result.detail)
            assert result.reason != Reason.CORRUPT
    noise = inspect_image(image_bytes(9, size=(64, 64)), settings)
    assert noise.ok


def test_a_run_records_each_quality_reject_and_keeps_the_rest(tmp_path):
    import curation

    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "blank.png").write_bytes(encoded(Image.new("RGB", (300, 200), (255, 255, 255))))
    (pool / "banner.jpg").write_bytes(encoded(photo(size=(900, 100)), "JPEG"))
    (pool / "photo.jpg").write_bytes(encoded(photo(), "JPEG"))
    spec = {"name": "quality", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"quality": {"max_aspect_ratio": 5}}}, "execution": {"executor": "local"}}  # fmt: skip
    result = curation.run(spec, home=tmp_path / "home")
    version = curation.open_version(result.version, home=tmp_path / "home")
    fates = {row["uri"].rsplit("/", 1)[-1]: (row["reason"], row["detail"]) for row in version.provenance().to_pylist()}
    assert fates["photo.jpg"] == (None, None) and version.samples().num_rows == 1
    assert fates["blank.png"][0] == "low_information" and "min_contrast 2.0" in fates["blank.png"][1]
    assert (
        fates["banner.jpg"][0] == "extreme_aspect"
        and "aspect ratio 9.00 > max_aspect_ratio 5" in fates["banner.jpg"][1]
    )
    assert version.manifest["dropped"]["ingest"] == {"extreme_aspect": 1, "low_information": 1}
