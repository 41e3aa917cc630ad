"""publish.image: published images resized and re-encoded deterministically, provenance kept on the original,
failures recorded per image; end to end on real Ray, and resumable by block."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageOps

import curation
from curation import audit
from curation.audit.queries import audit_image
from curation.audit.statement import build_statement, render_markdown
from curation.config import ImageTransform
from curation.core.progress import Progress
from curation.executors.local import LocalExecutor
from curation.ingest import Block
from curation.publish.transform import derive_block, derive_images, derive_key, transform_image
from curation.store.blobs import BlobStore
from curation.store.catalog import Catalog
from curation.store.objects import LocalStore, read_parquet
from tests.conftest import FIXTURE_IMAGES
from tests.corpus import exif_rotated_jpeg, image_bytes

GPS = 0x8825  # the EXIF GPS IFD pointer


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("resize", "size", "expected"),
    [("shorter_side", 60, (120, 60)), ("longer_side", 60, (60, 30)), ("center_crop", 60, (60, 60)),
     ("shorter_side", 500, None), ("none", 60, None), ("center_crop", 500, (150, 150))],
)  # fmt: skip
def test_sizes_follow_the_resize_rule_and_never_upscale(resize, size, expected):
    original = image_bytes(1, (300, 150))
    derived = transform_image(original, "JPEG", ImageTransform(resize=resize, size=size))
    if expected is None:  # within size, same format: the original bytes are published
        assert derived is None
        return
    assert (derived.width, derived.height) == expected == opened(derived.data).size
    assert derived.format == opened(derived.data).format == "JPEG"


def test_upscale_when_asked():
    derived = transform_image(image_bytes(1, (40, 20)), "JPEG", ImageTransform(size=80, upscale=True))
    assert (derived.width, derived.height) == (160, 80)


def test_exif_orientation_goes_into_the_pixels_and_metadata_is_dropped():
    derived = transform_image(exif_rotated_jpeg(6), "JPEG", ImageTransform(size=16))  # stored 64x32, shown 32x64
    assert (derived.width, derived.height) == (16, 32)
    assert not opened(derived.data).getexif()

    exif = Image.Exif()
    exif[GPS] = {2: (48.0, 51.0, 24.0)}  # a latitude
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((80, 120, 3), np.uint8)).save(buffer, "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(buffer.getvalue())).getexif().get(GPS) is not None
    derived = transform_image(buffer.getvalue(), "JPEG", ImageTransform(size=40))
    assert GPS not in opened(derived.data).getexif()


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
def test_every_orientation_keeps_the_shown_aspect(fmt, orientation):
    """Pillow turns TIFFs itself and JPEGs only through exif_transpose: either way the shown shape is kept."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 400, 3), np.uint8)).save(
        buffer, fmt, exif=exif.tobytes())  # fmt: skip
    shown = ImageOps.exif_transpose(opened(buffer.getvalue())).size  # what a viewer shows
    for resize, expected in (("shorter_side", (shown[0] * 100 // min(shown), shown[1] * 100 // min(shown))),
                             ("center_crop", (100, 100))):  # fmt: skip
        derived = transform_image(buffer.getvalue(), fmt, ImageTransform(resize=resize, size=100, format="PNG"))
        assert (derived.width, derived.height) == expected, (resize, shown)


def test_a_very_wide_image_is_centre_cropped_without_a_wide_intermediate():
    """16000 x 40 to a 1024 square, upscaled: resizing first would build a 409,600 x 1,024 image (1.8 GB). VmHWM,
    not ru_maxrss: the latter keeps the forking test process's high-water mark across exec."""
    script = (
        "import io\n"
        "from PIL import Image\n"
        "from curation.config import ImageTransform\n"
        "from curation.publish.transform import transform_image\n"
        "buffer = io.BytesIO()\n"
        "Image.new('RGB', (16000, 40), (200, 10, 10)).save(buffer, 'PNG')\n"
        "settings = ImageTransform(resize='center_crop', size=1024, upscale=True)\n"
        "derived = transform_image(buffer.getvalue(), 'PNG', settings)\n"
        "peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"  # this image's peak
        "print(derived.width, derived.height, int(peak.split()[1]) // 1024)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    width, height, peak_mb = map(int, output.split())
    assert (width, height) == (1024, 1024) and peak_mb < 700, peak_mb


def test_transparency_lands_on_white_in_jpeg_and_stays_in_png():
    buffer = io.BytesIO()
    Image.new("RGBA", (200, 100), (255, 0, 0, 0)).save(buffer, "PNG")
    as_jpeg = transform_image(buffer.getvalue(), "PNG", ImageTransform(size=50, format="JPEG"))
    pixel = opened(as_jpeg.data).getpixel((50, 25))
    assert as_jpeg.mode == "RGB" and all(channel > 250 for channel in pixel)
    as_png = transform_image(buffer.getvalue(), "PNG", ImageTransform(size=50))
    assert as_png.format == "PNG" and as_png.mode == "RGBA" and opened(as_png.data).getpixel((50, 25))[3] == 0


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_png_colour_key_is_transparency_too(mode):
    """A tRNS colour key (one transparent grey level or colour) lands on white in JPEG like an alpha band."""
    buffer = io.BytesIO()
    key = 0 if mode == "L" else (0, 0, 0)
    Image.new(mode, (200, 100), key).save(buffer, "PNG", transparency=key)
    as_jpeg = transform_image(buffer.getvalue(), "PNG", ImageTransform(size=50, format="JPEG"))
    assert all(channel > 250 for channel in opened(as_jpeg.data).convert("RGB").getpixel((50, 25)))
    as_png = transform_image(buffer.getvalue(), "PNG", ImageTransform(size=50))
    assert as_png.mode == "RGBA" and opened(as_png.data).getpixel((50, 25))[3] == 0


def sixteen_bit_grey_with_a_transparent_level() -> bytes:
    """Level 20000 of 65535 (78 in 8 bits) with its left half at 40000, the level its tRNS chunk calls transparent."""
    levels = np.full((100, 200), 20000, np.uint16)
    levels[:, :100] = 40000
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, "PNG", transparency=40000)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_16_bit_grey_with_a_transparent_level_keeps_its_levels_and_its_transparency(fmt):
    """Pillow's own convert clips 16-bit levels (all would turn white) and its transparent level matches no 8-bit
    pixel; the published image keeps the grey and the transparent half (white where the format has no alpha)."""
    derived = transform_image(sixteen_bit_grey_with_a_transparent_level(), "PNG", ImageTransform(size=50, format=fmt))
    pixels = np.asarray(opened(derived.data).convert("RGBA"), np.int16)
    grey, transparent = pixels[:, 75], pixels[:, 25]
    assert np.abs(grey - [78, 78, 78, 255]).max() <= 2
    if fmt == "JPEG":
        assert (transparent[:, :3] > 250).all()
    else:
        assert (transparent[:, 3] == 0).all()


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "CMYK"), ("PNG", "L"), ("GIF", "RGB"), ("WEBP", "RGB")])
def test_other_modes_and_formats_re_encode(fmt, mode):
    original = image_bytes(3, (128, 96), fmt=fmt, mode=mode)
    derived = transform_image(original, fmt, ImageTransform(size=48))
    reopened = opened(derived.data)
    assert derived.format == reopened.format == fmt and min(reopened.size) == 48
    assert derived.mode == reopened.mode


