"""`publish.image` speed and what it buys: resizing real photos for publishing, against img2dataset's resizer
and a plain Pillow resize on the same files in the same run, and the trainer-side decode it saves.

    apt-get install plasma-workspace-wallpapers                       # ~200 real JPEG/PNG wallpapers, up to 5K
    python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset  # its own venv: it pins other packages
    python benchmarks/publish_images.py --img2dataset-python /tmp/i2d/bin/python

Figures (images per second, one process unless named):
- `ours_img_s`: `transform_image` (shorter side to --size, JPEG at --quality) from bytes to encoded bytes;
- `ours_ray_img_s`: the `derive` stage itself on a local Ray instance with every core (blocks of 16; blob
  writes included, Ray start-up not);
- `pil_full_decode_img_s`: the same with Pillow but decoding every JPEG at full size (no DCT-scaled draft);
- `img2dataset_img_s`: img2dataset's `Resizer` (keep_ratio, resize_only_if_bigger, OpenCV, the same size,
  format and quality) in a subprocess with its own venv; `ours_vs_img2dataset` is our one-process rate over it;
- `decode_*`: Pillow decode of every original vs every published image to RGB (the trainer's first step);
- `psnr_vs_full_decode_db` (mean) and `psnr_vs_full_decode_min_db`: our output against the full-decode output,
  over the JPEGs decoded at a reduced DCT scale (`drafted_images`: shorter side at least twice --size), i.e.
  what the draft costs in quality.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, cpu_device, print_figures, print_header, utc_now, write_result  # noqa: E402, I001
from curation.config import ImageTransform  # noqa: E402
from curation.core.progress import Progress  # noqa: E402
from curation.decode.pixels import flatten_to_rgb  # noqa: E402
from curation.publish.transform import derive_images, target_size, transform_image  # noqa: E402
from curation.store.blobs import BlobStore  # noqa: E402
from curation.store.objects import LocalStore  # noqa: E402

IMG2DATASET = """
import json, sys, time
from img2dataset.resizer import Resizer
size, quality, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
resizer = Resizer(image_size=size, resize_mode="keep_ratio", resize_only_if_bigger=True, encode_format="jpg",
                  encode_quality=quality)
blobs = [open(path, "rb").read() for path in paths]
started = time.perf_counter()
failed = sum(resizer(__import__("io").BytesIO(blob))[-1] is not None for blob in blobs)
print(json.dumps({"seconds": time.perf_counter() - started, "failed": failed}))
"""


def full_decode(data: bytes, settings: ImageTransform) -> bytes:
    """The plain way: decode at full size, orient, flatten, Lanczos, encode (no draft)."""
    with Image.open(io.BytesIO(data)) as image:
        image = flatten_to_rgb(ImageOps.exif_transpose(image))
    size = target_size(*image.size, settings)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=settings.quality)
    return out.getvalue()


def timed(work, originals: list[bytes], formats: list[str]) -> tuple[list, list[float]]:
    """Each image's result and seconds."""
    results, seconds = [], []
    for blob, fmt in zip(originals, formats):
        started = time.perf_counter()
        results.append(work(blob, fmt))
        seconds.append(time.perf_counter() - started)
    return results, seconds


def decode_rate(blobs: list[bytes]) -> float:
    started = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.convert("RGB").load()
    return len(blobs) / (time.perf_counter() - started)


def psnr(a: bytes, b: bytes) -> float:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), np.float64)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float64)
    if x.shape != y.shape:
        return float("nan")
    return float(10 * np.log10(255**2 / max(np.mean((x - y) ** 2), 1e-12)))


