"""Opt-out exclusions compare URLs in one canonical spelling: a request is not dodged by writing its URL
another way, and a different URL is not caught by accident."""

from __future__ import annotations

import pytest

from curation.ingest.exclusions import Exclusions, canonical_uri

REQUESTED = "http://127.0.0.1:18765/img3.png"


@pytest.mark.parametrize(
    "spelling",
    ["HTTP://127.0.0.1:18765/img3.png", "http://127.0.0.1:18765/%69mg3.png", "http://127.0.0.1:18765/./img3.png",
     "http://127.0.0.1:18765/x/../img3.png", "http://127.0.0.1:18765/img3.png?", "http://127.0.0.1:18765/img3.png#a",
     "http://user:secret@127.0.0.1:18765/img3.png", " http://127.0.0.1:18765/img3.png"],
)  # fmt: skip
def test_other_spellings_of_a_requested_url_are_covered(spelling):
    assert Exclusions(urls=(("opt-1", REQUESTED),)).covering_uri(spelling) == "opt-1"
    assert Exclusions(prefixes=(("opt-2", "HTTP://127.0.0.1:18765/"),)).covering_uri(spelling) == "opt-2"


@pytest.mark.parametrize(
    "other",
    ["http://127.0.0.1:18765/img3.png?size=2", "http://127.0.0.1:18766/img3.png", "https://127.0.0.1:18765/img3.png",
     "http://127.0.0.1:18765/IMG3.png", "http://127.0.0.1:18765/img3%2Epng2"],
)  # fmt: skip
def test_different_urls_are_not_covered(other):
    assert Exclusions(urls=(("opt-1", REQUESTED),)).covering_uri(other) is None


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [("http://Example.org.:80", "http://example.org/"), ("https://example.org:8443/a", "https://example.org:8443/a"),
     ("http://example.org/a%2fb", "http://example.org/a%2Fb"), ("http://b\u00fccher.example/x", "http://xn--bcher-kva.example/x"),
     ("file:///srv/pool/a%20b.png", "/srv/pool/a b.png"), ("/srv/pool/x.png", "/srv/pool/x.png"),
     ("file:///srv/shard-000.tar#cat%201.png", "/srv/shard-000.tar#cat 1.png"),  # a tar member, as ingest names it
     ("file:///srv/pool/a%23b.png", "/srv/pool/a#b.png"),
     ("s3://Bucket/Key.jpg", "s3://Bucket/Key.jpg"), ("http://example.org:notaport/x", "http://example.org:notaport/x")],
)  # fmt: skip
def test_canonical_spelling(uri, canonical):
    assert canonical_uri(uri) == canonical


@pytest.mark.parametrize(
    ("uri", "hit"),
    [("http://example.org./x", True), ("https://cdn.example.org.:8443/x", True), ("http://EXAMPLE.org/x", True),
     ("http://notexample.org/x", False), ("http://example.org.evil.net/x", False), ("http://[::1/x", False)],
)  # fmt: skip
def test_domains_match_hosts_and_subdomains_however_written(uri, hit):
    assert Exclusions(domains=(("opt-3", "example.org"),)).covering_uri(uri) == ("opt-3" if hit else None)


def test_the_first_request_in_registry_order_is_named_and_exact_urls_win():
    exclusions = Exclusions(urls=(("opt-5", "http://a.example.org/x.jpg"),),
                            prefixes=(("opt-3", "http://a.example.org/"), ("opt-4", "http://a.example.org/x")),
                            domains=(("opt-1", "example.org"), ("opt-2", "a.example.org")))  # fmt: skip
    assert exclusions.covering_uri("http://a.example.org/x.jpg") == "opt-5"
    assert exclusions.covering_uri("http://a.example.org/x2.jpg") == "opt-3"
    assert exclusions.covering_uri("http://b.a.example.org/y.jpg") == "opt-1"
    later_first = Exclusions(domains=(("opt-1", "a.example.org"), ("opt-2", "example.org")))
    assert later_first.covering_uri("http://b.a.example.org/y.jpg") == "opt-1"


def test_a_large_registry_is_looked_up_not_scanned():
    urls = tuple((f"opt-{i}", f"https://cdn.example.org/u/{i}.jpg") for i in range(200_000))
    exclusions = Exclusions(urls=urls, domains=tuple((f"d-{i}", f"site{i}.example.net") for i in range(50_000)))
    assert exclusions.covering_uri("HTTPS://cdn.example.org/u/199999.jpg") == "opt-199999"
    assert exclusions.covering_uri("https://img.site49999.example.net/a.png") == "d-49999"
    assert exclusions.covering_uri("https://cdn.example.org/u/200000.jpg") is None


@pytest.mark.parametrize(
    ("requested", "spelling"),
    [("http://a.example/caf\u00e9.jpg", "http://a.example/caf%C3%A9.jpg"), ("http://a.example/caf%c3%a9.jpg",
     "http://a.example/caf\u00e9.jpg"), ("http://a.example/a b.jpg", "http://a.example/a%20b.jpg"),
     ("http://stra\u00dfe.de/x.jpg", "http://xn--strae-oqa.de/x.jpg")],
)  # fmt: skip
def test_non_ascii_urls_and_hosts_compare_as_clients_send_them(requested, spelling):
    assert Exclusions(urls=(("opt-1", requested),)).covering_uri(spelling) == "opt-1"
    assert canonical_uri("http://stra\u00dfe.de/") != canonical_uri("http://strasse.de/")  # two hosts (UTS 46)


def test_a_prefix_keeps_its_trailing_question_mark():
    exclusions = Exclusions(prefixes=(("opt-1", "http://a.example/img?"),))
    assert exclusions.covering_uri("http://a.example/img?size=2") == "opt-1"
    assert exclusions.covering_uri("http://a.example/img2.jpg") is None
    assert exclusions.covering_uri("http://a.example/img/a.jpg") is None