def test_a_format_change_alone_re_encodes_and_mpo_publishes_as_jpeg():
    derived = transform_image(image_bytes(2, (64, 48), fmt="PNG"), "PNG", ImageTransform(size=512, format="WEBP"))
    assert derived.format == "WEBP" and (derived.width, derived.height) == (64, 48)
    assert transform_image(image_bytes(2, (64, 48)), "MPO", ImageTransform(size=512)).format == "JPEG"


def test_the_same_bytes_give_the_same_published_bytes():
    original = image_bytes(5, (400, 300))
    settings = ImageTransform(size=100, format="WEBP", quality=70)
    first, second = transform_image(original, "JPEG", settings), transform_image(original, "JPEG", settings)
    assert first.data == second.data
    assert transform_image(original, "JPEG", ImageTransform(size=100, quality=30)).data != first.data


def test_bytes_the_decoder_refuses_raise():
    with pytest.raises(OSError):
        transform_image(image_bytes(5, (400, 300))[:300], "JPEG", ImageTransform(size=100))


def test_a_failing_image_is_its_row_and_the_block_goes_on(tmp_path):
    blobs, work = BlobStore(LocalStore(tmp_path / "blobs")), LocalStore(tmp_path / "runs")
    good = blobs.put(image_bytes(1, (200, 100)))
    bad = blobs.put(image_bytes(2, (200, 100))[:200])
    count = derive_block(Block(0, "publish", "derive", ((bad, "JPEG"), (good, "JPEG"))), ImageTransform(size=50),
                         blobs, work, "run-1")  # fmt: skip
    rows = read_parquet(work, derive_key("run-1", 0)).to_pylist()
    assert count == 2 and [row["image_id"] for row in rows] == [bad, good]
    assert rows[0]["sha256"] is None and "OSError" in rows[0]["error"]
    assert rows[1]["error"] is None and (rows[1]["width"], rows[1]["height"]) == (100, 50)
    assert hashlib.sha256(blobs.get(rows[1]["sha256"])).hexdigest() == rows[1]["sha256"]


