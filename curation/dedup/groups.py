"""Duplicate groups: connected components of the union of all duplicate edges, one representative kept per group.

Representative rule (deterministic, documented): an image of an already published version (incremental dedup) that
this pool holds again, then one it does not, then one from a curated source (composition's `source` parts and
retrieval seeds), then the most pixels (width x height), then the smallest image id. A group's id is its
representative's id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class Edges:
    method: str  # perceptual | copy_detection | contamination
    i: np.ndarray
    j: np.ndarray
    similarity: np.ndarray  # cosine, or 1 - Hamming/64 for perceptual
    threshold: float


@dataclass(frozen=True)
class Member:
    """A non-representative image of a duplicate group, and the strongest edge that put it there."""

    image_id: str
    group_id: str
    representative: str
    method: str
    similarity: float
    threshold: float
    neighbour: str  # the image at the other end of that edge


def components(count: int, edges: list[Edges]) -> np.ndarray:
    """Component label per node; singletons get their own labels. Transitive by construction (A~B, B~C)."""
    if not edges or all(len(e.i) == 0 for e in edges):
        return np.arange(count)
    rows = np.concatenate([e.i for e in edges])
    cols = np.concatenate([e.j for e in edges])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def _tier(image_id: str, tiers: tuple[frozenset[str], ...]) -> int:
    return next((rank for rank, members in enumerate(tiers) if image_id in members), len(tiers))


def group_duplicates(image_ids: list[str], pixels: list[int], edges: list[Edges],
                     tiers: tuple[frozenset[str], ...] = ()) -> list[Member]:  # fmt: skip
    """Non-representative members of every group. The representative: one from the first of `tiers` that holds
    any (the driver's: published images this pool holds, other published images, curated images), then the most
    pixels, then the smallest id."""
    labels = components(len(image_ids), edges)
    members: dict[int, list[int]] = {}
    for node, label in enumerate(labels):
        members.setdefault(int(label), []).append(node)
    best: dict[int, tuple[float, str, float, float, int]] = {}  # node -> strongest incident edge
    for edge in edges:
        for a, b, score in zip(edge.i.tolist(), edge.j.tolist(), edge.similarity.tolist()):
            for node, other in ((a, b), (b, a)):
                if node not in best or score > best[node][0]:
                    best[node] = (score, edge.method, score, edge.threshold, other)
    result = []
    for nodes in members.values():
        if len(nodes) < 2:
            continue
        keeper = min(nodes, key=lambda node: (_tier(image_ids[node], tiers), -pixels[node], image_ids[node]))
        for node in sorted(nodes, key=lambda node: image_ids[node]):
            if node == keeper:
                continue
            _, method, similarity, threshold, other = best[node]
            result.append(Member(image_ids[node], image_ids[keeper], image_ids[keeper], method, round(similarity, 6),
                                 threshold, image_ids[other]))  # fmt: skip
    return sorted(result, key=lambda member: member.image_id)
