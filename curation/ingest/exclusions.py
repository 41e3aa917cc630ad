"""What ingest must not take: URLs, URL prefixes, domains and content hashes named by opt-out requests.

Built by the driver from the registry (curation.audit) and shipped to every block, so an excluded URL is never
fetched and an excluded hash is never stored; the input's row names the request instead.

URLs are compared in one canonical spelling (`canonical_uri`), so a request is not dodged by writing its URL
another way: scheme and host in lower case, no trailing dot on the host, no default port, no user info, no
fragment, no empty query, `.` and `..` segments resolved, percent-escapes of unreserved characters decoded and the
rest in upper case. Local paths (folder and tar sources) and s3:// URIs are compared as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}
PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def canonical_host(hostname: str) -> str:
    """A host name in one spelling: lower case, no trailing dot, IDNs in their UTS 46 ASCII form."""
    host = hostname.lower().rstrip(".")
    if host.isascii():
        return host
    try:  # UTS 46, as browsers and requests do (Python's "idna" codec is IDNA 2003: straße -> strasse)
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:  # not a valid IDN: compare it as written
        return host


def _escapes(text: str) -> str:
    """Non-ASCII, spaces and controls as UTF-8 percent-escapes; then escapes of unreserved characters decoded and
    the others in upper case: café, caf%C3%A9 and caf%c3%a9 are one path."""
    encoded = "".join(character if 0x20 < ord(character) < 0x7F else
                      "".join(f"%{byte:02X}" for byte in character.encode("utf-8", "surrogatepass"))
                      for character in text)  # fmt: skip

    def one(match: re.Match) -> str:
        character = chr(int(match.group(1), 16))
        return character if character in UNRESERVED else "%" + match.group(1).upper()

    return PERCENT_ESCAPE.sub(one, encoded)


def _without_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on a path split at '/'."""
    segments, output = path.split("/"), []
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and len(output) > 1:
                output.pop()
            if last:
                output.append("")
            continue
        output.append(segment)
    return "/".join(output)


def canonical_uri(uri: str, *, prefix: bool = False) -> str:
    """One spelling per http(s) URL; `file://` URLs become the local path, with a fragment naming a tar member
    kept (`shard.tar#member`, as ingest records it); anything else is returned as is. A `prefix` keeps a trailing
    `?` (`/img?` must not become `/img`, which would also cover `/img2.jpg`)."""
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError:  # a malformed URL (bad port, bad IPv6 literal) can only match itself
        return uri
    scheme = parts.scheme.lower()
    if scheme == "file":
        return unquote(parts.path) + (f"#{unquote(parts.fragment)}" if parts.fragment else "")
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return uri
    host = canonical_host(parts.hostname)
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _without_dot_segments(_escapes(parts.path)) or "/"
    canonical = urlunsplit((scheme, netloc, path, _escapes(parts.query), ""))
    return canonical + "?" if prefix and not parts.query and uri.split("#", 1)[0].rstrip().endswith("?") else canonical


@dataclass(frozen=True)
class Exclusions:
    """(request id, value) pairs per kind, in registry order. An exact URL wins over a prefix, a prefix over a
    domain; within a kind the first request in registry order is the one named. Exact URLs, domains and hashes
    are looked up in indexes built once, so a registry of millions of URLs costs a lookup per input, not a scan."""

    urls: tuple[tuple[str, str], ...] = ()
    prefixes: tuple[tuple[str, str], ...] = ()
    domains: tuple[tuple[str, str], ...] = ()
    hashes: tuple[tuple[str, str], ...] = ()
    _index: dict[str, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        spell = {"urls": canonical_uri, "prefixes": lambda value: canonical_uri(value, prefix=True),
                 "domains": canonical_host, "hashes": str}  # fmt: skip
        for kind, canonical in spell.items():
            index = self._index.setdefault(kind, {})
            for request_id, value in getattr(self, kind):
                index.setdefault(canonical(value), request_id)

    def __bool__(self) -> bool:
        return bool(self.urls or self.prefixes or self.domains or self.hashes)

    def covering_uri(self, uri: str) -> str | None:
        canonical = canonical_uri(uri)
        if canonical in self._index["urls"]:
            return self._index["urls"][canonical]
        for prefix, request_id in self._index["prefixes"].items():  # registry order (dicts keep insertion order)
            if canonical.startswith(prefix):
                return request_id
        if self._index["domains"]:
            try:
                labels = canonical_host(urlsplit(uri).hostname or "").split(".")
            except ValueError:
                return None
            found = [self._index["domains"][suffix] for suffix in (".".join(labels[i:]) for i in range(len(labels)))
                     if suffix in self._index["domains"]]  # fmt: skip
            if found:
                order = list(self._index["domains"].values())
                return min(found, key=order.index)
        return None

    def covering_hash(self, image_id: str) -> str | None:
        return self._index["hashes"].get(image_id)


NO_EXCLUSIONS = Exclusions()
