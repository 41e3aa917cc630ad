"""Linear evaluation: multinomial logistic regression on frozen features, the other standard probe of a
self-supervised backbone beside k-NN (DINOv2 fits logistic regression on frozen features for its fine-grained
benchmarks). Features are L2-normalised, then standardised with the training set's mean and std; the classifier
starts at zero and is fitted full-batch by L-BFGS with an L2 penalty, so the result is deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curation.train.knn import labelled_features


def linear_probe(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, *,
                 weight_decay: float = 1e-4, iterations: int = 200) -> float:  # fmt: skip
    """Top-1 accuracy on `test` of a linear classifier fitted on `train`; labels are integers 0..C-1."""
    import torch
    import torch.nn.functional as F

    x, x_test = (F.normalize(torch.from_numpy(np.asarray(part, np.float32)), dim=1) for part in (train, test))
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)
    x, x_test = (x - mean) / std, (x_test - mean) / std
    y = torch.from_numpy(train_labels.astype(np.int64))
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(x @ weight + bias, y) + weight_decay * weight.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        predicted = (x_test @ weight + bias).argmax(dim=1).numpy()
    return float((predicted == test_labels).mean())


def evaluate_linear(model: str | Path, train_folder: str | Path, test_folder: str | Path, *,
                    weight_decay: float = 1e-4, limit: int | None = None) -> dict:  # fmt: skip
    report, train, train_labels, test, test_labels = labelled_features(model, train_folder, test_folder, limit)
    accuracy = linear_probe(train, train_labels, test, test_labels, weight_decay=weight_decay)
    return {**report, "accuracy": accuracy, "weight_decay": weight_decay}
