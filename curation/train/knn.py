"""Weighted k-NN evaluation (DINO sec. 4.1): each test image votes with its k nearest training images
(cosine similarity on L2-normalised features), each vote weighted by exp(similarity / T); k=20, T=0.07.

Labelled sets are folders with one sub-folder per class (`train/<class>/*.png`); features come from the embed
stage's own embedder, so evaluation sees exactly what curation would store.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from curation.config import EmbedStage
from curation.embed.registry import Embedder, create_embedder
from curation.errors import TrainError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def weighted_knn(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, *,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:  # fmt: skip
    """Top-1 accuracy; features are normalised here; labels are integers 0..C-1."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k-NN needs k >= 1 and a temperature above 0, got k={k}, temperature={temperature}")
    train = train / np.linalg.norm(train, axis=1, keepdims=True).clip(min=1e-12)
    test = test / np.linalg.norm(test, axis=1, keepdims=True).clip(min=1e-12)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk):
        similarity = test[start : start + chunk] @ train.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        nearest_similarity = np.take_along_axis(similarity, nearest, axis=1)
        # relative to each row's best: exp(1 / T) overflows for a small T, and every vote became inf
        weights = np.exp((nearest_similarity - nearest_similarity.max(axis=1, keepdims=True)) / temperature)
        votes = np.zeros((len(nearest), classes))
        np.add.at(votes, (np.arange(len(nearest))[:, None], train_labels[nearest]), weights)
        correct += int((votes.argmax(axis=1) == test_labels[start : start + chunk]).sum())
    return correct / len(test)


def labelled_folder(folder: str | Path, limit: int | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, integer labels, class names) of a folder of class sub-folders, sorted."""
    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not classes:
        raise TrainError(f"{folder}: expected one sub-folder per class with images inside")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        paths += found
        labels += [label] * len(found)
    return paths, np.array(labels), classes


def embed_paths(embedder: Embedder, paths: list[Path], batch: int = 256) -> np.ndarray:
    vectors = []
    for start in range(0, len(paths), batch):
        found, errors = embedder.embed([p.read_bytes() for p in paths[start : start + batch]])
        bad = [str(p) for p, e in zip(paths[start : start + batch], errors) if e]
        if bad:
            raise TrainError(f"cannot embed {bad[:3]}")
        vectors.append(found)
    return np.concatenate(vectors)


def embedder_for(model: str | Path, out_dir: Path) -> Embedder:
    """A checkpoint (.pt: its EMA teacher), an exported backbone (.json), or any embed-stage model name."""
    text = str(model)
    if text.endswith(".pt"):
        from curation.train.checkpoint import load_checkpoint
        from curation.train.config import parse_train_config
        from curation.train.export import export_teacher
        from curation.train.meta_arch import SSLMetaArch

        state = load_checkpoint(Path(text))
        config = parse_train_config(state["config"])
        meta = SSLMetaArch(config)
        if any(key.startswith("gram_teacher.") for key in state["model"]):
            meta.refresh_gram_teacher()
        meta.load_state_dict(state["model"])
        text = str(export_teacher(meta, config, out_dir / "teacher", state["lineage"]))
    if text.endswith(".json"):
        text = f"bundled:{text}"
    return create_embedder(EmbedStage(model=text))


def labelled_features(
    model: str | Path, train_folder: str | Path, test_folder: str | Path, limit: int | None = None
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MODEL's features of two labelled folders: (report basics, train, train labels, test, test labels)."""
    train_paths, train_labels, classes = labelled_folder(train_folder, limit)
    test_paths, test_labels, test_classes = labelled_folder(test_folder, limit)
    if test_classes != classes:
        raise TrainError(f"train classes {classes} differ from test classes {test_classes}")
    with tempfile.TemporaryDirectory() as scratch:
        embedder = embedder_for(model, Path(scratch))
        train, test = embed_paths(embedder, train_paths), embed_paths(embedder, test_paths)
    report = {"model": str(model), "model_id": embedder.model_id, "train_images": len(train_paths),
              "test_images": len(test_paths), "classes": len(classes)}  # fmt: skip
    return report, train, train_labels, test, test_labels


def evaluate_knn(model: str | Path, train_folder: str | Path, test_folder: str | Path, *, k: int = 20,
                 temperature: float = 0.07, limit: int | None = None) -> dict:  # fmt: skip
    report, train, train_labels, test, test_labels = labelled_features(model, train_folder, test_folder, limit)
    accuracy = weighted_knn(train, train_labels, test, test_labels, k=k, temperature=temperature)
    return {**report, "accuracy": accuracy, "k": k, "temperature": temperature}
