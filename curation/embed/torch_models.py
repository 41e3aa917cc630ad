"""Torch embedders: open_clip, timm and the bundled backbone format, behind one batched decode+forward path.

CPU path: Pillow decode (EXIF applied) -> shortest-side resize of the centre crop's region only -> normalise,
fp32 forward.
CUDA path: JPEGs decoded in one batched nvjpeg call on the device (anything it refuses falls back to Pillow),
EXIF orientation applied after decode (nvjpeg ignores it), JPEGs over Pillow's pixel limit left to the CPU path
(which rejects them as bombs instead of filling GPU memory) and so are banners (DEVICE_MAX_ASPECT),
resize/crop/normalise on the GPU, pinned-memory copies, channels_last, bf16 autocast, optional torch.compile.
Weights never download at import time; a weights path that does not exist is a SpecError naming it, and so is
`device: cuda` where torch sees no GPU.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from curation.config import WEIGHT_SUFFIXES, EmbedStage
from curation.decode.jpeg_header import JpegHeader, read_jpeg_header
from curation.decode.safe import open_rgb
from curation.embed.registry import Embedder, model_id_for, register_embedder
from curation.errors import SpecError

log = logging.getLogger(__name__)
# EXIF orientation -> (transpose H and W first?, dims to flip after): Pillow's exif_transpose, on [C, H, W] tensors
ORIENTATION_OPS = {1: (False, ()), 2: (False, (-1,)), 3: (False, (-2, -1)), 4: (False, (-2,)),
                   5: (True, ()), 6: (True, (-1,)), 7: (True, (-2, -1)), 8: (True, (-2,))}  # fmt: skip
# The device path resizes whole images: a JPEG whose long side is over this many times its short side (a banner)
# goes to Pillow, which resizes only the crop's region (a tensor cropped first would shift the resampling grid)
DEVICE_MAX_ASPECT = 4


@dataclass(frozen=True)
class Preprocess:
    """Resize the shortest side to `size`, centre-crop `crop` x `crop`, normalise with mean/std (0-1 scale); with
    resize "squash" (SigLIP, CLIPA, PE), the whole image goes to `crop` x `crop`, aspect not kept."""

    size: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: Literal["shortest", "squash"] = "shortest"

    def as_dict(self) -> dict[str, Any]:
        described = {**asdict(self), "mean": list(self.mean), "std": list(self.std)}
        if self.resize == "shortest":  # the default is left out, so the ids made before it existed still hold
            del described["resize"]
        return described

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) with the shortest side at `size` (squash: the crop itself)."""
        if self.resize == "squash":
            return self.crop, self.crop
        scale = self.size / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def source_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The centre crop of the resized image as a (left, top, right, bottom) region of the source: resizing only
        it gives the same pixels without the whole resized image, which grows with a banner's length."""
        resized_width, resized_height = self.resized(width, height)
        left, top = (resized_width - self.crop) // 2, (resized_height - self.crop) // 2
        x_scale, y_scale = width / resized_width, height / resized_height
        return left * x_scale, top * y_scale, (left + self.crop) * x_scale, (top + self.crop) * y_scale


def require(module: str):
    """Import a library of the `embed` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SpecError(f"stages.embed.model needs {module!r}: pip install 'curation[embed]'") from None


def apply_orientation(image, orientation: int):
    """A decoded [C, H, W] tensor turned as its EXIF orientation says, as Pillow shows it."""
    transpose, flips = ORIENTATION_OPS[orientation]
    if transpose:
        image = image.transpose(-2, -1)
    return image.flip(flips) if flips else image


def device_decodable(header: JpegHeader | None) -> bool:
    """A JPEG the device path takes: within Pillow's pixel limit (bombs go to Pillow, which rejects them) and no
    longer than DEVICE_MAX_ASPECT (banners go to Pillow, which resizes only the crop's region)."""
    if header is None or header.pixels > Image.MAX_IMAGE_PIXELS:
        return False
    return max(header.width, header.height) <= DEVICE_MAX_ASPECT * min(header.width, header.height)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def sha256_state(module) -> str:
    """Hash of a module's tensors (names, shapes, dtypes, bytes): the identity of random-init or in-memory weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy())
    return digest.hexdigest()


def is_weights_path(pretrained: str) -> bool:
    """open_clip's `pretrained` is a file when it looks like a path, else a tag (which downloads)."""
    return "/" in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)


