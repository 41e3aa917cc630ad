"""Embedders: unit-norm, finite, deterministic vectors; stable model ids; local weight files give the same
vectors as the in-memory model; a bad image costs only its own row."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from curation.config import EmbedStage
from curation.embed.registry import create_embedder, list_embedders
from curation.errors import SpecError
from tests.corpus import exif_rotated_jpeg, image_bytes, jpeg_header_claiming, palette_png

TIMM_ARCH = "vit_tiny_patch16_224"  # 5M parameters: quick on 2 CPU cores


def resized_jpeg(data: bytes, scale: float, quality: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def smooth_image(seed: int) -> bytes:
    """A smooth random image (noise thumbnails are all alike): 8x8 noise upsampled to 256x192."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((256, 192), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


def test_registry_lists_families_and_refuses_unknown_names():
    assert list_embedders() == ["builtin", "bundled", "open_clip", "timm"]
    with pytest.raises(SpecError, match="unknown embedder 'clip:x'; known: builtin, bundled, open_clip, timm"):
        create_embedder(EmbedStage(model="clip:x"))
    with pytest.raises(SpecError, match="needs a model name"):
        create_embedder(EmbedStage(model="timm"))
    with pytest.raises(SpecError, match="timm has no model"):
        create_embedder(EmbedStage(model="timm:no_such_net"))


def test_missing_weight_files_are_named(tmp_path):
    missing = tmp_path / "nope.pth"
    for model in (f"timm:{TIMM_ARCH}", "open_clip:ViT-S-16"):
        with pytest.raises(SpecError, match=str(missing)):
            create_embedder(EmbedStage(model=model, pretrained=str(missing)))


def test_builtin_vectors_are_unit_deterministic_and_copy_robust():
    embedder = create_embedder(EmbedStage(model="builtin"))
    original = smooth_image(1)
    images = [original, resized_jpeg(original, 0.5, 60), smooth_image(2), palette_png(), exif_rotated_jpeg()]
    vectors, errors = embedder.embed(images)
    assert errors == [None] * 5 and vectors.shape == (5, 768)
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.95  # a half-size JPEG copy stays close
    assert vectors[0] @ vectors[2] < 0.8  # a different image does not
    again, _ = create_embedder(EmbedStage(model="builtin")).embed(images)
    assert np.array_equal(vectors, again)


@pytest.mark.parametrize("model", ["builtin", f"timm:{TIMM_ARCH}"])
def test_a_corrupt_image_mid_batch_costs_only_its_row(model):
    embedder = create_embedder(EmbedStage(model=model))
    good = [image_bytes(1), image_bytes(2)]
    batch, errors = embedder.embed([good[0], b"\x89PNG\r\n\x1a\n broken", good[1]])
    alone, _ = embedder.embed(good)
    assert errors[0] is None and errors[2] is None and errors[1]
    assert np.allclose(batch[[0, 2]], alone, atol=1e-5)
    assert not batch[1].any()


def test_timm_random_init_is_reproducible_and_weights_file_matches(tmp_path):
    import torch

    first = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}"))
    second = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}"))
    assert first.model_id == second.model_id and first.model_id.startswith(f"timm:{TIMM_ARCH}@w")
    images = [image_bytes(3, size=(300, 200)), exif_rotated_jpeg()]
    in_memory, _ = first.embed(images)
    assert np.isfinite(in_memory).all() and np.allclose(np.linalg.norm(in_memory, axis=1), 1, atol=1e-5)

    path = tmp_path / "weights.pth"
    state = first.model.state_dict()
    torch.save({"state_dict": {**state, "head.weight": torch.zeros(10, first.dim)}}, path)  # a classifier head too
    from_file = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}", pretrained=str(path)))
    assert np.allclose(from_file.embed(images)[0], in_memory, atol=1e-5)
    assert from_file.model_id != first.model_id  # the id names the file's bytes, not the architecture alone

    torch.save({key: value + 1 if key.endswith("bias") else value for key, value in state.items()}, path)
    changed = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}", pretrained=str(path)))
    assert changed.model_id != from_file.model_id

    torch.save({"blocks.0.bogus": torch.zeros(1)}, path)
    with pytest.raises(SpecError, match="weights do not fit"):
        create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}", pretrained=str(path)))


