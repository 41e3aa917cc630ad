"""What ingest must not take: URLs, URL prefixes, domains and content hashes named by opt-out requests.

Built by the driver from the registry (curation.audit) and shipped to every block, so an excluded URL is never
fetched and an excluded hash is never stored; the input's row names the request instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


def host_matches(uri: str, domain: str) -> bool:
    """`uri`'s host is `domain` or one of its subdomains."""
    host = (urlsplit(uri).hostname or "").lower()
    return host == domain or host.endswith("." + domain)


@dataclass(frozen=True)
class Exclusions:
    """(request id, value) pairs per kind, in registry order (the first covering request is the one named)."""

    urls: tuple[tuple[str, str], ...] = ()
    prefixes: tuple[tuple[str, str], ...] = ()
    domains: tuple[tuple[str, str], ...] = ()
    hashes: tuple[tuple[str, str], ...] = ()
    _hash_index: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for request_id, value in reversed(self.hashes):
            self._hash_index[value] = request_id

    def __bool__(self) -> bool:
        return bool(self.urls or self.prefixes or self.domains or self.hashes)

    def covering_uri(self, uri: str) -> str | None:
        for request_id, url in self.urls:
            if uri == url:
                return request_id
        for request_id, prefix in self.prefixes:
            if uri.startswith(prefix):
                return request_id
        for request_id, domain in self.domains:
            if host_matches(uri, domain):
                return request_id
        return None

    def covering_hash(self, image_id: str) -> str | None:
        return self._hash_index.get(image_id)


NO_EXCLUSIONS = Exclusions()
