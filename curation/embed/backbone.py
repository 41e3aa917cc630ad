"""The bundled backbone format: how a trained backbone travels from the trainer to the embed stage.

A backbone is two files side by side (manifests/backbone.schema.json):

    NAME.json             {"format": "curation-backbone/1", "arch": {"family", "name", "kwargs"},
                           "weights": "NAME.safetensors", "weights_sha256": "...", "preprocess": {...}}
    NAME.safetensors      the state dict (safetensors: no pickle, so loading cannot run code)

`family: timm` builds the architecture with timm (any timm ViT, DINOv2/DINOv3 included); `family: curation-vit`
is the bundled trainer's ViT (curation/train/export.py), whose `kwargs` are its constructor arguments.
Select it with `stages.embed.model: bundled:path/to/NAME.json`; `bundled:default` is the shipped default embedder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

import manifests
from curation.config import EmbedStage
from curation.embed.registry import Embedder, register_embedder
from curation.embed.torch_models import Preprocess, build_timm, sha256_file
from curation.errors import SpecError

FORMAT = "curation-backbone/1"
# `bundled:default`: the embedder the project trains with its own trainer and ships (curation/train/default/).
DEFAULT_BACKBONE = Path(__file__).resolve().parents[1] / "train" / "default" / "default-vit-tiny.json"


def export_backbone(model, path: str | Path, *, family: str, name: str, preprocess: Preprocess,
                    kwargs: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write `model`'s weights and description as PATH (.json) + PATH.safetensors; returns the JSON path."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".json")
    weights = path.with_suffix(".safetensors")
    save_file({key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}, str(weights))
    description = {
        "format": FORMAT,
        "arch": {"family": family, "name": name, "kwargs": kwargs or {}},
        "weights": weights.name,
        "weights_sha256": sha256_file(weights),
        "preprocess": preprocess.as_dict(),
    }
    jsonschema.validate(description, manifests.load("backbone"))
    path.write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return path


def read_backbone(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Validated description and the weights path; every problem is a SpecError naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SpecError(f"stages.embed.model: bundled backbone description not found: {path}")
    try:
        description = json.loads(path.read_text())
        jsonschema.validate(description, manifests.load("backbone"))
    except (ValueError, jsonschema.ValidationError) as error:
        raise SpecError(f"{path}: not a {FORMAT} description: {getattr(error, 'message', error)}") from None
    weights = path.parent / description["weights"]
    if not weights.is_file():
        raise SpecError(f"{path}: weights file not found: {weights}")
    if sha256_file(weights) != description["weights_sha256"]:
        raise SpecError(f"{weights}: SHA-256 differs from weights_sha256 in {path}")
    return description, weights


@register_embedder("bundled")
def _create_bundled(stage: EmbedStage, path: str) -> Embedder:
    if path == "default":
        path = str(DEFAULT_BACKBONE)
    description, weights = read_backbone(path)
    arch = description["arch"]
    if arch["family"] == "curation-vit":  # the bundled trainer's own ViT (curation/train/export.py)
        from curation.embed.torch_models import require

        require("torch")
        from curation.train.export import build_embedder

        return build_embedder(description, weights, stage, label=f"bundled:{arch['name']}")
    if arch["family"] != "timm":
        raise SpecError(f"{path}: unknown backbone family {arch['family']!r} (known: timm, curation-vit)")
    embedder = build_timm(arch["name"], weights, stage, label=f"bundled:{arch['name']}", arch=arch)
    declared = Preprocess(**{**description["preprocess"], "mean": tuple(description["preprocess"]["mean"]),
                             "std": tuple(description["preprocess"]["std"])})  # fmt: skip
    if declared != embedder.preprocess:
        raise SpecError(f"{path}: preprocess {declared} differs from the architecture's {embedder.preprocess}")
    return embedder