def test_open_clip_weights_file_matches_in_memory_model(tmp_path):
    import torch

    in_memory = create_embedder(EmbedStage(model="open_clip:ViT-S-16"))
    path = tmp_path / "open_clip.pt"
    torch.save(in_memory.model.state_dict(), path)
    from_file = create_embedder(EmbedStage(model="open_clip:ViT-S-16", pretrained=str(path)))
    images = [image_bytes(4, size=(240, 320)), palette_png()]
    assert np.allclose(from_file.embed(images)[0], in_memory.embed(images)[0], atol=1e-5)
    assert in_memory.dim == from_file.dim == 384


def test_preprocessing_is_part_of_the_model_id():
    timm_id = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}")).model_id
    builtin_id = create_embedder(EmbedStage(model="builtin")).model_id
    assert timm_id.split("-p")[-1] != builtin_id.split("-p")[-1]


def test_tensor_resize_groups_shapes_and_matches_one_at_a_time():
    """The GPU decode path's resize + centre crop (run here on CPU tensors): images of one shape are resized in one
    call, and each comes out exactly as when resized alone, at the model's crop size."""
    import torch

    embedder = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}", device="cpu"))
    rng = np.random.default_rng(0)
    shapes = [(375, 500), (500, 375), (375, 500), (224, 224), (375, 500)]
    images = {index: torch.from_numpy(rng.integers(0, 256, (3, *shape), dtype=np.uint8)) for index, shape in
              enumerate(shapes)}  # fmt: skip
    together = embedder._resize_crop_tensors(images)
    crop = embedder.preprocess.crop
    assert sorted(together) == list(range(len(shapes)))
    for index, image in images.items():
        alone = embedder._resize_crop_tensors({index: image})[index]
        assert together[index].shape == (3, crop, crop)
        torch.testing.assert_close(together[index], alone, atol=1e-3, rtol=0)
    assert not torch.equal(together[0], together[2])  # distinct images stay distinct within a group


