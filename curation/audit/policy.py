"""Licence policy: which inputs may be kept given the licence they came with. A pure function over rows.

Unknown (no licence at all) is its own category, never treated as permissive: `unknown: drop` drops it, and
`unknown: keep` keeps it while the statement reports it as a gap.
"""

from __future__ import annotations

from curation.config import LicenseStage
from curation.types import Reason


def license_verdict(license_: str | None, policy: LicenseStage) -> tuple[Reason, str] | None:
    """None when the licence passes, else (reason, detail)."""
    if not license_:
        return (Reason.LICENSE_UNKNOWN, "no licence recorded") if policy.unknown == "drop" else None
    name = license_.strip().lower()
    if name in {denied.lower() for denied in policy.deny}:
        return Reason.LICENSE_DENIED, f"{license_!r} is on the deny list"
    if policy.allow is not None and name not in {allowed.lower() for allowed in policy.allow}:
        return Reason.LICENSE_DENIED, f"{license_!r} is not on the allow list"
    return None
