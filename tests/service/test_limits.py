"""What a request may cost a real `curate serve`: body sizes, upload pixels, form fields, rate-limit keys."""

from __future__ import annotations

import http.client
import io
import time

import pytest
from PIL import Image

from tests.service.conftest import start_service


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    running = start_service(tmp_path_factory.mktemp("limits") / "home")
    yield running
    running.stop()


def raw_post(service, path: str, headers: dict[str, str]) -> http.client.HTTPConnection:
    """A POST whose headers are sent and whose body is left to the caller."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=20)
    connection.putrequest("POST", path)
    for name, value in {"Authorization": f"Bearer {service.tokens['viewer']}", **headers}.items():
        connection.putheader(name, value)
    connection.endheaders()
    return connection


@pytest.mark.parametrize("path", ["/api/optouts", "/api/versions/x@v1/similar"])
def test_a_body_over_the_limit_is_refused_before_it_is_received(limited, path):
    """By its Content-Length, before a byte of it is sent; chunked, as soon as the limit is passed (the body is
    left unfinished, so only a server that stops reading on its own can answer)."""
    from curation.service.app import FORM_OVERHEAD

    form = {"Content-Type": "multipart/form-data; boundary=x"}
    declared = raw_post(limited, path, {**form, "Content-Length": str(300 * 2**20)})
    assert declared.getresponse().status == 413
    limit = limited.get("/api/policy").json()["max_upload_bytes"] + FORM_OVERHEAD
    chunked = raw_post(limited, path, {**form, "Transfer-Encoding": "chunked"})
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    chunked.send(b"%x\r\n%s\r\n" % (len(part), part))
    chunk, sent = b"\0" * 2**20, len(part)
    while sent <= limit:
        piece = chunk[: limit + 1 - sent]
        chunked.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        sent += len(piece)
    response = chunked.getresponse()
    assert response.status == 413 and b"larger than" in response.read()


def test_an_upload_declaring_a_huge_canvas_is_refused_from_its_header(limited):
    """A small PNG of a 5001x5001 canvas: under the decoder's ingest limit (89 Mpx), over the service's for
    uploads (25 Mpx), which it checks before decoding anything."""
    buffer = io.BytesIO()
    Image.new("L", (5001, 5001)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    files = {"image": ("canvas.png", buffer.getvalue(), "image/png")}
    limit = limited.get("/api/policy").json()["max_upload_pixels"]
    for path, data in (("/api/optouts", {"kind": "image"}), ("/api/versions/x@v1/similar", {})):
        refused = limited.post(path, role="viewer", data=data, files=files)
        assert refused.status_code == 413 and f"at most {limit}" in refused.json()["detail"], (path, refused.text)


def test_the_rate_limit_counts_the_peer_not_a_forwarded_for_header(limited):
    """Proxy headers are off unless configured: a client cannot be a new address per request."""
    limit = int(limited.get("/api/policy").json()["public_optout_limit"].split("/")[0])
    codes = [limited.post("/api/optouts", role=None, headers={"X-Forwarded-For": f"10.9.9.{i}"},
                          data={"kind": "domain", "value": f"site{i}.example"}).status_code
             for i in range(limit + 1)]  # fmt: skip
    assert codes[-1] == 429, codes


def test_the_rate_limiter_forgets_quiet_addresses_and_holds_at_most_max_keys():
    from curation.service.app import RateLimiter

    limiter = RateLimiter(1, window=0.2, max_keys=3)
    assert [limiter.allow(key) for key in "abcd"] == [True] * 4 and len(limiter) == 3  # 'a' went first
    assert limiter.allow("a") and not limiter.allow("d")
    time.sleep(0.25)
    assert limiter.allow("e") and len(limiter) == 1  # every other window had emptied


def test_opt_out_fields_are_bounded(limited):
    """The registry keeps every request forever: a field over its length is refused, named."""
    for name, most in (("value", 2048), ("reason", 1000), ("requester", 200)):
        form = {"kind": "url", "value": "https://example.com/a.jpg", name: "https://example.com/" + "a" * most}
        refused = limited.post("/api/optouts", role="viewer", data=form)
        assert refused.status_code == 422 and refused.json()["detail"].startswith(f"{name} is "), refused.text
    as_file = limited.post("/api/optouts", role="viewer", data={"kind": "url"}, files={"value": ("v", b"x")})
    assert as_file.status_code == 422 and "value must be a text field" in as_file.text
    fitting = {
        "kind": "url",
        "value": "https://example.com/" + "a" * 2000,
        "reason": "r" * 1000,
        "requester": "q" * 200,
    }
    assert limited.post("/api/optouts", role="viewer", data=fitting).status_code == 201