def test_device_decode_orients_like_pillow_and_leaves_bombs_and_non_jpegs_to_the_cpu_path():
    """The nvjpeg path (here on CPU tensors: the same code with torchvision's CPU decoder). nvjpeg ignores EXIF,
    so the path turns each image itself: all 8 orientations must match torchvision's EXIF-applying decode. A JPEG
    header claiming 20000 x 20000 pixels, a corrupt JPEG and a PNG are left to Pillow, which records the bomb."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    embedder = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}", device="cpu"))
    oriented = [exif_rotated_jpeg(orientation) for orientation in range(1, 9)]
    images = [*oriented, jpeg_header_claiming(20000, 20000), b"\xff\xd8\xff\xe0 not a jpeg", image_bytes(1, fmt="PNG")]
    decoded = embedder._gpu_pixels(images)
    assert sorted(decoded) == list(range(8))
    for index, data in enumerate(oriented):
        shown = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                            apply_exif_orientation=True)  # fmt: skip
        torch.testing.assert_close(decoded[index], embedder._resize_crop_tensors({0: shown})[0])
    assert not any(torch.equal(decoded[a], decoded[b]) for a in range(8) for b in range(a))  # 8 distinct views
    vectors, errors = embedder.embed(images)
    assert "DecompressionBomb" in errors[8] and errors[9] and errors[10] is None
    assert np.allclose(np.linalg.norm(vectors[[0, 10]], axis=1), 1.0, atol=1e-3)


def test_a_long_banner_is_embedded_in_bounded_memory_as_its_centre_crop():
    """32 x 100000: resizing the whole banner (short side to 248) held ~900 MB; only the crop's region is resized
    now, so peak memory stays near the decoded image's 10 MB, and the vector is that of the centre 32 x 32 square
    embedded on its own. VmHWM in a fresh process, not ru_maxrss: the latter keeps the forking test process's
    high-water mark across exec."""
    script = (
        "import io, json\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from curation.config import EmbedStage\n"
        "from curation.embed.registry import create_embedder\n"
        "def png(pixels):\n"
        "    buffer = io.BytesIO()\n"
        "    Image.fromarray(pixels).save(buffer, 'PNG')\n"
        "    return buffer.getvalue()\n"
        "def peak_mb():\n"
        "    line = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "    return int(line.split()[1]) // 1024\n"
        "x, y = np.meshgrid(np.arange(100000), np.arange(32))\n"
        "banner = np.stack([x % 256, x // 7 % 256, y * 8], -1).astype(np.uint8)\n"
        f"embedder = create_embedder(EmbedStage(model='timm:{TIMM_ARCH}', device='cpu'))\n"
        "square, _ = embedder.embed([png(banner[:, 49984:50016])])\n"
        "data = png(banner)\n"
        "before = peak_mb()\n"
        "vector, errors = embedder.embed([data])\n"
        "print(json.dumps({'growth_mb': peak_mb() - before, 'errors': errors, 'square': square[0].tolist(),\n"
        "                  'banner': vector[0].tolist()}))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    result = json.loads(output)
    assert result["errors"] == [None] and result["growth_mb"] < 150, result["growth_mb"]
    np.testing.assert_allclose(result["banner"], result["square"], atol=1e-4)


def test_device_decode_leaves_banners_to_the_cpu_path():
    """The device path resizes whole images, so a JPEG over DEVICE_MAX_ASPECT goes to Pillow (which resizes only
    the crop's region); a 4:1 one stays on the device."""
    embedder = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}", device="cpu"))
    images = [image_bytes(5, size=(16, 2000)), image_bytes(6, size=(64, 16)), image_bytes(7, size=(2000, 16))]
    assert sorted(embedder._gpu_pixels(images)) == [1]


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (133, 400), (900, 90), (224, 224), (28, 28)])
def test_resizing_only_the_crop_region_matches_resizing_the_whole_image(size):
    """The CPU path resizes only the centre crop's region; its pixels are those of the preprocessing the model id
    names (whole image, shortest side to `size`, centre crop), to the rounding of Pillow's 8-bit pass between its
    horizontal and vertical passes: down- and upscaled, portrait, landscape and square."""
    embedder = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}", device="cpu"))
    preprocess = embedder.preprocess
    image = Image.open(io.BytesIO(smooth_image(3))).resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (width, height), crop = preprocess.resized(*size), preprocess.crop
    left, top = (width - crop) // 2, (height - crop) // 2
    whole = image.resize((width, height), Image.Resampling[preprocess.interpolation.upper()])
    expected = np.asarray(whole.crop((left, top, left + crop, top + crop)), np.int16).transpose(2, 0, 1)
    difference = np.abs(embedder._cpu_pixels(buffer.getvalue()).numpy() - expected)
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_a_local_open_clip_file_gets_the_preprocessing_of_its_hub_tag():
    """The architecture's defaults are OpenAI's CLIP settings; a SigLIP file (one tag, webli) wants mean/std 0.5
    and squashing. Where tags disagree the tag must be named rather than guessed."""
    from curation.embed.torch_models import file_preprocess_config, open_clip_preprocess

    defaults = {"size": (224, 224), "mean": (0.481, 0.458, 0.408), "std": (0.269, 0.261, 0.276)}
    siglip = open_clip_preprocess({**defaults, **file_preprocess_config("ViT-B-16-SigLIP", None)})
    assert (siglip.mean, siglip.std, siglip.resize, siglip.crop) == ((0.5,) * 3, (0.5,) * 3, "squash", 224)
    with pytest.raises(SpecError, match="ViT-L-14's tags preprocess differently.*datacomp_xl_s13b_b90k"):
        file_preprocess_config("ViT-L-14", None)
    assert file_preprocess_config("ViT-L-14", "openai")["resize_mode"] == "shortest"
    with pytest.raises(SpecError, match="has no tag 'nope'"):
        file_preprocess_config("ViT-L-14", "nope")
    with pytest.raises(ValueError, match="pretrained_tag says which open_clip hub tag"):
        EmbedStage(model="open_clip:ViT-L-14", pretrained="openai", pretrained_tag="openai")


def test_squash_resizes_the_whole_image_to_the_crop():
    from curation.embed.torch_models import Preprocess, TorchEmbedder

    reference = create_embedder(EmbedStage(model=f"timm:{TIMM_ARCH}"))
    squash = Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash")
    embedder = TorchEmbedder("test", reference.model, reference.model, squash, "0" * 64, EmbedStage(model="x:y"))
    data = image_bytes(4, size=(120, 40), fmt="PNG")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
    assert np.array_equal(embedder._cpu_pixels(data).permute(1, 2, 0).numpy(), expected)
    assert squash.as_dict()["resize"] == "squash" and "resize" not in reference.preprocess.as_dict()  # old ids hold