def ray_rate(samples: list[dict], blobs: BlobStore, work: LocalStore, settings: ImageTransform) -> float:
    from curation.config import ExecutionSettings
    from curation.executors import make_executor

    executor = make_executor(ExecutionSettings(executor="ray"))
    try:
        started = time.perf_counter()
        derive_images(samples, settings, blobs, work, "bench", lambda: executor, block_size=16,
                      progress=Progress(show=False))  # fmt: skip
        return len(samples) / (time.perf_counter() - started)
    finally:
        executor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("/usr/share/wallpapers"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--img2dataset-python", default=None, help="a python with img2dataset installed")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    now, command = utc_now(), command_line(argv, "benchmarks/publish_images.py")
    device = cpu_device()
    print_header(now, command, device)

    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"no JPEG or PNG under {args.images}: apt-get install plasma-workspace-wallpapers")
    originals = [path.read_bytes() for path in paths]
    formats = [Image.open(io.BytesIO(blob)).format for blob in originals]
    settings = ImageTransform(resize="shorter_side", size=args.size, format="JPEG", quality=args.quality)
    pixels = sum(np.prod(Image.open(io.BytesIO(blob)).size) for blob in originals)
    figures: dict[str, float] = {"images": len(paths), "jpeg_share": round(formats.count("JPEG") / len(paths), 3),
                                 "mean_megapixels": round(pixels / len(paths) / 1e6, 2), "size": args.size,
                                 "quality": args.quality}  # fmt: skip

    ours, ours_s = timed(lambda blob, fmt: transform_image(blob, fmt, settings), originals, formats)
    published = [derived.data if derived else blob for derived, blob in zip(ours, originals)]
    plain, plain_s = timed(lambda blob, fmt: full_decode(blob, settings), originals, formats)
    jpeg = [i for i, fmt in enumerate(formats) if fmt == "JPEG"]
    figures["ours_img_s"] = round(len(paths) / sum(ours_s), 1)
    figures["pil_full_decode_img_s"] = round(len(paths) / sum(plain_s), 1)
    figures["ours_vs_pil_full_decode"] = round(figures["ours_img_s"] / figures["pil_full_decode_img_s"], 2)
    figures["ours_jpeg_img_s"] = round(len(jpeg) / sum(ours_s[i] for i in jpeg), 1)
    figures["pil_full_decode_jpeg_img_s"] = round(len(jpeg) / sum(plain_s[i] for i in jpeg), 1)
    # Where the draft applied (a JPEG at least twice the target), how far its output is from the full decode's
    least = 2 * args.size  # the smallest shorter side that decodes at half scale or less
    drafted = [i for i in jpeg if min(Image.open(io.BytesIO(originals[i])).size) >= least]
    figures["drafted_images"] = len(drafted)
    if drafted:
        scores = [psnr(published[i], plain[i]) for i in drafted]
        figures["psnr_vs_full_decode_db"] = round(float(np.mean(scores)), 2)
        figures["psnr_vs_full_decode_min_db"] = round(float(np.min(scores)), 2)

    if args.img2dataset_python:
        script = subprocess.run([args.img2dataset_python, "-c", IMG2DATASET, str(args.size), str(args.quality),
                                 *map(str, paths)], capture_output=True, text=True, check=True)  # fmt: skip
        measured = json.loads(script.stdout.strip().splitlines()[-1])
        figures["img2dataset_img_s"] = round(len(paths) / measured["seconds"], 1)
        figures["img2dataset_failed"] = measured["failed"]
        figures["ours_vs_img2dataset"] = round(figures["ours_img_s"] / figures["img2dataset_img_s"], 2)

    if not args.no_ray:
        with tempfile.TemporaryDirectory() as scratch:
            blobs, work = BlobStore(LocalStore(Path(scratch) / "blobs")), LocalStore(Path(scratch) / "runs")
            samples = [{"image_id": blobs.put(blob), "format": fmt, "bytes": len(blob)}
                       for blob, fmt in zip(originals, formats)]  # fmt: skip
            figures["ours_ray_img_s"] = round(ray_rate(samples, blobs, work, settings), 1)

    figures["bytes_in_mb"] = round(sum(map(len, originals)) / 1e6, 1)
    figures["bytes_out_mb"] = round(sum(map(len, published)) / 1e6, 1)
    figures["decode_originals_img_s"] = round(decode_rate(originals), 1)
    figures["decode_published_img_s"] = round(decode_rate(published), 1)
    figures["decode_speedup"] = round(figures["decode_published_img_s"] / figures["decode_originals_img_s"], 1)
    print_figures(figures)
    if not args.no_write:
        notes = (f"{len(paths)} files under {args.images} (Debian plasma-workspace-wallpapers); shorter side to "
                 f"{args.size} px, JPEG q{args.quality}; one process unless named ray")  # fmt: skip
        write_result("publish_images", "cpu", now, device=device, command=command, figures=figures,
                     output=args.output, notes=notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
