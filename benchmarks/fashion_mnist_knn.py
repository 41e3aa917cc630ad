"""Fashion-MNIST quality of the bundled pretrainer: self-supervised training, then weighted k-NN (k=20, T=0.07)
and linear-probe (logistic regression on frozen features, `curation.train.linear`) accuracy on the 10k test set
against the 60k train set, beside two baselines measured in the same run:
raw-pixel k-NN (cosine on the 784 grey values) and a random-init ViT of the same architecture and preprocessing
(at the trained initialisation, LayerScale 1e-5, and with LayerScale gains at 1).

    python benchmarks/prepare_fashion_mnist.py /tmp/fashion-mnist
    curate --home H run pipelines/default-embedder.yaml                                # default-embedder@v1
    curate --home H train --dataset default-embedder@v1 \
        --config curation/train/configs/default-embedder.yaml --out RUN                # the SSL part
    python benchmarks/fashion_mnist_knn.py --run RUN --data /tmp/fashion-mnist         # k-NN, baselines

`--curve` also scores the EMA teacher of each earlier checkpoint (`ssl_vit_step_<N>_knn_top1`): how accuracy
grows with training, which tells whether a longer run would pay.

The run's exported teacher (RUN/export/*.json) embeds through the embed stage (bundled: backbone), exactly
what curation would store. Epochs = images seen / samples in the training version (which also holds
Openclipart); train wall time comes from the run's log. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curation.embed.backbone import export_backbone, read_backbone
from curation.embed.torch_models import Preprocess
from curation.train.knn import embed_paths, embedder_for, labelled_folder, weighted_knn
from curation.train.linear import linear_probe
from curation.train.models.vit import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, cores, cpu_model, utc_now, write_result  # noqa: E402

NOTES = (
    "SSL and k-NN on this machine (k-NN on --limit images per class per split when given). random_init_vit uses "
    "the trained model's initialisation (its LayerScale gain); random_init_vit_layerscale1 sets the gains to 1."
)


def pixels(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path), np.float32).reshape(-1) for path in paths])


def random_init_like(description_path: Path, folder: Path, layerscale: float | None = None) -> Path:
    """The trained model's architecture with fresh weights; `layerscale` overrides the initial LayerScale gain
    (at the trained init, 1e-5, every residual branch is nearly off and the CLS token is nearly constant)."""
    description, _ = read_backbone(description_path)
    kwargs = {**description["arch"]["kwargs"], **({"layerscale": layerscale} if layerscale else {})}
    torch.manual_seed(0)
    model = VisionTransformer(**kwargs)
    pre = description["preprocess"]
    preprocess = Preprocess(pre["size"], pre["crop"], tuple(pre["mean"]), tuple(pre["std"]), pre["interpolation"])
    return export_backbone(model, folder / f"random-init-{layerscale}", family="curation-vit",
                           name=description["arch"]["name"], preprocess=preprocess, kwargs=kwargs)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished `curate train` output folder")
    parser.add_argument("--data", type=Path, default=Path("/tmp/fashion-mnist"))
    parser.add_argument("--limit", type=int, default=None, help="images per class per split (default: all)")
    parser.add_argument("--curve", action="store_true",
                        help="also score the EMA teacher of every earlier checkpoint in RUN/checkpoints")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    exported = sorted((args.run / "export").glob("*.json"))
    exported = [path for path in exported if not path.name.endswith(".lineage.json")][0]
    lineage = json.loads(exported.with_suffix(".lineage.json").read_text())
    config = json.loads((args.run / "config.json").read_text())
    last = json.loads((args.run / "log.jsonl").read_text().splitlines()[-1])
    steps, batch = last["step"] + 1, config["optim"]["batch_size"]

    train_paths, train_labels, _ = labelled_folder(args.data / "train", args.limit)
    test_paths, test_labels, _ = labelled_folder(args.data / "test", args.limit)
    figures = {"train_images": len(train_paths), "test_images": len(test_paths), "k": 20, "temperature": 0.07,
               "ssl_dataset": lineage["dataset"], "ssl_dataset_samples": lineage["samples"], "ssl_steps": steps,
               "ssl_batch_size": batch, "ssl_epochs": round(steps * batch / lineage["samples"], 3),
               "ssl_train_wall_s": round(last.get("wall_s", steps * batch / last["images_per_s"]), 1),
               "model": f"{exported.name}: {config['model']}"}  # fmt: skip

    start = time.perf_counter()
    train_pixels, test_pixels = pixels(train_paths), pixels(test_paths)
    figures["raw_pixel_knn_top1"] = weighted_knn(train_pixels, train_labels, test_pixels, test_labels)
    figures["raw_pixel_linear_top1"] = linear_probe(train_pixels, train_labels, test_pixels, test_labels)
    figures["raw_pixel_s"] = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory() as scratch:
        models = [
            ("ssl_vit", exported),
            ("random_init_vit", random_init_like(exported, Path(scratch))),
            ("random_init_vit_layerscale1", random_init_like(exported, Path(scratch), 1.0)),
        ]
        if args.curve:  # the last checkpoint's teacher is the export itself
            earlier = sorted((args.run / "checkpoints").glob("step-*.pt"))[:-1]
            models += [(f"ssl_vit_step_{int(path.stem[5:])}", path) for path in earlier]
        for name, path in models:
            start = time.perf_counter()
            embedder = embedder_for(path, Path(scratch) / name)
            train, test = embed_paths(embedder, train_paths), embed_paths(embedder, test_paths)
            figures[f"{name}_knn_top1"] = weighted_knn(train, train_labels, test, test_labels)
            figures[f"{name}_linear_top1"] = linear_probe(train, train_labels, test, test_labels)
            figures[f"{name}_embed_s"] = round(time.perf_counter() - start, 1)
            print(name, figures[f"{name}_knn_top1"], figures[f"{name}_linear_top1"], flush=True)
    print(figures)
    if not args.no_write:
        cuda = torch.cuda.is_available()  # the runbook trains and evaluates on one machine
        device = f"cuda: {torch.cuda.get_device_name(0)}" if cuda else f"cpu: {cpu_model()}, {cores()} cores"
        write_result("fashion_mnist_knn", "cuda" if cuda else "cpu", utc_now(), device=f"{device} (training and k-NN)",
                     figures=figures, command=command_line(None, "benchmarks/fashion_mnist_knn.py"),
                     output=args.output, notes=NOTES)  # fmt: skip


if __name__ == "__main__":
    main()