def existing_weights(path: str | None, what: str) -> Path | None:
    """A local weights path must exist; returns None for None. Raises a SpecError naming the path."""
    if path is None:
        return None
    candidate = Path(path).expanduser()
    if not candidate.is_file():
        raise SpecError(f"stages.embed.pretrained: {what} weights file not found: {candidate}")
    return candidate


def require_device(stage: EmbedStage) -> None:
    """`device: cuda` where torch sees no GPU is a SpecError up front, not a CUDA RuntimeError from inside the
    model. The builtin embedder runs on the CPU whatever `device` says."""
    if stage.device != "cuda" or stage.model.partition(":")[0] == "builtin":
        return
    if not require("torch").cuda.is_available():
        raise SpecError("stages.embed.device: device cuda requested but torch sees no CUDA GPU")


class TorchEmbedder(Embedder):
    def __init__(
        self, name: str, model, forward: Callable, preprocess: Preprocess, weights_sha256: str, stage: EmbedStage,
        encode_text: Callable[[Sequence[str]], Any] | None = None, arch: dict[str, Any] | None = None,
    ):  # fmt: skip
        import torch

        require_device(stage)
        self.torch = torch
        self.stage = stage
        wants_cuda = stage.device == "cuda" or (stage.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if wants_cuda else "cpu")
        self.cuda = self.device.type == "cuda"
        self.preprocess = preprocess
        self.model_id = model_id_for(name, weights_sha256, preprocess.as_dict(), arch)
        model = model.eval().to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(forward) if stage.compile and self.cuda else forward
        self.encode_text = encode_text  # captions -> features (open_clip's text tower); None for image-only models
        self.mean = torch.tensor(preprocess.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, preprocess.crop, preprocess.crop, device=self.device)
            self.dim = int(forward(probe).shape[-1])

    # --- decode + preprocess ---------------------------------------------------------------------------
    def _cpu_pixels(self, data: bytes):
        """uint8 [3, crop, crop] via Pillow: shortest side to `size`, centre crop, resizing only the crop's region."""
        image = open_rgb(data, self.preprocess.size)
        crop = self.preprocess.crop
        resample = Image.Resampling[self.preprocess.interpolation.upper()]
        pixels = np.asarray(image.resize((crop, crop), resample, box=self.preprocess.source_box(*image.size)), np.uint8)
        return self.torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    def _gpu_pixels(self, images: Sequence[bytes]) -> dict[int, Any]:
        """Batched nvjpeg decode of the JPEGs on this embedder's device; returns {index: [3, crop, crop]} for
        those it decoded. Others (not JPEG, unparsable header, over Pillow's pixel limit, longer than
        DEVICE_MAX_ASPECT, refused by nvjpeg) are omitted and go through the CPU path."""
        import torchvision
        from torchvision.io import ImageReadMode

        torch = self.torch
        headers = {i: read_jpeg_header(data) for i, data in enumerate(images)}
        indices = [i for i, header in headers.items() if device_decodable(header)]
        if not indices:
            return {}
        encoded = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in indices]
        try:
            decoded = torchvision.io.decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad JPEG fails the batched call: decode one by one, keep what works
            decoded = []
            for tensor in encoded:
                try:
                    decoded.append(torchvision.io.decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    decoded.append(None)
        oriented = {index: apply_orientation(image, headers[index].orientation)
                    for index, image in zip(indices, decoded) if image is not None}  # fmt: skip
        return self._resize_crop_tensors(oriented)

    def _resize_crop_tensors(self, images: dict[int, Any]) -> dict[int, Any]:
        """Shortest side to `size`, centre crop, for uint8 [3, H, W] tensors on any device: the whole image is
        resized (its memory grows with the aspect ratio; _gpu_pixels bounds it). Images of one shape (common in a
        crawl's batch) go through one interpolate call together, not one kernel launch each."""
        torch = self.torch
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, image in images.items():
            by_shape.setdefault(tuple(image.shape[-2:]), []).append(index)
        crop = self.preprocess.crop
        result = {}
        for (height, width), members in by_shape.items():
            size = self.preprocess.resized(width, height)[::-1]
            stacked = torch.stack([images[index] for index in members]).float()
            resized = torch.nn.functional.interpolate(stacked, size=size, mode=self.preprocess.interpolation,
                                                      antialias=True, align_corners=False)  # fmt: skip
            top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
            cropped = resized[:, :, top : top + crop, left : left + crop].clamp_(0, 255)
            result.update(zip(members, cropped))
        return result

    # --- forward ---------------------------------------------------------------------------------------
    def embed(self, images: Sequence[bytes]) -> tuple[np.ndarray, list[str | None]]:
        torch = self.torch
        errors: list[str | None] = [None] * len(images)
        on_device = self._gpu_pixels(images) if self.cuda and self.stage.gpu_decode else {}
        cpu_pixels = {}
        for index, data in enumerate(images):
            if index in on_device:
                continue
            try:
                cpu_pixels[index] = self._cpu_pixels(data)
            except Exception as error:  # noqa: BLE001 - one bad image must not lose the batch
                errors[index] = f"{type(error).__name__}: {error}"[:300]
        vectors = np.zeros((len(images), self.dim), np.float32)
        order = sorted([*on_device, *cpu_pixels])
        if not order:
            return vectors, errors
        parts = []
        if cpu_pixels:
            batch = torch.stack([cpu_pixels[i] for i in order if i in cpu_pixels])
            if self.cuda:
                batch = batch.pin_memory()
            parts.append(batch.to(self.device, non_blocking=True).float())
        if on_device:
            parts.append(torch.stack([on_device[i] for i in order if i in on_device]))
        rows = [i for i in order if i in cpu_pixels] + [i for i in order if i in on_device]
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        batch = ((batch / 255.0) - self.mean) / self.std
        if self.cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = self.cuda and self.stage.precision == "bf16"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            features = self.forward(batch)
        features = torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
        vectors[rows] = features
        return vectors, errors

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if self.encode_text is None:
            return super().embed_text(texts)
        with self.torch.inference_mode():
            features = self.encode_text(list(texts))
        return self.torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def _timm_preprocess(model) -> Preprocess:
    import timm

    config = timm.data.resolve_data_config(model=model)
    crop = int(config["input_size"][-1])
    size = int(math.floor(crop / config.get("crop_pct", 1.0)))
    return Preprocess(size, crop, tuple(config["mean"]), tuple(config["std"]), config.get("interpolation", "bicubic"))


def load_state_dict_file(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def load_strict(model, state: dict[str, Any], path: Path) -> None:
    """Load weights exactly; classifier heads the feature model does not have are dropped first."""
    own = model.state_dict()
    state = {key: value for key, value in state.items() if key in own or not key.startswith(("head.", "fc."))}
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise SpecError(f"{path}: weights do not fit the model: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")  # fmt: skip
    model.load_state_dict(state, strict=True)


def unknown_architecture(prefix: str, name: str) -> str | None:
    """Why the installed timm or open_clip cannot build `name` (None when it can, or for other embedders), found
    without building it, so that `curate check` says so before a run ingests anything."""
    if prefix == "timm" and not require("timm").is_model(name):
        return f"stages.embed.model: timm has no model {name!r}"
    if prefix == "open_clip" and name not in require("open_clip").list_models():
        return f"stages.embed.model: open_clip has no architecture {name!r}"
    return None


def build_timm(name: str, weights: Path | None, stage: EmbedStage, *, label: str | None = None,
               arch: dict[str, Any] | None = None):  # fmt: skip
    """`arch`: a bundled backbone's description (family, name, kwargs), whose settings are part of the model id."""
    timm, torch = require("timm"), require("torch")

    if problem := unknown_architecture("timm", name):
        raise SpecError(problem)
    try:
        torch.manual_seed(0)  # random init (no weights) is then reproducible, hence one model id
        model = timm.create_model(name, pretrained=False, num_classes=0, **(arch or {}).get("kwargs", {}))
    except RuntimeError as error:
        raise SpecError(f"stages.embed.model: timm cannot build {name!r} ({error})") from None
    if weights is not None:
        load_strict(model, load_state_dict_file(weights), weights)
    weights_sha = sha256_file(weights) if weights is not None else sha256_state(model)
    return TorchEmbedder(label or f"timm:{name}", model, model, _timm_preprocess(model), weights_sha, stage,
                         arch=arch)  # fmt: skip


@register_embedder("timm")
def _create_timm(stage: EmbedStage, name: str) -> Embedder:
    return build_timm(name, existing_weights(stage.pretrained, "timm"), stage)


def file_preprocess_config(arch: str, tag: str | None) -> dict[str, Any]:
    """The preprocessing a local open_clip weights file expects: that of the hub tag it was downloaded as (`tag`),
    or, without one, that of the architecture's tags when they all agree (a SigLIP has one tag). Tags that
    disagree (ViT-L-14: OpenAI's mean/std or 0.5) need the tag named, rather than a guess."""
    open_clip = require("open_clip")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag is not None and tag not in tags:
        raise SpecError(f"stages.embed.pretrained_tag: {arch} has no tag {tag!r}; its tags: {', '.join(tags)}")

    def preprocessing(name: str) -> dict[str, Any]:
        config = open_clip.get_pretrained_cfg(arch, name)
        return {key: config[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in config}

    configs = [preprocessing(name) for name in ([tag] if tag else tags)]
    if len({repr(sorted(config.items())) for config in configs}) > 1:
        raise SpecError(f"stages.embed.pretrained_tag: {arch}'s tags preprocess differently ({', '.join(tags)}): "
                        "name the one the weights file is")  # fmt: skip
    return configs[0] if configs else {}


def open_clip_preprocess(config: dict[str, Any]) -> Preprocess:
    """An open_clip preprocess config as ours: resize_mode shortest (resize, centre crop) or squash."""
    crop = int(config["size"][0] if isinstance(config["size"], tuple | list) else config["size"])
    resize = config.get("resize_mode", "shortest")
    if resize not in ("shortest", "squash"):
        raise SpecError(f"stages.embed.model: open_clip resize_mode {resize!r} is not supported (shortest, squash)")
    return Preprocess(crop, crop, tuple(config["mean"]), tuple(config["std"]), config.get("interpolation", "bicubic"),
                      resize)  # fmt: skip


@register_embedder("open_clip")
def _create_open_clip(stage: EmbedStage, arch: str) -> Embedder:
    open_clip, torch = require("open_clip"), require("torch")

    pretrained = stage.pretrained
    weights = None
    if pretrained is not None and is_weights_path(pretrained):
        weights = existing_weights(pretrained, "open_clip")
    if problem := unknown_architecture("open_clip", arch):
        raise SpecError(problem)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=str(weights) if weights else pretrained)
    config = model.visual.preprocess_cfg  # a hub tag's own; for a file, only the architecture's defaults
    if weights is not None:
        config = {**config, **file_preprocess_config(arch, stage.pretrained_tag)}
    preprocess = open_clip_preprocess(config)
    if weights is not None:
        weights_sha = sha256_file(weights)
    else:  # a hub tag or random init: hash what was loaded
        weights_sha = sha256_state(model)
    # Text queries (curate search --text) tokenize on first use: CLIP's BPE ships with open_clip, but some
    # architectures' tokenizers come from a hub, and image embedding must never depend on one.
    tokenizer = functools.cache(lambda: open_clip.get_tokenizer(arch))

    def encode_text(texts: Sequence[str]):
        return model.encode_text(tokenizer()(texts).to(next(model.parameters()).device))

    return TorchEmbedder(f"open_clip:{arch}", model, model.encode_image, preprocess, weights_sha, stage, encode_text)
