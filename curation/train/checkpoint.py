"""Checkpoints: everything a resumed run needs to continue exactly, plus the lineage the audit follows.

OUT/checkpoints/step-NNNNNNN.pt holds student, teacher, Gram teacher, centring state (inside the model's
state dict), optimiser state, the step and every data stream's position (schedules are pure functions of
the step and random draws are seeded per step, so nothing else is needed). The .json beside it is the
lineage: dataset NAME@vN and the SHA-256 of the manifest it read; the catalog's `checkpoints` table holds the
same, so `curate audit version|image` can list the checkpoints trained on a version or an image.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from curation.store.catalog import Catalog
from curation.store.home import Home

PATTERN = re.compile(r"^step-(\d{7})\.pt$")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:07d}.pt"


def save_checkpoint(out_dir: Path, step: int, state: dict[str, Any], lineage: dict[str, Any]) -> Path:
    """Atomic: written to a temporary name, then renamed; the lineage sidecar is written first."""
    path = checkpoint_path(out_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({**lineage, "step": step}, indent=2, sort_keys=True) + "\n")
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    torch.save({**state, "step": step, "lineage": lineage}, temporary)
    os.replace(temporary, path)
    return path


def latest_checkpoint(out_dir: Path) -> Path | None:
    folder = out_dir / "checkpoints"
    found = sorted(p for p in folder.glob("step-*.pt") if PATTERN.match(p.name)) if folder.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def record_checkpoint(home: str | Path, path: Path, lineage: dict[str, Any], step: int) -> None:
    """The trainer's rank 0 is the catalog's writer for this row (opened briefly, waiting if it is busy)."""
    with Catalog.open(Home(home).catalog_path, wait_s=60) as catalog:
        catalog.record_checkpoint(str(path.resolve()), lineage["name"], lineage["version"],
                                  lineage["manifest_sha256"], step)  # fmt: skip
