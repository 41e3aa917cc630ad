"""Which published version a run trains on, and the lineage every checkpoint records.

The manifest read from the version's store must hash to the SHA-256 the catalog recorded at publish time, and
a version superseded by an opt-out is refused unless the caller says so explicitly (opt-outs win). Requests
filed after the version's last opt-out check may cover some of its images too: they are named in a warning and
in every checkpoint's lineage (`unapplied_optout_requests`) until `curate optout apply` has run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.api import Version, open_version
from curation.audit.registry import active_requests, list_requests
from curation.errors import TrainError
from curation.publish.release import MANIFEST, parse_ref, resolve
from curation.store.catalog import Catalog
from curation.store.home import Home

log = logging.getLogger("curation")


@dataclass(frozen=True)
class TrainingSet:
    version: Version
    lineage: dict[str, Any]


def open_training_set(home: str | Path, ref: str, *, allow_superseded: bool = False) -> TrainingSet:
    parse_ref(ref)
    with Catalog.open(Home(home).catalog_path, read_only=True, wait_s=30) as catalog:
        row = resolve(catalog, ref)
        newer = [r for r in catalog.versions(row["name"]) if r["version"] > row["version"]]
        requests = active_requests(list_requests(catalog))
        applied_seq = catalog.optout_checked_seq(row["name"], row["version"])
    exact = f"{row['name']}@v{row['version']}"
    if row["status"] == "superseded_by_optout" and not allow_superseded:
        latest = f"{row['name']}@v{newer[-1]['version']}" if newer else "a newer version"
        raise TrainError(f"{exact} is superseded by an opt-out: it still holds images whose owners asked to be "
                         f"removed. Train on {latest}, or pass --allow-superseded to do so knowingly.")  # fmt: skip
    version = open_version(exact, home=home)
    actual = hashlib.sha256(version.root.get(MANIFEST)).hexdigest()
    if actual != version.manifest_sha256:
        raise TrainError(f"{version.root.url(MANIFEST)}: SHA-256 {actual[:16]}... differs from the catalog's "
                         f"{version.manifest_sha256[:16]}... recorded at publish time")  # fmt: skip
    lineage = {"dataset": exact, "name": row["name"], "version": row["version"],
               "manifest_sha256": version.manifest_sha256, "content_sha256": version.manifest["content_sha256"],
               "samples": version.manifest["counts"]["samples"], "status": row["status"]}  # fmt: skip
    checks = [step for step in version.manifest["lineage"] if step["stage"] == "optout"]
    checked_seq = max(checks[-1]["params"].get("registry_seq", 0) if checks else 0, applied_seq)
    unapplied = [request.request_id for request in requests if request.seq > checked_seq]
    if unapplied:
        lineage["unapplied_optout_requests"] = unapplied
        log.warning("%d opt-out request(s) filed after %s was checked may cover some of its images (%s): run "
                    "`curate optout apply %s` and train on its result", len(unapplied), exact,
                    ", ".join(unapplied[:5]), row["name"])  # fmt: skip
    return TrainingSet(version, lineage)
