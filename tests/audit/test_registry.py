"""The opt-out registry is append-only: edits and deletions are detected, writes through SQL are refused,
and concurrent additions from several processes all land."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation import audit
from curation.audit.registry import RegistryTamperedError, RequestError, active_requests, add_request, list_requests
from curation.store.catalog import Catalog
from tests.corpus import image_bytes


@pytest.fixture
def catalog(home):
    with Catalog.open(home / "catalog.duckdb") as catalog:
        yield catalog


def test_requests_are_normalised_and_validated(catalog):
    assert add_request(catalog, kind="domain", value="WWW.Example.COM.").value == "www.example.com"  # as given
    assert add_request(catalog, kind="domain", value="Bücher.example").value == "xn--bcher-kva.example"
    assert add_request(catalog, kind="domain", value="10.0.0.1").value == "10.0.0.1"
    with pytest.raises(RequestError, match="neither a name nor a whole IPv4 address"):
        add_request(catalog, kind="domain", value="0.1")
    assert add_request(catalog, kind="sha256", value="AB" * 32).value == "ab" * 32
    assert add_request(catalog, kind="url_prefix", value="https://cdn.example.org/u/42/").kind == "url_prefix"
    for kind, value in (("domain", "not a domain"), ("sha256", "123"), ("url", "example.com/x"), ("color", "x"),
                        ("withdraw", "opt-999999-deadbeef"), ("url", "https://[::1"), ("url_prefix", "http://[fe80::1/"),
                        ("url", "http://example.com:99999/a.jpg"), ("url", "file:relative/x.jpg")):  # fmt: skip
        with pytest.raises(RequestError):
            add_request(catalog, kind=kind, value=value)
    assert [request.seq for request in list_requests(catalog)] == [1, 2, 3, 4, 5]  # refused requests left no trace


def test_withdrawal_is_a_new_request(catalog):
    first = add_request(catalog, kind="domain", value="example.com", reason="owner", requester="a@example.com")
    add_request(catalog, kind="withdraw", value=first.request_id, reason="changed mind")
    requests = list_requests(catalog)
    assert [request.kind for request in requests] == ["domain", "withdraw"]
    assert requests[0] == first  # the original is untouched
    assert active_requests(requests) == []
    with pytest.raises(RequestError, match="itself a withdrawal"):  # it would look withdrawn and change nothing
        add_request(catalog, kind="withdraw", value=requests[1].request_id)
    from curation.audit.registry import request_status, status_on_filing

    assert status_on_filing(requests[1]) == request_status(catalog, requests)[requests[1].request_id] == "recorded"
    with pytest.raises(RequestError, match="withdrawn already"):  # a second record would stay in the log for good
        add_request(catalog, kind="withdraw", value=first.request_id)
    assert len(list_requests(catalog)) == 2


@pytest.mark.parametrize(("field", "limit"), [("value", 2048), ("reason", 1000), ("requester", 200)])
def test_overlong_fields_are_refused(catalog, field, limit):
    fields = {"kind": "url", "value": "https://example.org/" + "a" * 20, "reason": "mine", "requester": "me"}
    add_request(catalog, **{**fields, field: fields[field] + "x" * (limit - len(fields[field]))})  # at the limit
    with pytest.raises(RequestError, match=f"{field} is {limit + 1} characters"):
        add_request(catalog, **{**fields, field: fields[field] + "x" * (limit + 1 - len(fields[field]))})
    assert len(list_requests(catalog)) == 1


def test_an_edited_journal_line_is_tampering_and_a_torn_last_line_is_a_crash(catalog):
    """Every journal record is re-hashed and compared whole with the catalog's; a torn last line is an append
    that a crash cut short (it never committed): reads go on, and the next add repairs the journal."""
    import json

    from curation.audit.registry import journal_path

    for domain in ("a.example.com", "b.example.com"):
        add_request(catalog, kind="domain", value=domain)
    journal = journal_path(catalog)
    lines = journal.read_text().splitlines()
    journal.write_text(lines[0] + "\n" + lines[1].replace("b.example.com", "z.example.com") + "\n")
    with pytest.raises(RegistryTamperedError, match="line 2 is not an intact"):
        list_requests(catalog)
    journal.write_text("{oops\n" + lines[1] + "\n")
    with pytest.raises(RegistryTamperedError, match="line 1 is not an intact"):
        list_requests(catalog)

    journal.write_text("\n".join(lines) + "\n" + lines[1][:40])  # a crash in the middle of a third append
    assert [request.value for request in list_requests(catalog)] == ["a.example.com", "b.example.com"]
    add_request(catalog, kind="domain", value="c.example.com")
    assert [json.loads(line)["value"] for line in journal.read_text().splitlines()] == [
        "a.example.com", "b.example.com", "c.example.com"]  # fmt: skip


def test_an_add_only_appends_to_the_journal(catalog, monkeypatch):
    """The records before a new one are never rewritten (a full disk half way would destroy the mirror)."""
    from curation.audit.registry import journal_path

    add_request(catalog, kind="domain", value="a.example.com")
    before = journal_path(catalog).read_bytes()

    def no_rewrite(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_rewrite)
    monkeypatch.setattr(Path, "write_bytes", no_rewrite)
    add_request(catalog, kind="domain", value="b.example.com")
    assert journal_path(catalog).read_bytes().startswith(before) and len(list_requests(catalog)) == 2


def test_readers_in_the_writers_process_never_see_a_half_written_request(catalog):
    """The service shares one catalog between threads: a listing during an add must not find the journal one
    record ahead of the committed rows and call that tampering."""
    import threading

    failures, done = [], threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                list_requests(catalog)
            except RegistryTamperedError as error:
                failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(30):
            add_request(catalog, kind="domain", value=f"site{index}.example.com")
    finally:
        done.set()
        reader.join()
    assert failures == [] and len(list_requests(catalog)) == 30


@pytest.mark.parametrize("suffix", ["co.uk", "com.au", "CO.UK.", "github.io", "blogspot.com"])
def test_a_public_suffix_is_not_a_domain_to_opt_out(catalog, suffix):
    with pytest.raises(RequestError, match="is a public suffix"):
        add_request(catalog, kind="domain", value=suffix)
    assert add_request(catalog, kind="domain", value="example.co.uk").value == "example.co.uk"


def test_urls_are_stored_canonical_and_local_paths_are_accepted(catalog):
    url = add_request(catalog, kind="url", value="HTTPS://Cdn.Example.ORG.:443/a/./b/../%7Eme.jpg#frag")
    assert url.value == "https://cdn.example.org/a/~me.jpg"
    assert add_request(catalog, kind="url_prefix", value="/data/pool/private/").value == "/data/pool/private/"
    assert add_request(catalog, kind="url", value="file:///data/pool/a%20b.png").value == "/data/pool/a b.png"
    with pytest.raises(RequestError, match="absolute path"):
        add_request(catalog, kind="url", value="pool/relative.png")
    with pytest.raises(RequestError, match="segments"):  # /dir/.. would widen to the whole site
        add_request(catalog, kind="url_prefix", value="http://a.example/dir/..")
    assert add_request(catalog, kind="url_prefix", value="http://A.example/img?").value == "http://a.example/img?"


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE optout_requests SET reason = 'edited' WHERE seq = 1",
        "UPDATE optout_requests SET value = 'other.org' WHERE seq = 2",
        "DELETE FROM optout_requests WHERE seq = 2",
        "DELETE FROM optout_requests WHERE seq = 3",
    ],
)
def test_an_edit_or_deletion_fails_loudly(catalog, tamper):
    for domain in ("a.example.com", "b.example.com", "c.example.com"):
        add_request(catalog, kind="domain", value=domain)
    catalog.db.execute(tamper)  # the newest record's deletion leaves a valid chain: the journal catches it
    with pytest.raises(RegistryTamperedError, match="append-only"):
        list_requests(catalog)
    with pytest.raises(RegistryTamperedError):
        add_request(catalog, kind="domain", value="d.example.com")


def test_the_journal_mirrors_the_registry_and_is_checked(catalog):
    import json

    from curation.audit.registry import journal_path

    for domain in ("a.example.com", "b.example.com"):
        add_request(catalog, kind="domain", value=domain)
    lines = journal_path(catalog).read_text().splitlines()
    assert [json.loads(line)["value"] for line in lines] == ["a.example.com", "b.example.com"]
    journal_path(catalog).write_text(lines[0] + "\n")  # a truncated journal
    with pytest.raises(RegistryTamperedError, match="journal"):
        list_requests(catalog)


def test_sql_cannot_write_the_catalog(home):
    audit.add_optout(home, kind="domain", value="example.com")
    from curation.audit.queries import QueryError, read_only_sql

    with pytest.raises(QueryError, match="read-only"):
        read_only_sql(home, "DELETE FROM optout_requests")
    columns, rows = read_only_sql(home, "SELECT kind, value FROM optout_requests")
    assert columns == ["kind", "value"] and rows == [("domain", "example.com")]


def test_image_uploads_go_through_the_safe_decoder(home):
    with pytest.raises(RequestError, match="not a usable image"):
        audit.add_optout(home, kind="image", image=b"<html>not an image</html>")
    request = audit.add_optout(home, kind="image", image=image_bytes(5))
    assert (Path(home) / "optout-uploads").exists() and request.kind == "image"


def test_concurrent_adds_from_many_processes_lose_nothing(home):
    curate = str(Path(sys.executable).parent / "curate")
    processes = [
        subprocess.Popen(
            [curate, "--home", str(home), "optout", "add", "--domain", f"site{i}.example.com", "--requester", f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ},
        )  # fmt: skip
        for i in range(6)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err.decode()[-500:] for _, err in results]
    with Catalog.open(home / "catalog.duckdb", read_only=True) as catalog:
        requests = list_requests(catalog)  # the chain verifies
    assert sorted(request.value for request in requests) == sorted(f"site{i}.example.com" for i in range(6))
    assert [request.seq for request in requests] == [1, 2, 3, 4, 5, 6]
