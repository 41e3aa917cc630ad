"""The pool-scale vector work on a real multi-node Ray cluster: two raylets on this machine (Ray's own
`cluster_utils`, each its own node with its own CPUs), joined by address as `curate run --ray-address` would.
Shard actors land on both nodes, a distributed dedup's tasks run there, and the results are the in-process ones.
It runs in a subprocess because the test session already holds its own single-node Ray."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import FIXTURE_IMAGES, REPO

SCRIPT = r"""
import json, os, sys
os.environ["RAY_AUTH_MODE"] = "disabled"
import numpy as np
import ray
from ray.cluster_utils import Cluster

import curation
from curation.config import DedupStage
from curation.dedup.graph import knn_edges
from curation.executors.ray import RayExecutor
from curation.select.kmeans import Level, Points, hierarchical_kmeans
from curation.select.sharded import shard_pool

work, images = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
report = {}
spec = {
    "name": "spread",
    "sources": [{"kind": "folder", "name": "pool", "path": images}],
    "stages": {"decode": {"min_side": 16}, "embed": {"model": "builtin"},
               "dedup": {"threshold": 0.95, "index": "ivf", "distributed": True},
               "select": {"mode": "compose", "shards": 2, "parts": [
                   {"kind": "balanced", "name": "balanced", "target": 30,
                    "levels": [{"clusters": 8, "resampling_steps": 1, "sample_size": 3}, {"clusters": 3}]}]}},
    "execution": {"executor": "ray", "ray_address": cluster.address},
}
spread = curation.run(spec, home=os.path.join(work, "spread"))
report["pipeline_shards"] = spread.stats["select"]["shards"]
spec["stages"]["dedup"]["distributed"], spec["stages"]["select"]["shards"] = False, 1
alone = curation.run(spec, home=os.path.join(work, "alone"))
samples = [curation.open_version(r.version, home=os.path.join(work, h)).samples().to_pylist()
           for r, h in ((spread, "spread"), (alone, "alone"))]
report["same_samples"] = samples[0] == samples[1] and len(samples[0]) == 30

rng = np.random.default_rng(0)
centres = rng.normal(size=(40, 16))
points = centres[rng.integers(0, 40, 4000)] + 0.1 * rng.normal(size=(4000, 16))
np.save(os.path.join(work, "pool.npy"), (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float16))
matrix = np.load(os.path.join(work, "pool.npy"), mmap_mode="r")
ray.init(address=cluster.address, log_to_driver=False)  # the runs above joined and left it themselves
executor = RayExecutor()  # reuses that connection
levels = [Level(20, resampling_steps=2, sample_size=5), Level(4)]
with shard_pool(executor, matrix, 2) as pool:
    report["shard_nodes"] = len(set(pool.nodes))
    sharded = hierarchical_kmeans(pool.points(), levels, seed=1)
expected = hierarchical_kmeans(Points.of(matrix), levels, seed=1)
report["same_paths"] = bool(np.array_equal(sharded[0], expected[0]))
settings = DedupStage(k=8, index="ivf", nprobe=4)
edges = [knn_edges(matrix, 0.95, settings, runner=runner) for runner in (executor, None)]
report["same_edges"] = all(np.array_equal(a, b) for a, b in zip(*edges)) and len(edges[0][0]) > 0
report["nodes"] = len([node for node in ray.nodes() if node["Alive"]])
print(json.dumps(report))
ray.shutdown()
cluster.shutdown()
"""


def test_shards_and_dedup_tasks_spread_over_a_two_node_cluster(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(FIXTURE_IMAGES / "fashion-mnist")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"pipeline_shards": {"actors": 2, "nodes": 2}, "same_samples": True, "shard_nodes": 2,
                      "same_paths": True, "same_edges": True, "nodes": 2}  # fmt: skip
