"""The opt-out registry: append-only requests in the catalog, hash-chained so that an edit or a deletion is
detected the next time the registry is read (and every read checks it).

Kinds: `url` (exact URL), `url_prefix`, `domain` (the host and its subdomains), `sha256` (content hash), `image`
(an uploaded image, kept in the blob store; matched by exact hash, perceptual hash and embedding near-duplicate),
and `withdraw` (a later request that withdraws an earlier one: requests themselves never change).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import tldextract

from curation.errors import CurationError
from curation.ingest.exclusions import canonical_host, canonical_uri
from curation.store.catalog import Catalog

# Held across an add's journal append and commit, and by readers: in one process (the service) the catalog is
# shared, so a reader could otherwise see the journal one record ahead of the committed rows.
_WRITING = threading.RLock()
KINDS = ("url", "url_prefix", "domain", "sha256", "image", "withdraw")
# The snapshot it ships (never downloads), with the list's private section: github.io and blogspot.com are
# suffixes too, under which every user has a site of their own.
_SUFFIXES = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)
GENESIS = "0" * 64
REQUEST_ID = re.compile(r"opt-\d{6}-[0-9a-f]{8}")  # as decisions' details name the request that took an input


class RegistryTamperedError(CurationError):
    """A stored opt-out request no longer matches its hash chain: the append-only log was edited."""


class RequestError(CurationError):
    """An opt-out request is malformed (unknown kind, bad URL, domain or hash, unknown request to withdraw)."""


@dataclass(frozen=True)
class OptOutRequest:
    request_id: str
    seq: int
    kind: str
    value: str
    reason: str
    requester: str
    received_at: str
    prev_sha256: str
    record_sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_CHARS = {"value": 2048, "reason": 1000, "requester": 200}  # an append-only log cannot shed spam later


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


def _normalise(kind: str, value: str) -> str:
    value = value.strip()
    if kind not in KINDS:
        raise RequestError(f"unknown opt-out kind {kind!r}; kinds: {', '.join(KINDS)}")
    if kind in ("url", "url_prefix"):  # stored in the spelling matching compares (canonical_uri)
        if value.startswith("/"):  # a local path: how folder and tar sources name their inputs
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number below 65536
        except ValueError as error:  # a bad IPv6 literal, a bad port
            raise RequestError(f"{kind}: not a valid URL: {value!r} ({error})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "s3", "file") or not (parts.netloc or scheme == "file") or (
                scheme == "file" and not parts.path.startswith("/")):  # fmt: skip
            raise RequestError(f"{kind}: not a URL or an absolute path: {value!r}")
        if kind == "url_prefix" and any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
            raise RequestError(f"url_prefix: {value!r} has '.' or '..' segments; write the prefix it means")
        return canonical_uri(value, prefix=kind == "url_prefix")
    if kind == "domain":  # the host as given (www.example.com covers less than example.com), in URL spelling
        domain = canonical_host(value.strip("."))
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", domain):
            raise RequestError(f"domain: not a domain name: {value!r}")
        if re.fullmatch(r"[0-9.]+", domain) and not _is_ipv4(domain):  # "0.1" would cover 10.0.0.1, 192.168.0.1
            raise RequestError(f"domain: {value!r} is neither a name nor a whole IPv4 address")
        parts = _SUFFIXES(domain)
        if parts.suffix and not parts.domain:  # anyone may file a request: one must not take a country's web
            raise RequestError(f"domain: {domain} is a public suffix, not a site; name the site (e.g. "
                               f"example.{domain})")  # fmt: skip
        return domain
    if kind in ("sha256", "image"):
        if not re.fullmatch(r"[0-9a-f]{64}", value.lower()):
            raise RequestError(f"{kind}: not a SHA-256 hex digest: {value!r}")
        return value.lower()
    return value  # withdraw: checked against the registry by the caller


def _record_hash(fields: dict[str, Any]) -> str:
    canonical = json.dumps({key: fields[key] for key in sorted(fields) if key != "record_sha256"}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def journal_path(catalog: Catalog):
    """The registry's append-only JSON Lines mirror beside the catalog: a deleted newest record (which leaves a
    valid shorter chain) still disagrees with it."""
    return catalog.path.parent / "optouts.jsonl"


def list_requests(catalog: Catalog) -> list[OptOutRequest]:
    """Every request in order, after checking the hash chain and the journal (raises RegistryTamperedError)."""
    with _WRITING:  # not half way through this process's own add (the journal is written before the commit)
        return _checked_requests(catalog)


def _checked_requests(catalog: Catalog) -> list[OptOutRequest]:
    rows = catalog.rows("SELECT * FROM optout_requests ORDER BY seq")
    previous = GENESIS
    requests = []
    for expected_seq, row in enumerate(rows, start=1):
        row["received_at"] = row["received_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        request = OptOutRequest(**row)
        if request.seq != expected_seq or request.prev_sha256 != previous or _record_hash(row) != request.record_sha256:
            raise RegistryTamperedError(
                f"opt-out registry in {catalog.path} was altered at request seq {expected_seq} "
                f"({row['request_id']}): requests are append-only"
            )
        previous = request.record_sha256
        requests.append(request)
    journal = journal_path(catalog)
    logged = _committed_journal(journal, requests)
    if logged != [asdict(request) for request in requests]:
        raise RegistryTamperedError(
            f"opt-out registry in {catalog.path} disagrees with its journal {journal} "
            f"({len(requests)} vs {len(logged)} requests): requests are append-only (if a process died while "
            "filing a request, the journal's last line is that request, never committed: remove it)"
        )
    return requests


def _committed_journal(journal: Path, requests: list[OptOutRequest]) -> list[dict]:
    """The journal's records, each re-hashed, less a torn last line (a crash in the middle of an append, which
    never committed). Anything else that does not parse or hash is tampering."""
    lines = journal.read_text().splitlines() if journal.exists() else []
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            intact = isinstance(record, dict) and _record_hash(record) == record.get("record_sha256")
        except ValueError:
            intact = False
        if not intact:
            if number == len(lines) == len(requests) + 1:
                break
            raise RegistryTamperedError(f"{journal}: line {number} is not an intact opt-out record")
        records.append(record)
    return records


def add_request(catalog: Catalog, *, kind: str, value: str, reason: str = "", requester: str = "") -> OptOutRequest:
    """Append one request (in a transaction, after verifying the chain); returns it with its id."""
    for name, text in (("value", value), ("reason", reason), ("requester", requester)):
        if len(text) > MAX_CHARS[name]:
            raise RequestError(f"{kind}: {name} is {len(text)} characters; at most {MAX_CHARS[name]}")
    value = _normalise(kind, value)
    with _WRITING, catalog.transaction():
        existing = list_requests(catalog)
        if kind == "withdraw":
            target = next((request for request in existing if request.request_id == value), None)
            if target is None:
                raise RequestError(f"withdraw: no request {value!r}")
            if target.kind == "withdraw":
                raise RequestError(f"withdraw: {value} is itself a withdrawal; a withdrawal cannot be withdrawn "
                                   "(file the request again instead)")  # fmt: skip
            if any(request.kind == "withdraw" and request.value == value for request in existing):
                raise RequestError(f"withdraw: {value} is withdrawn already")
        seq = len(existing) + 1
        fields = {
            "seq": seq,
            "kind": kind,
            "value": value,
            "reason": reason,
            "requester": requester,
            "received_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "prev_sha256": existing[-1].record_sha256 if existing else GENESIS,
        }
        fields["request_id"] = f"opt-{seq:06d}-{_record_hash(fields)[:8]}"
        fields["record_sha256"] = _record_hash(fields)
        catalog.db.execute(
            "INSERT INTO optout_requests (request_id, seq, kind, value, reason, requester, received_at, prev_sha256, "
            "record_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [fields[key] for key in ("request_id", "seq", "kind", "value", "reason", "requester", "received_at",
                                     "prev_sha256", "record_sha256")],
        )  # fmt: skip
        journal = journal_path(catalog)
        _drop_torn_tail(journal, len(existing))
        with journal.open("a") as handle:  # under the catalog's writer lock, before the commit
            handle.write(json.dumps(fields, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return OptOutRequest(**fields)


def _drop_torn_tail(journal: Path, committed: int) -> None:
    """Cut a torn last line (an append a crash cut short) before appending, so the journal mirrors the commits.
    Only then, and by truncating in place: the records before it are never rewritten."""
    if not journal.exists():
        return
    with journal.open("rb+") as handle:
        lines = handle.read().split(b"\n")
        keep = sum(len(line) + 1 for line in lines[:committed])
        if handle.tell() > keep:
            handle.truncate(keep)


def active_requests(requests: list[OptOutRequest]) -> list[OptOutRequest]:
    """Requests in force: not withdrawals themselves, and not withdrawn by a later request."""
    withdrawn = {request.value for request in requests if request.kind == "withdraw"}
    return [request for request in requests if request.kind != "withdraw" and request.request_id not in withdrawn]


def status_on_filing(request: OptOutRequest) -> str:
    """A new request's status: a withdrawal is recorded; any other is received (nothing has applied it yet)."""
    return "recorded" if request.kind == "withdraw" else "received"


