"""Write Debian's Fashion-MNIST (IDX files) as PNG folders, one sub-folder per class:
OUT/train/<class>/train-NNNNN.png (60,000) and OUT/test/<class>/t10k-NNNNN.png (10,000).

Used by pipelines/default-embedder.yaml (the train split is the default embedder's training data) and by
benchmarks/fashion_mnist_knn.py (labelled sets for k-NN). `apt-get install dataset-fashion-mnist` first (or
point FASHION_MNIST_DIR at a folder of its IDX files).

    python benchmarks/prepare_fashion_mnist.py /tmp/fashion-mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import read_idx  # noqa: E402

CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def main(out: Path) -> None:
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(f"{prefix}-images-idx3-ubyte")
        labels = read_idx(f"{prefix}-labels-idx1-ubyte")
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            target = out / split / CLASSES[label] / f"{prefix}-{index:05d}.png"
            if not target.exists():
                Image.fromarray(image, mode="L").save(target, optimize=False)
        print(f"{split}: {len(images)} images in {out / split}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fashion-mnist"))
