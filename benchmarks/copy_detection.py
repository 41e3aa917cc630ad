"""Copy-detection quality: precision and recall of duplicate PAIRS, per method and per transformation, on real
openly licensed images installed on this machine and transformed copies of them of the kinds met on the web.

    python benchmarks/copy_detection.py                     # ~310 originals x 15 images: a few minutes on 2 cores
    python benchmarks/copy_detection.py --originals 60 --vit-originals 10 --no-write   # smoke run

Originals (read from the machine, never committed, never written outside a temporary directory):

* Debian's `openclipart-png` (public-domain clip art, /usr/share/openclipart/png): `--originals` files sampled
  with a fixed seed from the regular files (not the symlinks), skipping files over 1 MB, images with a side under
  96 px, near-blank ones (white-on-transparent art is blank once flattened), exact pixel copies, and more than one
  file of a name series (names equal once digits and punctuation are removed: `star_85pt22step`,
  `star_25pt06step`, ... are variations of one drawing, not different images).
* Debian's `plasma-workspace-wallpapers` (photos and artwork; one image per wallpaper, the landscape one), if
  installed (`apt-get install plasma-workspace-wallpapers`).
* scikit-image's bundled sample images (`skimage.data`: astronaut, coffee, chelsea, rocket, ...), if installed.

Transparency is composited onto white, and every original is scaled to at most 768 px on its longer side. Clip
art originals are stored as PNG, photos as JPEG q95. Each original gets one copy per transformation (parameters
drawn from a per-original seeded generator): see TRANSFORMS. Copies are JPEG q90 unless the transformation says
otherwise. Ground truth: (original, copy) and (copy, copy) pairs of the same original are duplicates; every other
pair is not.

Methods: exact (SHA-256 of the bytes), our pHash (`curation.dedup.perceptual`: `near_pairs` at several Hamming
distances), the builtin embedder (`knn_edges`, flat index, k=64, several cosine thresholds), the pipeline's
default dedup (pHash d4 + builtin 0.9, both edge sets in one graph), a random-init timm ViT-S/16 (no pretrained
weights can be had offline: shown only to make the point that random weights do not detect copies; on a subset),
and, as baselines, imagededup's PHash (`encode_images` + `find_duplicates`) and CNN (its default downloads
MobileNetV3 weights: unavailable offline, reported as such).

Pairs are scored two ways: `edge` = the pairs the method reports directly; the main figures use the pipeline's
view, the connected components of those edges (what `group_duplicates` groups: a pair is predicted when both
images land in one component). Per-transformation recall is the share of (original, its copy) pairs in one
component. `<method>_merged_groups` counts ground-truth groups that share a component with another group.
Nothing imports this file; it asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import platform
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import cores, cpu_model, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OPENCLIPART = Path("/usr/share/openclipart/png")
WALLPAPERS = Path("/usr/share/wallpapers")
SKIMAGE_NAMES = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock", "moon", "page", "text",
    "hubble_deep_field", "immunohistochemistry", "logo", "grass", "gravel", "brick", "colorwheel", "retina", "cell",
    "stereo_motorcycle",
)  # fmt: skip
MAX_SIDE = 768
PNG_MAGIC = b"\x89PNG"
MAX_CLIPART_BYTES = 1 << 20
MIN_SIDE = 96
TRANSFORMS = (
    "resize",  # shorter copy: 30-60 % of each side
    "crop80",  # 75-90 % of the area kept, random position, aspect kept
    "crop50",  # 50 % of the area kept
    "jpeg_q30",  # JPEG re-encode at quality 30
    "jpeg_q70",  # JPEG re-encode at quality 70
    "color_jitter",  # brightness, contrast, saturation 0.7-1.3 / 0.5-1.5, hue shift up to 0.06 turns
    "grayscale",
    "hflip",
    "rotate",  # 3-10 degrees either way, canvas expanded, white corners
    "overlay",  # caption on a dark band + a semi-transparent logo + watermark text
    "border",  # solid border of 5-15 % of the side, random colour
    "screenshot",  # scaled onto a 1280x800 UI canvas: title bar, tabs, sidebar, text lines (PNG)
    "combo",  # crop80 + resize 50 % + JPEG q50 + slight colour change
    "resave",  # the same pixels, re-encoded as PNG with a text chunk: different bytes only
)
PHASH_DISTANCES = (0, 4, 8, 10)
EMBEDDER_THRESHOLDS = (0.7, 0.8, 0.9, 0.95)
VIT_THRESHOLDS = (0.9, 0.95)
IMAGEDEDUP_DISTANCES = (10, 4)


# --- originals -----------------------------------------------------------------------------------------------
def flatten(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white, longer side at most MAX_SIDE."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)  # fmt: skip
    return image


def series(name: str) -> str:
    return re.sub(r"[\d_\-. ]+", "", Path(name).stem.lower())


def encode(image: Image.Image, fmt: str, quality: int = 90, **extra: Any) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, "JPEG", quality=quality, **extra)
    else:
        image.save(buffer, fmt, **extra)
    return buffer.getvalue()


class Originals:
    def __init__(self) -> None:
        self.images: list[Image.Image] = []
        self.names: list[str] = []
        self.kinds: list[str] = []  # clipart | wallpaper | photo
        self.skipped: Counter[str] = Counter()
        self._pixels: set[str] = set()

    def add(self, image: Image.Image, name: str, kind: str) -> bool:
        grey = np.asarray(image.convert("L"), np.float32)
        if grey.std() < 8:
            self.skipped["near_blank"] += 1
            return False
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        if digest in self._pixels:
            self.skipped["same_pixels"] += 1
            return False
        self._pixels.add(digest)
        self.images.append(image)
        self.names.append(name)
        self.kinds.append(kind)
        return True


def load_originals(count: int, seed: int, wallpapers: bool, skimage: bool) -> Originals:
    found = Originals()
    files = sorted(p for p in OPENCLIPART.rglob("*.png") if p.is_file() and not p.is_symlink())
    random.Random(seed).shuffle(files)
    seen_series: set[str] = set()
    taken = 0
    for path in files:
        if taken >= count:
            break
        if path.stat().st_size > MAX_CLIPART_BYTES:
            found.skipped["clipart_over_1MB"] += 1
            continue
        if series(path.name) in seen_series:
            found.skipped["clipart_same_series"] += 1
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as raw:
                    if min(raw.size) < MIN_SIDE:
                        found.skipped["clipart_small"] += 1
                        continue
                    image = flatten(raw)
        except Exception:  # noqa: BLE001 - an unreadable file is skipped, as a crawler would
            found.skipped["clipart_unreadable"] += 1
            continue
        if found.add(image, f"openclipart:{path.relative_to(OPENCLIPART)}", "clipart"):
            seen_series.add(series(path.name))
            taken += 1
    if wallpapers and WALLPAPERS.is_dir():
        for folder in sorted(p for p in WALLPAPERS.iterdir() if (p / "contents" / "images").is_dir()):
            candidates = []
            for path in (folder / "contents" / "images").iterdir():
                match = re.fullmatch(r"(\d+)x(\d+)", path.stem)
                if match and int(match[1]) > int(match[2]):  # landscape; portrait ones are crops of it
                    candidates.append((int(match[1]), path))
            if candidates:
                with Image.open(min(candidates)[1]) as raw:
                    found.add(flatten(raw), f"wallpaper:{folder.name}", "wallpaper")
    if skimage:
        try:
            import skimage.data
        except ImportError:
            found.skipped["skimage_not_installed"] += 1
        else:
            for name in SKIMAGE_NAMES:
                try:
                    array = getattr(skimage.data, name)()
                except Exception:  # noqa: BLE001 - some need a download (pooch): skipped offline
                    found.skipped["skimage_unavailable"] += 1
                    continue
                array = array[0] if isinstance(array, tuple) else array
                found.add(flatten(Image.fromarray(np.asarray(array, np.uint8))), f"skimage:{name}", "photo")
    return found


# --- transformations -----------------------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _crop(image: Image.Image, area: float, rng: np.random.Generator) -> Image.Image:
    side = math.sqrt(area)
    width, height = max(1, round(image.width * side)), max(1, round(image.height * side))
    left = int(rng.integers(0, image.width - width + 1))
    top = int(rng.integers(0, image.height - height + 1))
    return image.crop((left, top, left + width, top + height))


def _jitter(image: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(1 + strength * rng.uniform(-0.3, 0.3))
    image = ImageEnhance.Contrast(image).enhance(1 + strength * rng.uniform(-0.3, 0.3))
    image = ImageEnhance.Color(image).enhance(1 + strength * rng.uniform(-0.5, 0.5))
    shift = strength * rng.uniform(-0.06, 0.06)
    hsv = np.asarray(image.convert("HSV"), np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + round(shift * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def _overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    band = max(12, base.height // 8)
    draw.rectangle((0, base.height - band, base.width, base.height), fill=(0, 0, 0, 160))
    caption = random.Random(int(rng.integers(1 << 30))).choice(
        ["when the code finally compiles", "Monday mood", "LOOK AT THIS", "share if you agree", "new post!"]
    )
    draw.text((band // 3, base.height - band + band // 6), caption, font=_font(band * 2 // 3), fill=(255, 255, 255))
    radius = max(6, min(base.size) // 10)
    cx, cy = base.width - radius - 6, radius + 6
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(*colour, 190))
    draw.text((cx - radius // 2, cy - radius // 3), "Lg", font=_font(radius), fill=(255, 255, 255, 230))
    draw.text((6, 6), "@example.site", font=_font(max(10, base.height // 20)), fill=(255, 255, 255, 140))
    return Image.alpha_composite(base, layer).convert("RGB")


def _screenshot(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    canvas_w, canvas_h = 1280, 800
    dark = bool(rng.integers(0, 2))
    canvas = Image.new("RGB", (canvas_w, canvas_h), (32, 33, 36) if dark else (242, 242, 245))
    draw = ImageDraw.Draw(canvas)
    ink = (220, 220, 220) if dark else (40, 40, 40)
    draw.rectangle((0, 0, canvas_w, 36), fill=(60, 60, 66) if dark else (210, 212, 218))  # title bar + tabs
    for tab in range(3):
        draw.rectangle((80 + tab * 190, 6, 250 + tab * 190, 36), fill=(90, 90, 96) if dark else (250, 250, 252))
        draw.text((92 + tab * 190, 12), f"Tab {tab + 1} - page", font=_font(14), fill=ink)
    draw.rectangle((0, 36, canvas_w, 76), fill=(45, 45, 50) if dark else (228, 229, 233))  # address bar
    draw.rounded_rectangle((120, 44, 900, 68), radius=10, fill=(70, 70, 76) if dark else (255, 255, 255))
    draw.text((136, 48), "https://social.example/post/1234567", font=_font(14), fill=ink)
    draw.rectangle((0, 76, 220, canvas_h), fill=(40, 40, 44) if dark else (232, 233, 236))  # sidebar
    for row in range(8):
        draw.text((20, 100 + row * 34), f"Menu item {row + 1}", font=_font(15), fill=ink)
    share = rng.uniform(0.45, 0.65)
    box_w, box_h = int((canvas_w - 260) * share), canvas_h - 76 - 140
    scale = min(box_w / image.width, box_h / image.height)
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)  # fmt: skip
    left, top = 250 + int(rng.integers(0, 60)), 76 + 60
    draw.text((left, 92), "Someone shared a picture", font=_font(20), fill=ink)
    canvas.paste(shown, (left, top))
    for row in range(3):
        draw.text((left, top + shown.height + 12 + row * 22), "Lorem ipsum dolor sit amet " * 2, font=_font(15),
                  fill=ink)  # fmt: skip
    return canvas


def transform(image: Image.Image, name: str, rng: np.random.Generator) -> bytes:
    if name == "resize":
        factor = rng.uniform(0.3, 0.6)
        return encode(image.resize((max(8, round(image.width * factor)), max(8, round(image.height * factor))),
                                   Image.Resampling.BILINEAR), "JPEG")  # fmt: skip
    if name == "crop80":
        return encode(_crop(image, rng.uniform(0.75, 0.9), rng), "JPEG")
    if name == "crop50":
        return encode(_crop(image, 0.5, rng), "JPEG")
    if name == "jpeg_q30":
        return encode(image, "JPEG", 30)
    if name == "jpeg_q70":
        return encode(image, "JPEG", 70)
    if name == "color_jitter":
        return encode(_jitter(image, rng), "JPEG")
    if name == "grayscale":
        return encode(image.convert("L"), "JPEG")
    if name == "hflip":
        return encode(ImageOps.mirror(image), "JPEG")
    if name == "rotate":
        angle = float(rng.uniform(3, 10) * rng.choice([-1, 1]))
        rotated = image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
        return encode(rotated, "JPEG")
    if name == "overlay":
        return encode(_overlay(image, rng), "JPEG")
    if name == "border":
        pad = max(2, round(min(image.size) * rng.uniform(0.05, 0.15)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        return encode(ImageOps.expand(image, border=pad, fill=colour), "JPEG")
    if name == "screenshot":
        return encode(_screenshot(image, rng), "PNG")
    if name == "combo":
        cropped = _crop(image, rng.uniform(0.75, 0.9), rng)
        small = cropped.resize((max(8, cropped.width // 2), max(8, cropped.height // 2)), Image.Resampling.BILINEAR)
        return encode(_jitter(small, rng, 0.3), "JPEG", 50)
    if name == "resave":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "re-saved by a web site")
        return encode(image, "PNG", compress_level=9, pnginfo=info)
    raise ValueError(name)


def build_set(originals: Originals, seed: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """(images, ground-truth group per image, transform index per image: -1 for the original)."""
    images, groups, kinds = [], [], []
    for index, (image, kind) in enumerate(zip(originals.images, originals.kinds)):
        stored = encode(image, "PNG" if kind == "clipart" else "JPEG", 95)
        images.append(stored)
        groups.append(index)
        kinds.append(-1)
        rng = np.random.default_rng([seed, index])
        for t, name in enumerate(TRANSFORMS):
            if name == "resave":  # the stored original's decoded pixels, re-encoded
                with Image.open(io.BytesIO(stored)) as decoded:
                    images.append(transform(decoded.convert("RGB"), name, rng))
            else:
                images.append(transform(image, name, rng))
            groups.append(index)
            kinds.append(t)
    return images, np.asarray(groups), np.asarray(kinds)


# --- scoring -------------------------------------------------------------------------------------------------
def _pairs_within(labels: np.ndarray) -> int:
    counts = np.unique(labels, return_counts=True)[1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _labels(count: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from curation.dedup.groups import Edges, components

    return components(count, [Edges("any", np.asarray(i, np.int64), np.asarray(j, np.int64), np.ones(len(i)), 0.0)])


def score(prefix: str, i: np.ndarray, j: np.ndarray, groups: np.ndarray, kinds: np.ndarray, pixels: np.ndarray,
          figures: dict[str, Any]) -> dict[str, float]:  # fmt: skip
    """Pair precision/recall of direct edges and of their connected components; per-transformation recall; what
    group_duplicates keeps (one representative per component: most pixels, then smallest id)."""
    from curation.dedup.groups import Edges, group_duplicates

    count = len(groups)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    positives = _pairs_within(groups)
    low, high = np.minimum(i, j), np.maximum(i, j)
    keep = low != high
    edge_pairs = np.unique(np.stack([low[keep], high[keep]], axis=1), axis=0) if keep.any() else np.zeros((0, 2), int)
    edge_tp = int((groups[edge_pairs[:, 0]] == groups[edge_pairs[:, 1]]).sum())
    labels = _labels(count, edge_pairs[:, 0], edge_pairs[:, 1])
    predicted = _pairs_within(labels)
    joint = labels.astype(np.int64) * (int(groups.max()) + 1) + groups
    true_positive = _pairs_within(joint)
    row: dict[str, float] = {
        "precision": round(true_positive / predicted, 4) if predicted else None,
        "recall": round(true_positive / positives, 4),
        "edge_precision": round(edge_tp / len(edge_pairs), 4) if len(edge_pairs) else None,
        "edge_recall": round(edge_tp / positives, 4),
        "pred_pairs": predicted,
        "edge_pairs": int(len(edge_pairs)),
    }
    groups_per_label: dict[int, set[int]] = {}
    for label, group in zip(labels.tolist(), groups.tolist()):
        groups_per_label.setdefault(label, set()).add(group)
    merged = {g for members in groups_per_label.values() if len(members) > 1 for g in members}
    row["merged_groups"] = len(merged)
    ids = [f"{n:06d}" for n in range(count)]
    edges = Edges("any", edge_pairs[:, 0], edge_pairs[:, 1], np.ones(len(edge_pairs)), 0.0)
    dropped = {int(member.image_id) for member in group_duplicates(ids, pixels.tolist(), [edges])}
    survivors = np.asarray(sorted(set(range(count)) - dropped), np.int64)
    row["kept_images"] = len(survivors)
    row["lost_groups"] = int(len(np.unique(groups)) - len(np.unique(groups[survivors])))
    originals = np.flatnonzero(kinds < 0)
    origin_of = dict(zip(groups[originals].tolist(), originals.tolist()))
    for t, name in enumerate(TRANSFORMS):
        copies = np.flatnonzero(kinds == t)
        if len(copies):
            source = np.asarray([origin_of[g] for g in groups[copies]])
            row[f"recall_{name}"] = round(float((labels[copies] == labels[source]).mean()), 4)
    for key, value in row.items():
        if value is not None:
            figures[f"{prefix}_{key}"] = value
    return row


# --- methods -------------------------------------------------------------------------------------------------
def brute_force_pairs(hashes: list[int], max_distance: int) -> set[tuple[int, int]]:
    values = np.asarray(hashes, np.uint64)
    found = set()
    for a in range(len(values)):
        distance = np.bitwise_count(values[a] ^ values[a + 1 :])
        for b in np.flatnonzero(distance <= max_distance):
            found.add((a, a + 1 + int(b)))
    return found


def run_imagededup(images: list[bytes], workdir: Path, figures: dict[str, Any], notes: list[str], groups: np.ndarray,
                   kinds: np.ndarray, pixels: np.ndarray, ours: list[int]) -> dict[str, dict]:  # fmt: skip
    rows: dict[str, dict] = {}
    try:
        import imagededup
        from imagededup.methods import PHash
    except ImportError:
        notes.append("imagededup is not installed (pip install imagededup): its baselines were skipped.")
        return rows
    folder = workdir / "imagededup"
    folder.mkdir()
    names = []
    for index, data in enumerate(images):
        name = f"{index:06d}." + ("png" if data.startswith(PNG_MAGIC) else "jpg")
        (folder / name).write_bytes(data)
        names.append(name)
    position = {name: index for index, name in enumerate(names)}
    hasher = PHash(verbose=False)
    for logger in [name for name in logging.root.manager.loggerDict if name.startswith("imagededup")]:
        logging.getLogger(logger).setLevel(logging.WARNING)
    started = time.perf_counter()
    encodings = hasher.encode_images(image_dir=str(folder), num_enc_workers=cores())
    figures["imagededup_phash_encode_s"] = round(time.perf_counter() - started, 2)
    figures["imagededup_phash_encoded"] = len(encodings)
    theirs = np.asarray([int(encodings.get(name, "0" * 16), 16) for name in names], np.uint64)
    distance = np.bitwise_count(theirs ^ np.asarray(ours, np.uint64))
    figures["phash_vs_imagededup_mean_bits"] = round(float(distance.mean()), 3)
    figures["phash_vs_imagededup_identical_share"] = round(float((distance == 0).mean()), 4)
    figures["phash_vs_imagededup_max_bits"] = int(distance.max())
    for threshold in IMAGEDEDUP_DISTANCES:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=threshold,
                                           num_dist_workers=cores())  # fmt: skip
        figures[f"imagededup_phash_d{threshold}_search_s"] = round(time.perf_counter() - started, 2)
        pairs = [(position[a], position[b]) for a, dups in found.items() for b in dups]
        i, j = (np.asarray(col, np.int64) for col in zip(*pairs)) if pairs else (np.zeros(0, int), np.zeros(0, int))
        rows[f"imagededup_phash_d{threshold}"] = score(
            f"imagededup_phash_d{threshold}", i, j, groups, kinds, pixels, figures
        )
    try:
        from imagededup.methods import CNN

        os.environ["TORCH_HOME"] = str(workdir / "torch")  # a failed download leaves nothing behind
        quiet = logging.getLogger("imagededup.methods.cnn")  # has a handler: imagededup then leaves it alone
        quiet.addHandler(logging.NullHandler())
        quiet.setLevel(logging.WARNING)
        CNN(verbose=False)
        notes.append("imagededup CNN() constructed (weights were available locally) but was not scored.")
    except Exception as error:  # noqa: BLE001 - offline: the weights download fails
        figures["imagededup_cnn_available"] = 0
        notes.append(
            f"imagededup {imagededup.__version__} CNN: unavailable offline. Its default CNN() downloads torchvision's "
            f"ImageNet MobileNetV3-Small weights at construction and failed here ({type(error).__name__}: "
            f"{str(error)[:120]}). CNN(model_config=CustomModel(...)) would need pretrained weights too, and none "
            "exist on this machine (a random-init model would only repeat the random ViT row), so it was not run."
        )
    return rows


def embedding_rows(label: str, model: str, images: list[bytes], thresholds: tuple[float, ...],
                   figures: dict[str, Any], groups: np.ndarray, kinds: np.ndarray,
                   pixels: np.ndarray) -> tuple[dict[str, dict], np.ndarray]:  # fmt: skip
    """Embed `images` with `model` on the CPU (timed: `<label>_embed_s`), report the mean cosine within and between
    ground-truth groups, and score knn_edges(flat, k=64) at each threshold. Returns (rows, vectors)."""
    from curation.config import DedupStage, EmbedStage
    from curation.dedup.graph import knn_edges
    from curation.embed.registry import create_embedder

    embedder = create_embedder(EmbedStage(model=model, device="cpu"))
    started = time.perf_counter()
    parts, failed = [], 0
    for start in range(0, len(images), 64):
        vectors, errors = embedder.embed(images[start : start + 64])
        parts.append(vectors)
        failed += sum(error is not None for error in errors)
    vectors = np.concatenate(parts)
    figures[f"{label}_embed_s"] = round(time.perf_counter() - started, 2)
    figures[f"{label}_images"] = len(images)
    figures[f"{label}_embed_errors"] = failed
    cosine = vectors @ vectors.T
    same = groups[:, None] == groups[None, :]
    off = ~np.eye(len(images), dtype=bool)
    figures[f"{label}_mean_cos_same_group"] = round(float(cosine[same & off].mean()), 4)
    figures[f"{label}_mean_cos_other_group"] = round(float(cosine[~same].mean()), 4)
    rows = {}
    for threshold in thresholds:
        i, j, _s = knn_edges(vectors, threshold, DedupStage(k=64, index="flat"))
        rows[f"{label}_t{threshold}"] = score(f"{label}_t{threshold}", i, j, groups, kinds, pixels, figures)
    return rows, vectors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--originals", type=int, default=260, help="clip-art originals to sample (default 260)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and transformation seed (default 0)")
    parser.add_argument("--no-wallpapers", action="store_true", help="leave out plasma-workspace-wallpapers")
    parser.add_argument("--no-skimage", action="store_true", help="leave out scikit-image's sample photos")
    parser.add_argument("--vit-originals", type=int, default=30,
                        help="originals (x15 images) embedded by the random ViT; 0 skips it (default 30)")  # fmt: skip
    parser.add_argument("--skip-imagededup", action="store_true", help="leave out the imagededup baselines")
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    parser.add_argument("--no-write", action="store_true", help="print figures only, write no result file")
    args = parser.parse_args(argv)

    import torch

    from curation.config import DedupStage
    from curation.dedup.graph import knn_edges
    from curation.dedup.perceptual import near_pairs, phash

    torch.set_num_threads(cores())
    now = datetime.now(UTC)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", __file__, *argv])
    load_start = os.getloadavg()[0]
    device = f"cpu: {cpu_model()}, {cores()} cores"
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
               "cores": cores(), "gpu": None, "torch": torch.__version__}  # fmt: skip
    print(f"machine: {machine['platform']}, python {machine['python']}, {machine['cpu']}, {machine['cores']} cores")
    print(f"device:  {device}")
    print(f"date:    {now:%Y-%m-%d %H:%M:%S} UTC")
    print(f"command: {command}")
    print(f"load:    {load_start:.2f} (1-minute load average at start)")

    figures: dict[str, Any] = {}
    notes: list[str] = []
    rows: dict[str, dict] = {}
    started = time.perf_counter()
    originals = load_originals(args.originals, args.seed, not args.no_wallpapers, not args.no_skimage)
    images, groups, kinds = build_set(originals, args.seed)
    pixels = np.asarray([math.prod(Image.open(io.BytesIO(data)).size) for data in images], np.int64)
    by_kind = Counter(originals.kinds)
    figures.update({
        "originals": len(originals.images), "originals_clipart": by_kind["clipart"],
        "originals_wallpaper": by_kind["wallpaper"], "originals_photo": by_kind["photo"],
        "transforms": len(TRANSFORMS), "images": len(images), "positive_pairs": _pairs_within(groups),
        "build_s": round(time.perf_counter() - started, 2),
    })  # fmt: skip
    print(f"set:     {len(originals.images)} originals ({dict(by_kind)}), {len(TRANSFORMS)} transformations, "
          f"{len(images)} images, {figures['positive_pairs']} duplicate pairs, built in {figures['build_s']:.0f} s; "
          f"skipped {dict(originals.skipped)}")  # fmt: skip

    # exact
    digests = [hashlib.sha256(data).hexdigest() for data in images]
    first: dict[str, int] = {}
    pairs = []
    for index, digest in enumerate(digests):
        if digest in first:
            pairs.append((first[digest], index))
        first.setdefault(digest, index)
    i, j = (np.asarray(c, np.int64) for c in zip(*pairs)) if pairs else (np.zeros(0, int), np.zeros(0, int))
    rows["exact"] = score("exact", i, j, groups, kinds, pixels, figures)

    # our pHash
    started = time.perf_counter()
    hashes = [phash(data) for data in images]
    figures["phash_hash_s"] = round(time.perf_counter() - started, 2)
    for distance in PHASH_DISTANCES:
        started = time.perf_counter()
        i, j, _d = near_pairs(hashes, distance)
        figures[f"phash_d{distance}_pairs_s"] = round(time.perf_counter() - started, 2)
        brute = brute_force_pairs(hashes, distance)
        mismatch = len(brute ^ set(zip(i.tolist(), j.tolist())))
        figures[f"phash_d{distance}_near_pairs_vs_brute_force_mismatch"] = mismatch
        rows[f"phash_d{distance}"] = score(f"phash_d{distance}", i, j, groups, kinds, pixels, figures)

    # the embedders: the weight-free builtin and the bundled default (trained by `curate train`, shipped)
    found, vectors = embedding_rows("builtin", "builtin", images, EMBEDDER_THRESHOLDS, figures, groups, kinds, pixels)
    rows.update(found)
    rows.update(embedding_rows("bundled_default", "bundled:default", images, EMBEDDER_THRESHOLDS, figures, groups,
                               kinds, pixels)[0])  # fmt: skip

    # the pipeline's default: perceptual (pHash d4) + copy detection (builtin 0.9) in one graph
    defaults = DedupStage()
    pi, pj, _pd = near_pairs(hashes, defaults.phash_max_distance)
    bi, bj, _s = knn_edges(vectors, defaults.threshold, DedupStage(k=defaults.k, index="flat"))
    name = f"default_phash_d{defaults.phash_max_distance}_builtin_t{defaults.threshold}"
    rows[name] = score(name, np.concatenate([pi, bi]), np.concatenate([pj, bj]), groups, kinds, pixels, figures)
    wrong = Counter()
    for a, b in zip(np.concatenate([pi, bi]).tolist(), np.concatenate([pj, bj]).tolist()):
        if groups[a] != groups[b]:
            wrong[tuple(sorted((originals.names[groups[a]], originals.names[groups[b]])))] += 1
    examples = "; ".join(f"{a} ~ {b} ({n} edges)" for (a, b), n in wrong.most_common(6))

    workdir = Path(tempfile.mkdtemp(prefix="curation-copy-detection-"))
    try:
        if not args.skip_imagededup:
            rows.update(run_imagededup(images, workdir, figures, notes, groups, kinds, pixels, hashes))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.vit_originals > 0:  # a random network on a subset: it is slow on the CPU and detects nothing
        subset = np.flatnonzero(groups < min(args.vit_originals, len(originals.images)))
        found, _vectors = embedding_rows("vit_random", "timm:vit_small_patch16_224", [images[k] for k in subset],
                                         VIT_THRESHOLDS, figures, groups[subset], kinds[subset],
                                         pixels[subset])  # fmt: skip
        rows.update(found)

    # report
    header = f"{'method':<34} {'prec':>6} {'recall':>6} {'edgeP':>6} {'edgeR':>6} {'merged':>6} {'lost':>5} {'kept':>5}"
    print(f"\n{header}  " + " ".join(f"{t[:7]:>7}" for t in TRANSFORMS))
    for method, row in rows.items():
        cells = [row["precision"], row["recall"], row["edge_precision"], row["edge_recall"]]
        text = " ".join("     -" if v is None else f"{v:6.3f}" for v in cells)
        per = " ".join(f"{row.get(f'recall_{t}', float('nan')):7.2f}" for t in TRANSFORMS)
        print(f"{method:<34} {text} {row['merged_groups']:6d} {row['lost_groups']:5d} {row['kept_images']:5d}  {per}")
    figures["loadavg_1m_start"] = round(load_start, 2)
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)

    notes[:0] = [
        f"Set: {len(originals.images)} originals ({by_kind['clipart']} Debian openclipart-png clip art sampled with "
        f"seed {args.seed}, {by_kind['wallpaper']} plasma-workspace-wallpapers, {by_kind['photo']} scikit-image "
        f"samples), transparency on white, longer side <= {MAX_SIDE}; {len(TRANSFORMS)} transformed copies each "
        f"({', '.join(TRANSFORMS)}); {len(images)} images, {figures['positive_pairs']} duplicate pairs. Skipped while "
        f"sampling: {dict(originals.skipped)}. Images are built in memory (and in a temporary folder for "
        "imagededup), never kept.",
        "Scoring: <method>_precision/_recall = pairs in one connected component of the method's edges (the "
        "pipeline's grouping) vs the ground truth; _edge_precision/_edge_recall = the directly reported pairs; "
        "_recall_<transformation> = share of (original, that copy) pairs in one component; _merged_groups = "
        "ground-truth groups sharing a component with another group; _pred_pairs / _edge_pairs = predicted pair "
        "counts; _kept_images / _lost_groups = what group_duplicates keeps (one representative per component, most "
        "pixels first) and how many ground-truth groups lose every image (unique content dropped; ideal: kept = "
        "originals, lost = 0). A precision is left out when a method predicts no pair.",
        "exact = SHA-256 of the bytes; every copy here has different bytes (even resave: same pixels, new PNG), "
        "so exact finds none by construction: in the pipeline a byte-identical copy is the same image id already.",
        "phash = curation.dedup.perceptual.phash + near_pairs (FAISS binary index) at Hamming distance d; "
        "phash_d<d>_near_pairs_vs_brute_force_mismatch compares near_pairs with an all-pairs check (0 = equal). "
        "builtin = curation's weight-free 16x16 thumbnail embedder, knn_edges(index=flat, k=64) at cosine t. "
        f"default_* = the pipeline's defaults (perceptual d{defaults.phash_max_distance} + copy_detection "
        f"t{defaults.threshold} with the builtin embedder) as one graph. Its most frequent edges between different "
        f"originals' groups: {examples or 'none'}.",
        f"vit_random = timm vit_small_patch16_224 with RANDOM weights (no pretrained weights can be had offline on "
        f"this machine), on the first {args.vit_originals} originals' groups only "
        f"({figures.get('vit_random_images', 0)} images): it shows that a random network is no copy detector, "
        "nothing more.",
        "imagededup_phash_d<d> = imagededup's PHash: encode_images on a folder of the same bytes + find_duplicates("
        "encoding_map, max_distance_threshold=d) (brute_force_cython); its pairs are scored the same way. "
        "phash_vs_imagededup_* compare its hashes with ours image by image (Hamming bits).",
    ]
    if load_start > 0.5:
        notes.append(f"The 1-minute load average was {load_start:.2f} at start (other processes): only the *_s "
                     "timings are affected, not the quality figures.")  # fmt: skip
    if not args.no_write:
        write_result("copy_detection", "cpu", now, device=device, command=command, figures=figures, output=args.output,
                     machine=machine, notes=" ".join(notes))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