def request_status(catalog: Catalog, requests: list[OptOutRequest]) -> dict[str, str]:
    """received | applied (NAME@vN, ...) | withdrawn, per request id: derived, never stored. Applied in a version
    when it removed something from that version's parent, or kept an input out of the run that published it."""
    withdrawn = {request.value for request in requests if request.kind == "withdraw"}
    applied: dict[str, set[tuple[str, int]]] = {}
    for row in catalog.rows("SELECT DISTINCT request_id, name, version FROM optout_removals"):
        applied.setdefault(row["request_id"], set()).add((row["name"], row["version"]))
    for row in catalog.rows(
        "SELECT DISTINCT r.version AS ref, d.detail FROM decisions d JOIN runs r USING (run_id) "
        "WHERE d.reason = 'opted_out' AND r.status = 'finished' AND r.version IS NOT NULL"
    ):
        name, _, number = row["ref"].rpartition("@v")
        for request_id in REQUEST_ID.findall(row["detail"] or ""):
            applied.setdefault(request_id, set()).add((name, int(number)))
    status = {}
    for request in requests:
        if request.request_id in withdrawn:
            status[request.request_id] = "withdrawn"
        elif request.request_id in applied:
            refs = [f"{name}@v{number}" for name, number in sorted(applied[request.request_id])]
            status[request.request_id] = "applied in " + ", ".join(refs)
        else:
            status[request.request_id] = status_on_filing(request)
    return status


def earlier_removals(catalog: Catalog, requests: list[OptOutRequest]) -> list[OptOutRequest]:
    """`removed_before` requests: every image an `optout apply` removed for a request in `requests` (in force)."""
    by_id = {request.request_id: request for request in requests}
    rows = catalog.rows("SELECT DISTINCT image_id, request_id FROM optout_removals ORDER BY image_id, request_id")
    return [replace(by_id[row["request_id"]], kind="removed_before", value=row["image_id"])
            for row in rows if row["request_id"] in by_id]  # fmt: skip
