"""Balanced hierarchical sampling (Vo et al. 2024): split a target size over the top-level clusters by water-filling,
then recursively over each cluster's children down to the leaves, then pick points inside each leaf.

Pure NumPy, no I/O, deterministic for a seed.
"""

from __future__ import annotations

import numpy as np


def group_positions(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(distinct labels, ascending; the positions holding each, ascending), from one stable sort: selecting each
    label's positions by comparison scans every point once per label, O(labels x points) on 100k clusters."""
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return values, np.split(order, starts[1:]) if len(order) else []


def water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """How many to take from each group so that the total is `target` and groups are as equal as they can be.

    The cap is the smallest integer c with sum(min(c, size)) >= target; every group gives min(c - 1, size) and the
    remainder comes one each from groups that still have items, chosen by `rng` (deterministic for a seed).
    """
    sizes = np.asarray(sizes, np.int64)
    target = int(min(target, sizes.sum()))
    if target <= 0 or len(sizes) == 0:
        return np.zeros(len(sizes), np.int64)
    low, high = 0, int(sizes.max())  # find the smallest cap that reaches the target
    while low < high:
        cap = (low + high) // 2
        if np.minimum(cap, sizes).sum() >= target:
            high = cap
        else:
            low = cap + 1
    take = np.minimum(low - 1, sizes) if low > 0 else np.zeros_like(sizes)
    remainder = target - int(take.sum())
    candidates = np.flatnonzero(sizes > take)
    chosen = rng.permutation(candidates)[:remainder]
    take[chosen] += 1
    return take


def hierarchical_sample(paths: np.ndarray, target: int, *, seed: int = 0, rule: str = "random",
                        distances: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Indices of the selected points, sorted.

    `paths[i]` is point i's cluster id per level, coarsest first (column 0 = top level, last column = leaf).
    `rule` picks points inside a leaf: "random", or "closest" (smallest `distances[i]` to the leaf centroid).
    """
    if rule not in ("random", "closest"):
        raise ValueError(f"rule must be 'random' or 'closest', not {rule!r}")
    if rule == "closest" and distances is None:
        raise ValueError("rule 'closest' needs the distances to the leaf centroids")
    rng = np.random.default_rng(seed)
    selected: list[np.ndarray] = []

    def descend(members: np.ndarray, level: int, quota: int) -> None:
        if quota <= 0:
            return
        if level == paths.shape[1]:  # inside a leaf: pick the points
            if rule == "random":
                selected.append(np.sort(rng.choice(members, quota, replace=False)))
            else:
                order = np.lexsort((members, distances[members]))
                selected.append(np.sort(members[order[:quota]]))
            return
        _, groups = group_positions(paths[members, level])
        quotas = water_fill(np.array([len(group) for group in groups]), quota, rng)
        for group, group_quota in zip(groups, quotas):
            descend(members[group], level + 1, int(group_quota))

    descend(np.arange(len(paths)), 0, min(target, len(paths)))
    return np.sort(np.concatenate(selected)) if selected else np.empty(0, np.int64)
