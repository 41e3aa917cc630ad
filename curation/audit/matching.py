"""Which images do opt-out requests cover? Matching over (image id, provenance URIs) plus vectors/hashes, and the
requests derived from the catalog (`derived_requests`).

URL kinds match provenance URIs and where a URL's redirects led (exact, prefix, host or subdomain, in canonical
spelling); `sha256` matches the content address, and so does `removed_before`, a request derived from the registry
rather than filed (an image that an earlier `optout apply` removed for a request still in force, so that a later run
cannot bring it back through another URL); `image` matches the uploaded image by exact hash, perceptual hash
(Hamming distance) and embedding cosine. Then every near-duplicate of a matched image (embedding cosine over the
threshold) goes too: an opt-out covers the picture, not one file of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from curation.audit.registry import OptOutRequest, earlier_removals
from curation.ingest.exclusions import Exclusions
from curation.store.catalog import Catalog

# Kinds whose value is an image id: `sha256` is filed; `removed_before` (an image an earlier apply removed for a
# request in force) and `seen_at_url` (an image the catalog saw at a URL a request covers, wherever it is now)
# are derived from the registry and the catalog, so a copy elsewhere of an opted-out picture cannot come back.
HASH_KINDS = ("sha256", "removed_before", "seen_at_url")


def exclusions_of(requests: Iterable[OptOutRequest]) -> Exclusions:
    """The URL, prefix, domain and hash requests (and uploads' exact hashes) as ingest-time exclusions."""
    by_kind: dict[str, list[tuple[str, str]]] = {"url": [], "url_prefix": [], "domain": [], "sha256": []}
    for request in requests:  # an upload's value is its SHA-256: an exact copy is not even stored
        kind = "sha256" if request.kind in (*HASH_KINDS, "image") else request.kind
        if kind in by_kind:
            by_kind[kind].append((request.request_id, request.value))
    return Exclusions(tuple(by_kind["url"]), tuple(by_kind["url_prefix"]), tuple(by_kind["domain"]),
                      tuple(by_kind["sha256"]))  # fmt: skip


@dataclass(frozen=True)
class MatchSettings:
    phash_max_distance: int = 4  # of 64 bits; resized/re-encoded copies stay within a few bits
    embedding_threshold: float = 0.9  # cosine; model-dependent (0.9 suits the builtin descriptor)


@dataclass(frozen=True)
class Match:
    image_id: str
    request_id: str
    method: str  # url | url_prefix | domain | one of HASH_KINDS | exact | phash | embedding | near_duplicate
    similarity: float | None = None  # cosine, or 64 - Hamming distance for phash
    via_image_id: str | None = None  # for near_duplicate: the matched image it is a copy of

    def removal(self) -> dict[str, Any]:
        """As a manifest's `removed` entry (an image that left a version for a request)."""
        return {"image_id": self.image_id, "request_id": self.request_id, "method": self.method,
                "similarity": self.similarity, "via_image_id": self.via_image_id}  # fmt: skip


def match_images(
    requests: Iterable[OptOutRequest],
    image_ids: list[str],
    uris: list[list[str]],
    *,
    vectors: np.ndarray | None = None,
    request_vectors: dict[str, np.ndarray] | None = None,
    phashes: Callable[[str], int | None] | None = None,
    request_phashes: dict[str, int] | None = None,
    settings: MatchSettings | None = None,
) -> list[Match]:
    """One Match per covered image: URL kinds first (an exact URL over a prefix over a domain, then registry order,
    as at ingest), then the other kinds in registry order.

    `vectors` are the images' unit vectors (rows aligned with `image_ids`); `request_vectors` and
    `request_phashes` hold the uploaded images' vector and hash per request id.
    """
    settings = settings or MatchSettings()
    found: dict[str, Match] = {}
    index_of = {image_id: i for i, image_id in enumerate(image_ids)}
    url_requests = [request for request in requests if request.kind in ("url", "url_prefix", "domain")]
    by_url = exclusions_of(url_requests)
    kind_of = {request.request_id: request.kind for request in url_requests}  # derived requests share their ids
    if by_url:  # one indexed lookup per URI, whatever the registry's size
        for image_id, image_uris in zip(image_ids, uris):
            request_id = next((hit for uri in image_uris if (hit := by_url.covering_uri(uri))), None)
            if request_id:
                found[image_id] = Match(image_id, request_id, kind_of[request_id])
    for request in requests:
        if request.kind in HASH_KINDS and request.value in index_of:
            found.setdefault(request.value, Match(request.value, request.request_id, request.kind))
        elif request.kind == "image":
            if request.value in index_of:
                found.setdefault(request.value, Match(request.value, request.request_id, "exact", 1.0))
            target = (request_phashes or {}).get(request.request_id)
            if target is not None and phashes is not None:
                for image_id in image_ids:
                    value = phashes(image_id)
                    distance = (value ^ target).bit_count() if value is not None else 65
                    if image_id not in found and distance <= settings.phash_max_distance:
                        found[image_id] = Match(image_id, request.request_id, "phash", float(64 - distance))
            query = (request_vectors or {}).get(request.request_id)
            if query is not None and vectors is not None and len(image_ids):
                scores = np.asarray(vectors, np.float32) @ query.astype(np.float32)
                for position in np.flatnonzero(scores >= settings.embedding_threshold):
                    image_id = image_ids[position]
                    score = float(scores[position])
                    found.setdefault(image_id, Match(image_id, request.request_id, "embedding", score))
    if vectors is not None and found:
        _add_near_duplicates(found, image_ids, index_of, np.asarray(vectors, np.float32), settings.embedding_threshold)
    return sorted(found.values(), key=lambda match: match.image_id)


def _add_near_duplicates(found: dict[str, Match], image_ids: list[str], index_of: dict[str, int],
                         vectors: np.ndarray, threshold: float) -> None:  # fmt: skip
    """Every image within `threshold` of a matched one goes with it (one hop, in bounded-memory chunks)."""
    seeds = [match for match in list(found.values()) if match.image_id in index_of]
    for start in range(0, len(seeds), 64):  # 64 x N scores at a time
        chunk = seeds[start : start + 64]
        scores = vectors[[index_of[match.image_id] for match in chunk]] @ vectors.T
        for row, match in enumerate(chunk):
            for position in np.flatnonzero(scores[row] >= threshold):
                image_id = image_ids[position]
                if image_id not in found:
                    found[image_id] = Match(image_id, match.request_id, "near_duplicate", float(scores[row, position]),
                                            match.image_id)  # fmt: skip


def derived_requests(catalog: Catalog, requests: list[OptOutRequest]) -> list[OptOutRequest]:
    """`requests` plus the image ids they stand for in this catalog: what earlier applies removed for them
    (`removed_before`), every image seen, in any run, at a URL they cover (`seen_at_url`: e.g. an input opted out
    at ingest whose identical copy sits at another path, or a copy dropped as a duplicate whose kept original is
    elsewhere), and the original of a hash that is a re-encoded published file (`sha256`)."""
    by_url = exclusions_of([request for request in requests if request.kind in ("url", "url_prefix", "domain")])
    seen: dict[str, str] = {}
    if by_url:
        for image_id, uri in catalog.seen_uris():
            request_id = image_id not in seen and by_url.covering_uri(uri)
            if request_id:
                seen[image_id] = request_id
    by_id = {request.request_id: request for request in requests}
    found = [replace(by_id[request_id], kind="seen_at_url", value=image_id) for image_id, request_id in seen.items()]
    # a hash of a re-encoded published file (someone found their picture in a release) names its original
    hashed = [request for request in requests if request.kind in ("sha256", "image")]
    originals = catalog.originals_of(sorted({request.value for request in hashed}))
    found += [replace(request, kind="sha256", value=originals[request.value]) for request in hashed
              if request.value in originals]  # fmt: skip
    return [*requests, *earlier_removals(catalog, requests), *found]
