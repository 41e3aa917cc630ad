"""Selection reports saved beside the manifest: numbers (JSON) and bar charts (PNG, drawn with Pillow).

Per balanced part: images per top-level cluster before and after balancing; per retrieval part: its pulls and
distinct images, with the similarity distribution of sample-based pulls or the images per pool cluster of
cluster-based ones; for the whole version: samples per part.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SIMILARITY_BINS = np.round(np.linspace(-1, 1, 41), 2)  # 0.05 wide


def bar_chart(values: list[float], title: str, width: int = 640, height: int = 240) -> bytes:
    """A plain PNG bar chart (sorted as given); deterministic bytes for the same values."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), title, fill="black")
    top, bottom, left, right = 22, height - 14, 8, width - 8
    draw.line((left, bottom, right, bottom), fill="black")
    peak = max(values) if values and max(values) > 0 else 1
    step = (right - left) / max(len(values), 1)
    for index, value in enumerate(values):
        x0 = left + index * step
        y0 = bottom - (bottom - top) * value / peak
        draw.rectangle((x0, y0, max(x0, x0 + step - 1), bottom), fill=(70, 110, 170))
    draw.text((left, bottom + 1), f"{len(values)} bars, max {peak:g}", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def build_reports(details: dict[str, dict[str, Any]], selection: dict[str, list[dict[str, Any]]]) -> dict[str, bytes]:
    """{relative path: bytes} of the report files for a composition."""
    numbers: dict[str, Any] = {"samples_by_part": {}, "parts": {}}
    for reasons in selection.values():
        part = reasons[0]["part"]
        numbers["samples_by_part"][part] = numbers["samples_by_part"].get(part, 0) + 1
    files: dict[str, bytes] = {}
    for part, detail in details.items():
        if detail["kind"] == "balanced":
            before, after = detail["before"], detail["after"]
            numbers["parts"][part] = {"top_clusters": len(before), "images_per_top_cluster_before": before,
                                      "selected_per_top_cluster": after}  # fmt: skip
            order = np.argsort(before)[::-1]  # the same cluster order in both plots: largest first before
            files[f"reports/{part}-clusters-before.png"] = bar_chart(
                [before[i] for i in order], f"{part}: images per top-level cluster, before balancing"
            )
            files[f"reports/{part}-clusters-after.png"] = bar_chart(
                [after[i] for i in order], f"{part}: selected per top-level cluster (same order)"
            )
        elif detail["kind"] == "retrieval":
            numbers["parts"][part] = {
                key: detail[key] for key in ("method", "pulls", "images", "images_per_seed_dataset")
            }
            if detail["method"] == "sample":
                # float16 vectors score a copy of the seed up to ~1.0004: clipped, every pull lands in a bin
                counts, _ = np.histogram(np.clip(detail["similarities"], -1, 1), bins=SIMILARITY_BINS)
                numbers["parts"][part].update(
                    similarity_bins=SIMILARITY_BINS.tolist(), similarity_counts=counts.tolist()
                )
                files[f"reports/{part}-similarity.png"] = bar_chart(counts.tolist(), f"{part}: pull similarity, -1..1")
            else:  # cluster-based pulls have no similarity: the pool clusters they came from instead
                sizes = detail["images_per_cluster"]
                numbers["parts"][part].update(clusters_used=len(sizes), clusters=detail["clusters"],
                                              images_per_cluster=sizes)  # fmt: skip
                title = f"{part}: images per pool cluster used, largest first"
                files[f"reports/{part}-clusters.png"] = bar_chart(sorted(sizes, reverse=True), title)
    files["reports/selection.json"] = (json.dumps(numbers, indent=2, sort_keys=True) + "\n").encode()
    return files