def test_finished_blocks_are_reused_and_stale_ones_redone(tmp_path):
    blobs, work = BlobStore(LocalStore(tmp_path / "blobs")), LocalStore(tmp_path / "runs")
    samples = [{"image_id": blobs.put(image_bytes(seed, (90, 60))), "format": "JPEG", "bytes": 1} for seed in range(5)]
    samples.sort(key=lambda sample: sample["image_id"])
    settings = ImageTransform(size=30)

    def derive(subset):
        return derive_images(subset, settings, blobs, work, "run-1", LocalExecutor, block_size=2,
                             progress=Progress(show=False))  # fmt: skip

    first, stats = derive(samples)
    assert stats["blocks"] == 3 and stats["resumed_blocks"] == 0 and stats["transformed"] == 5
    again, stats = derive(samples)
    assert again == first and stats["blocks"] == 0 and stats["resumed_blocks"] == 3
    fewer, stats = derive(samples[1:])  # an opt-out between crash and resume shifts every block
    assert stats["resumed_blocks"] == 0 and set(fewer) == {sample["image_id"] for sample in samples[1:]}
    assert all(fewer[key] == first[key] for key in fewer)


def test_a_run_publishes_the_transformed_images_with_their_provenance(ray_local, tmp_path, home):
    pool = tmp_path / "pool"
    pool.mkdir()
    originals = {}
    for number, path in enumerate(sorted((FIXTURE_IMAGES / "openclipart").rglob("*.png"))[:12]):
        originals[f"clip-{number}.png"] = path.read_bytes()
    originals["photo.jpg"] = image_bytes(9, (900, 600))
    wide = io.BytesIO()
    Image.new("RGB", (20000, 16), (10, 200, 30)).save(wide, "PNG")  # WebP's limit is 16383 pixels a side
    originals["wide.png"] = wide.getvalue()
    for name, data in originals.items():
        (pool / name).write_bytes(data)
    settings = {"resize": "shorter_side", "size": 64, "format": "WEBP", "quality": 80}
    spec = {"name": "small", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"decode": {"min_side": 16}}, "execution": {"executor": "ray", "block_size": 4},
            "publish": {"shard_max_samples": 5, "image": settings}}  # fmt: skip

    result = curation.run(spec, home=home, progress=False)

    version = curation.open_version(result.version, home=home)
    assert version.verify() == []
    rows = {row["image_id"]: row for row in version.samples().to_pylist()}
    ids = {name: hashlib.sha256(data).hexdigest() for name, data in originals.items()}
    assert set(rows) == set(ids.values()) - {ids["wide.png"]}
    members = {}
    for url in version.shard_urls():
        with tarfile.open(url) as archive:
            members.update({m.name: archive.extractfile(m).read() for m in archive if not m.name.endswith(".json")})
    for name, data in originals.items():
        if name == "wide.png":
            continue
        row, original = rows[ids[name]], opened(data)
        published = members[row["member"]]
        assert row["member"].endswith(".webp") and opened(published).format == "WEBP"
        assert hashlib.sha256(published).hexdigest() == row["sha256"] != row["image_id"]
        assert json.loads(row["transform"]) == {**settings, "upscale": False}
        scale = min(1.0, 64 / min(original.size))
        assert (row["width"], row["height"]) == opened(published).size
        assert abs(row["width"] - original.size[0] * scale) <= 1 and abs(row["height"] - original.size[1] * scale) <= 1
        assert row["bytes"] == len(published)
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        (wide_outcome,) = catalog.rows("SELECT stage, reason, detail FROM outcomes WHERE run_id = ? AND image_id = ?",
                                       [result.run_id, ids["wide.png"]])  # fmt: skip
    assert wide_outcome["stage"] == "publish" and wide_outcome["reason"] == "transform_failed"
    assert "WebP" in wide_outcome["detail"]
    assert version.manifest["dropped"]["publish"] == {"transform_failed": 1}
    assert result.stats["derive"]["transformed"] == 13 and result.stats["derive"]["failed"] == 1

    statement = build_statement(home, result.version)
    assert statement["dataset"]["published_images"] == {**settings, "upscale": False}
    assert "resized / re-encoded at publishing" in render_markdown(statement)

    rerun = curation.run(spec, home=home, progress=False, fresh=True)
    assert rerun.unchanged and rerun.version == result.version  # the same bytes out: nothing new to publish

    # Someone finds their picture in the release: the published file's hash names the original
    photo = rows[ids["photo.jpg"]]
    assert audit_image(home, photo["sha256"])["image_ids"] == [photo["image_id"]]
    request = audit.add_optout(home, kind="sha256", value=photo["sha256"])
    removed = audit.apply_optouts(home, "small").removed
    assert [(m.image_id, m.request_id) for m in removed] == [(photo["image_id"], request.request_id)]
