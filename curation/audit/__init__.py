"""Provenance audit and opt-outs: the registry, its enforcement, audit queries and data statements.

>>> from curation import audit
>>> audit.add_optout("curation-home", kind="domain", value="example.com", reason="owner")  # doctest: +SKIP
>>> audit.apply_optouts("curation-home", "quickstart")                                      # doctest: +SKIP
>>> audit.search("curation-home", "quickstart", image=open("mine.jpg", "rb").read(), k=5)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from curation.audit.registry import OptOutRequest, RequestError, add_request, list_requests, request_status
from curation.config import DecodeStage
from curation.decode.safe import inspect_image
from curation.store.catalog import Catalog
from curation.store.home import Home


def add_optout(home: str | Path, *, kind: str, value: str | None = None, image: bytes | None = None,
               reason: str = "", requester: str = "", wait_s: float = 60.0) -> OptOutRequest:  # fmt: skip
    """Register a request. For kind `image`, pass the uploaded bytes: they go through the safe decoder first."""
    home = Home(home)
    if kind == "image":
        if image is None:
            raise RequestError("image: pass the uploaded image's bytes")
        decoded = inspect_image(image, DecodeStage(min_side=1))
        if not decoded.ok:
            raise RequestError(f"image: the upload is not a usable image ({decoded.reason}: {decoded.detail})")
        value = home.uploads.put(image)
    if value is None:
        raise RequestError(f"{kind}: a value is required")
    with Catalog.open(home.catalog_path, wait_s=wait_s) as catalog:
        return add_request(catalog, kind=kind, value=value, reason=reason, requester=requester)


def optouts(home: str | Path) -> list[dict]:
    """Every request (checked against the hash chain) with its derived status."""
    with Catalog.open(Home(home).catalog_path, read_only=True, wait_s=30) as catalog:
        requests = list_requests(catalog)
        status = request_status(catalog, requests)
    return [{**request.to_json(), "status": status[request.request_id]} for request in requests]


def apply_optouts(home: str | Path, name: str, **kwargs):
    from curation.audit.apply import apply_optouts as apply

    return apply(Home(home), name, **kwargs)


def search(home: str | Path, ref: str, *, image: bytes | None = None, image_id: str | None = None,
           text: str | None = None, k: int = 10) -> dict:  # fmt: skip
    """The k samples of a version nearest to an image (bytes), one of its samples, or a caption (open_clip
    embedders): `curate search`."""
    from curation.audit.similar import similar_samples

    return similar_samples(home, ref, image=image, image_id=image_id, text=text, k=k)
