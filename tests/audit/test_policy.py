"""Licence policy: deny and allow lists, and unknown licences as their own category."""

from __future__ import annotations

import json

import pytest

import curation
from curation.audit.policy import license_verdict
from curation.config import LicenseStage
from curation.types import Reason
from tests.corpus import image_bytes


@pytest.mark.parametrize(
    ("license_", "policy", "expected"),
    [
        ("CC-BY-4.0", LicenseStage(), None),
        (None, LicenseStage(), None),
        (None, LicenseStage(unknown="drop"), Reason.LICENSE_UNKNOWN),
        ("", LicenseStage(unknown="drop"), Reason.LICENSE_UNKNOWN),
        ("CC-BY-NC-4.0", LicenseStage(deny=("cc-by-nc-4.0",)), Reason.LICENSE_DENIED),
        ("MIT", LicenseStage(allow=("mit", "CC0-1.0")), None),
        ("GPL-3.0", LicenseStage(allow=("MIT",)), Reason.LICENSE_DENIED),
        (None, LicenseStage(allow=("MIT",)), None),  # unknown is not judged by the allow list, only by `unknown`
    ],
)
def test_verdicts(license_, policy, expected):
    verdict = license_verdict(license_, policy)
    assert (verdict[0] if verdict else None) == expected


def test_policy_in_a_run(ray_local, tmp_path, home):
    pool = tmp_path / "pool"
    pool.mkdir()
    for index, license_ in enumerate(["MIT", "CC-BY-NC-4.0", None, "CC0-1.0"]):
        (pool / f"img{index}.jpg").write_bytes(image_bytes(index))
        if license_:
            (pool / f"img{index}.json").write_text(json.dumps({"license": license_}))
    spec = {"name": "lic", "sources": [{"kind": "folder", "name": "pool", "path": str(pool)}],
            "stages": {"license": {"deny": ["CC-BY-NC-4.0"], "unknown": "drop"}}}  # fmt: skip
    version = curation.open_version(curation.run(spec, home=home).version, home=home)
    fates = {row["uri"].rsplit("/", 1)[1]: row["reason"] or row["status"] for row in version.provenance().to_pylist()}
    assert fates == {
        "img0.jpg": "kept",
        "img1.jpg": "license_denied",
        "img2.jpg": "license_unknown",
        "img3.jpg": "kept",
    }
    assert sorted(s["license"] for s in version.samples().to_pylist()) == ["CC0-1.0", "MIT"]
    assert version.manifest["dropped"]["license"] == {"license_denied": 1, "license_unknown": 1}
