"""URL-list source against a real HTTP server on 127.0.0.1 (no mocks): fetch fates, retries, limits, opt-outs."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import FetchSettings, PipelineSpec, UrlListSource
from curation.errors import SpecError
from curation.ingest import Block, read_block
from curation.ingest.exclusions import Exclusions
from curation.ingest.urls import fetch_urls, read_url_table
from curation.types import Reason
from tests.conftest import free_port
from tests.corpus import image_bytes

GOOD = image_bytes(21)
MAX_BYTES = 100_000
HUGE_STREAM_BYTES = 64 * 2**20  # far more than any loopback socket buffer: the server cannot finish if we cut
CHUNK = b"\xff" * 65536

# Small timeouts and no back-off: failures are quick and the whole module runs in a few seconds.
FAST = {"timeout_s": 2.0, "backoff_s": 0.0}


class ServerState:
    """What the server saw, shared with the tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.agents: dict[str, list[str | None]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.stream_outcome: dict[str, str] = {}
        self.stream_done = threading.Condition(self.lock)

    def seen(self, path: str, agent: str | None) -> int:
        with self.lock:
            self.counts[path] = self.counts.get(path, 0) + 1
            self.agents.setdefault(path, []).append(agent)
            return self.counts[path]


class Handler(http.server.BaseHTTPRequestHandler):
    state: ServerState  # set on the subclass the fixture makes

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True):
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: C901 - one branch per route, read top to bottom
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        count = self.state.seen(path, self.headers.get("User-Agent"))
        if path == "/good.jpg":
            self._send(200, GOOD)
        elif path == "/missing.jpg":
            self._send(404, b"not here")
        elif path == "/robots.jpg":  # ?tag=<X-Robots-Tag value>&status=<code>
            status = int(query.get("status", ["200"])[0])
            self._send(status, GOOD if status == 200 else b"error page", {"X-Robots-Tag": query["tag"][0]})
        elif path.startswith("/flaky/"):  # 503 the first time, then the image
            if count == 1:
                self._send(503, b"busy", {"X-Robots-Tag": "noindex"} if "noindex" in path else None)
            else:
                self._send(200, GOOD)
        elif path.startswith("/down/"):
            self._send(503, b"still busy")
        elif path.startswith("/slow/"):
            time.sleep(1.5)
            self._send(200, GOOD)
        elif path.startswith("/concurrent/"):
            with self.state.lock:
                self.state.in_flight += 1
                self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
            try:
                time.sleep(0.2)
                self._send(200, GOOD)
            finally:
                with self.state.lock:
                    self.state.in_flight -= 1
        elif path == "/bytes":  # ?n=<body size>&length=0|1
            body = b"x" * int(query["n"][0])
            self._send(200, body, length=query.get("length", ["1"])[0] == "1")
        elif path.startswith("/huge-stream/"):  # no Content-Length: the body ends when the connection closes
            self._send(200, b"", length=False)
            outcome = "complete"
            try:
                for _ in range(HUGE_STREAM_BYTES // len(CHUNK)):
                    self.wfile.write(CHUNK)
            except OSError:
                outcome = "cut by client"
            with self.state.stream_done:
                self.state.stream_outcome[path] = outcome
                self.state.stream_done.notify_all()
        elif path == "/huge-declared.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
        elif path == "/bad-length.jpg":  # a hostile or broken server: unparseable Content-Length
            self.send_response(200)
            self.send_header("Content-Length", "lots")
            self.end_headers()
            self.wfile.write(GOOD)
        elif path.startswith("/redirect"):  # ?to=<Location>
            self.send_response(302)
            self.send_header("Location", query.get("to", ["/good.jpg"])[0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(500, b"no such route in the test server")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for the slow route's sleeping handlers at shutdown

    def handle_error(self, request, client_address) -> None:  # clients that hang up early are expected here
        pass


@pytest.fixture(scope="module")
def server():
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def unique(prefix: str) -> str:
    """A route path no other test uses, so per-path request counts belong to one test."""
    return f"/{prefix}/{uuid.uuid4().hex}.jpg"


def fetch(urls_or_rows, max_bytes: int = MAX_BYTES, **settings):
    rows = tuple(row if isinstance(row, tuple) else (row, None, None, None) for row in urls_or_rows)
    return list(fetch_urls(rows, FetchSettings(**{**FAST, **settings}), max_bytes))


# --- fetching -------------------------------------------------------------------------------------------------


def test_good_image_is_fetched_with_our_user_agent(server):
    base, state = server
    (result,) = fetch([f"{base}/good.jpg"], user_agent="curation-test-agent/9 (+tests)")
    assert result.reason is None and result.detail is None
    assert result.data == GOOD
    assert result.uri == f"{base}/good.jpg"
    assert state.agents["/good.jpg"][-1] == "curation-test-agent/9 (+tests)"


def test_default_user_agent_is_sent(server):
    base, state = server
    path = unique("flaky")  # any route; a fresh path so the recorded agent is this request's
    fetch([base + path], retries=1)
    assert state.agents[path] == [FetchSettings().user_agent] * 2


def test_results_come_back_in_row_order_with_table_metadata(server):
    base, _ = server
    rows = [
        (f"{base}/missing.jpg", "CC0", "a 404", "nobody"),
        (f"{base}/good.jpg", "CC-BY-4.0", "noise", "tests"),
        ("ftp://example.com/x.jpg", "MIT", "wrong scheme", None),
        (f"{base}/robots.jpg?tag=noai", None, None, "opted out"),
        (f"{base}/redirect.jpg", "CC-BY-SA-4.0", "moved", "someone"),
    ]
    results = fetch(rows)
    assert [result.uri for result in results] == [row[0] for row in rows]
    assert [result.reason for result in results] == [
        Reason.HTTP_ERROR,
        None,
        Reason.INVALID_URL,
        Reason.ROBOTS_OPT_OUT,
        None,
    ]
    for result, (_url, license_, caption, attribution) in zip(results, rows):
        assert result.meta == {"license": license_, "caption": caption, "attribution": attribution}


def test_404_is_an_http_error_and_is_not_retried(server):
    base, state = server
    before = state.counts.get("/missing.jpg", 0)
    (result,) = fetch([f"{base}/missing.jpg"], retries=3)
    assert result.reason == Reason.HTTP_ERROR
    assert result.detail == "HTTP 404"
    assert result.data is None
    assert state.counts["/missing.jpg"] - before == 1


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "example.com/a.jpg", "", None])
def test_non_http_urls_are_invalid_and_not_fetched(url):
    (result,) = fetch([(url, "CC0", None, None)])
    assert result.reason == Reason.INVALID_URL
    assert result.data is None
    assert result.meta["license"] == "CC0"


@pytest.mark.parametrize(
    "url",
    ["http://" + "a" * 64 + ".example/x.jpg", "http:///x.jpg", "http://exa mple.com/x.jpg", "http://a:99999/x.jpg"],
    ids=["label-over-63", "no-host", "space-in-host", "bad-port"],
)
def test_unrequestable_http_urls_are_invalid_and_not_retried(url):
    started = time.perf_counter()
    (result,) = fetch([(url, "CC0", None, None)], retries=2, backoff_s=1.0)
    assert (result.reason, result.meta["license"]) == (Reason.INVALID_URL, "CC0"), result.detail
    assert time.perf_counter() - started < 1.0, "retried"


def test_a_redirect_to_an_unparseable_location_is_invalid_and_not_retried(server):
    base, state = server
    path = unique("redirect")
    (result,) = fetch([f"{base}{path}?to=http://[oops/x.jpg"], retries=2)
    assert result.reason == Reason.INVALID_URL and "IPv6" in result.detail
    assert state.counts[path] == 1


def test_redirect_to_the_image_is_followed(server):
    base, _ = server
    (result,) = fetch([f"{base}/redirect.jpg"])
    assert result.reason is None
    assert result.data == GOOD
    assert result.uri == f"{base}/redirect.jpg"  # the row's URL; where it led is recorded beside it
    assert result.redirected_to == f"{base}/good.jpg"
    (direct,) = fetch([f"{base}/good.jpg"])
    assert direct.data == GOOD and direct.redirected_to is None


# --- retries and failures -------------------------------------------------------------------------------------


def test_a_503_is_retried_and_the_second_attempt_succeeds(server):
    base, state = server
    path = unique("flaky")
    (result,) = fetch([base + path], retries=2)
    assert result.reason is None
    assert result.data == GOOD
    assert state.counts[path] == 2


def test_an_always_503_route_gives_http_error_after_retries_plus_one_attempts(server):
    base, state = server
    path = unique("down")
    (result,) = fetch([base + path], retries=3)
    assert result.reason == Reason.HTTP_ERROR
    assert result.detail == "HTTP 503"
    assert state.counts[path] == 4


def test_no_retries_means_one_attempt(server):
    base, state = server
    path = unique("down")
    (result,) = fetch([base + path], retries=0)
    assert result.reason == Reason.HTTP_ERROR
    assert state.counts[path] == 1


def test_a_slow_server_times_out_and_is_retried_then_fails(server):
    base, state = server
    path = unique("slow")
    (result,) = fetch([base + path], timeout_s=0.3, retries=1)
    assert result.reason == Reason.FETCH_FAILED
    assert "Timeout" in result.detail
    assert result.data is None
    assert state.counts[path] == 2


def test_a_refused_connection_is_fetch_failed():
    port = free_port()  # bound then released: nothing listens there
    (result,) = fetch([f"http://127.0.0.1:{port}/x.jpg"], retries=1)
    assert result.reason == Reason.FETCH_FAILED
    assert "ConnectionError" in result.detail


def test_an_error_page_marked_noindex_is_still_an_http_error(server):
    base, _ = server
    (result,) = fetch([f"{base}/robots.jpg?tag=noindex&status=404"])
    assert result.reason == Reason.HTTP_ERROR
    assert result.detail == "HTTP 404"


def test_a_503_marked_noindex_is_retried_not_taken_as_an_opt_out(server):
    base, state = server
    path = unique("flaky") + "-noindex"
    (result,) = fetch([base + path], retries=2)
    assert result.reason is None
    assert result.data == GOOD
    assert state.counts[path] == 2


# --- size limits ----------------------------------------------------------------------------------------------


def test_a_streamed_body_without_length_is_cut_at_max_bytes(server):
    base, state = server
    path = unique("huge-stream")
    (result,) = fetch([base + path])
    assert result.reason == Reason.TOO_LARGE
    assert result.data is None
    assert str(MAX_BYTES) in result.detail
    with state.stream_done:
        assert state.stream_done.wait_for(lambda: path in state.stream_outcome, timeout=10)
    assert state.stream_outcome[path] == "cut by client"  # we hung up; we did not drain 64 MiB


def test_a_declared_length_over_max_bytes_is_too_large_unread(server):
    base, _ = server
    (result,) = fetch([f"{base}/huge-declared.jpg"])
    assert result.reason == Reason.TOO_LARGE
    assert result.data is None
    assert str(10**12) in result.detail


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "streamed"])
def test_max_bytes_is_inclusive(server, length):
    base, _ = server
    flag = int(length)
    exact, over = fetch([f"{base}/bytes?n={MAX_BYTES}&length={flag}", f"{base}/bytes?n={MAX_BYTES + 1}&length={flag}"])
    assert exact.reason is None and exact.data == b"x" * MAX_BYTES
    assert over.reason == Reason.TOO_LARGE and over.data is None


def test_an_unparseable_content_length_does_not_break_the_block(server):
    base, _ = server
    bad, good = fetch([f"{base}/bad-length.jpg", f"{base}/good.jpg"])
    assert bad.reason is None and bad.data == GOOD  # length unknown: streamed and bounded like any other body
    assert good.reason is None and good.data == GOOD


# --- X-Robots-Tag opt-out -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "hit"),
    [
        ("noai", "noai"),
        ("NoImageAI", "noimageai"),
        ("googlebot: noimageindex", "noimageindex"),
        ("nofollow, noindex", "noindex"),
        ("otherbot: noarchive, noai", "noai"),
    ],
)
def test_robots_opt_out_directives_are_honoured(server, tag, hit):
    base, _ = server
    (result,) = fetch([f"{base}/robots.jpg?tag={tag}"])
    assert result.reason == Reason.ROBOTS_OPT_OUT
    assert result.data is None
    assert hit in result.detail


@pytest.mark.parametrize("tag", ["nofollow", "noarchive, nosnippet", "all"])
def test_other_robots_directives_do_not_opt_out(server, tag):
    base, _ = server
    (result,) = fetch([f"{base}/robots.jpg?tag={tag}"])
    assert result.reason is None
    assert result.data == GOOD


def test_an_empty_opt_out_list_lets_a_noai_image_through(server):
    base, _ = server
    noai, googlebot = fetch(
        [f"{base}/robots.jpg?tag=noai", f"{base}/robots.jpg?tag=googlebot: noimageindex"], robots_opt_out=()
    )
    assert noai.reason is None and noai.data == GOOD
    assert googlebot.reason is None and googlebot.data == GOOD


def test_a_configured_opt_out_list_replaces_the_default(server):
    base, _ = server
    noai, custom = fetch([f"{base}/robots.jpg?tag=noai", f"{base}/robots.jpg?tag=noml"], robots_opt_out=("noml",))
    assert noai.reason is None and noai.data == GOOD
    assert custom.reason == Reason.ROBOTS_OPT_OUT


# --- concurrency ----------------------------------------------------------------------------------------------


def test_concurrency_is_bounded(server):
    base, state = server
    with state.lock:
        state.in_flight = state.max_in_flight = 0
    urls = [base + unique("concurrent") for _ in range(8)]
    results = fetch(urls, concurrency=2)
    assert [result.uri for result in results] == urls
    assert all(result.data == GOOD for result in results)
    assert state.max_in_flight == 2  # never more than 2 at once, and the 2 were really used


def test_only_a_window_of_rows_is_fetched_ahead_of_the_consumer(server):
    """Bodies fetched ahead wait in memory until the block's decode loop takes them: at most 2 x concurrency."""
    base, state = server
    paths = [unique("concurrent") for _ in range(40)]
    results = fetch_urls(tuple((base + path, None, None, None) for path in paths), FetchSettings(**FAST, concurrency=2),
                         MAX_BYTES)  # fmt: skip
    first = next(results)
    time.sleep(1.0)  # time for 10 more fetches of 0.2 s on 2 workers
    with state.lock:
        requested = sum(path in state.counts for path in paths)
    assert requested <= 5, f"{requested} rows fetched while the consumer held one"
    assert [first.uri, *(result.uri for result in results)] == [base + path for path in paths]


# --- the URL table --------------------------------------------------------------------------------------------


def source(path: Path, **columns) -> UrlListSource:
    return UrlListSource(kind="urls", name="web", path=path, **columns)


def test_csv_with_all_columns(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,license,caption,attribution\n"
        'http://a.example/1.jpg,CC-BY-4.0,"a cat, sitting",Jane\n'
        "http://a.example/2.jpg,,,\n"
    )
    assert read_url_table(source(path)) == [
        ("http://a.example/1.jpg", "CC-BY-4.0", "a cat, sitting", "Jane"),
        ("http://a.example/2.jpg", None, None, None),
    ]


def test_csv_values_are_kept_as_written(tmp_path):
    """Columns are text: no type inference may turn '007' into '7', 'true' into 'True' or 'NA' into nothing."""
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,license,caption,attribution\nhttp://a.example/1.jpg,2.0,007,true\nhttp://a.example/2.jpg,1,NA,null\n"
    )
    assert read_url_table(source(path)) == [
        ("http://a.example/1.jpg", "2.0", "007", "true"),
        ("http://a.example/2.jpg", "1", "NA", "null"),
    ]


def test_csv_with_only_the_url_column(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text("url\nhttp://a.example/1.jpg\nhttps://b.example/2.png\n")
    assert read_url_table(source(path)) == [
        ("http://a.example/1.jpg", None, None, None),
        ("https://b.example/2.png", None, None, None),
    ]


def test_parquet_with_all_columns_and_renamed_url_column(tmp_path):
    path = tmp_path / "urls.parquet"
    table = pa.table(
        {
            "image_url": ["http://a.example/1.jpg", "http://a.example/2.jpg"],
            "license": ["CC0", None],
            "caption": ["first", "second"],
            "attribution": [None, "Bob"],
        }
    )
    pq.write_table(table, path)
    assert read_url_table(source(path, url_column="image_url")) == [
        ("http://a.example/1.jpg", "CC0", "first", None),
        ("http://a.example/2.jpg", None, "second", "Bob"),
    ]


def test_parquet_with_only_the_url_column(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://a.example/1.jpg"]}), path)
    assert read_url_table(source(path)) == [("http://a.example/1.jpg", None, None, None)]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_missing_url_column_is_a_spec_error_naming_it(tmp_path, suffix):
    path = tmp_path / f"urls{suffix}"
    if suffix == ".csv":
        path.write_text("link,license\nhttp://a.example/1.jpg,CC0\n")
    else:
        pq.write_table(pa.table({"link": ["http://a.example/1.jpg"]}), path)
    with pytest.raises(SpecError, match="no column 'url'") as error:
        read_url_table(source(path))
    assert "'web'" in str(error.value) and str(path) in str(error.value)


def test_a_malformed_csv_row_becomes_its_own_row_and_the_rest_is_read(tmp_path):
    """A row with too many or too few fields is kept, last, as a location plus the problem; a quoted caption may
    span lines and is one value."""
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,license,caption\n"
        "http://a.example/1.jpg,CC0,one\n"
        "http://a.example/2.jpg,CC0,a caption, with an unquoted comma\n"
        'http://a.example/3.jpg,CC0,"two\nlines"\n'
        "http://a.example/4.jpg\n"
        "http://a.example/5.jpg,MIT,five\n"
    )
    assert read_url_table(source(path)) == [
        ("http://a.example/1.jpg", "CC0", "one", None),
        ("http://a.example/3.jpg", "CC0", "two\nlines", None),
        ("http://a.example/5.jpg", "MIT", "five", None),
        (f"{path}#row=3", None, None, None,
         "4 fields where the header has 3: http://a.example/2.jpg,CC0,a caption, with an unquoted comma"),
        (f"{path}#row=5", None, None, None, "1 fields where the header has 3: http://a.example/4.jpg"),
    ]  # fmt: skip


def test_a_malformed_row_is_a_malformed_row_input_and_is_not_fetched(server, tmp_path):
    base, state = server
    path = tmp_path / "urls.csv"
    bad = unique("malformed")
    path.write_text(f"url,license\n{base}/good.jpg,CC0\n{base}{bad},CC0,extra\n")
    spec = PipelineSpec.model_validate(
        {"name": "web", "sources": [{"kind": "urls", "name": "web", "path": str(path)}], "fetch": FAST}
    )
    rows = tuple(read_url_table(spec.sources[0]))
    good, malformed = read_block(Block(0, "web", "urls", rows), spec)
    assert good.data == GOOD and good.meta["license"] == "CC0"
    assert malformed.uri == f"{path}#row=3" and malformed.data is None
    assert malformed.reason == Reason.MALFORMED_ROW and malformed.detail.endswith(f"{base}{bad},CC0,extra")
    assert bad not in state.counts  # never requested


def test_an_unreadable_table_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read URL list"):
        read_url_table(source(tmp_path / "absent.csv"))


def test_table_rows_feed_fetch_and_carry_their_metadata(server, tmp_path):
    base, _ = server
    path = tmp_path / "urls.csv"
    path.write_text(
        f"url,license,caption,attribution\n{base}/good.jpg,CC-BY-4.0,noise,tests\n{base}/missing.jpg,CC0,,\n"
    )
    good, missing = fetch(tuple(read_url_table(source(path))))
    assert good.data == GOOD
    assert good.meta == {"license": "CC-BY-4.0", "caption": "noise", "attribution": "tests"}
    assert missing.reason == Reason.HTTP_ERROR
    assert missing.meta == {"license": "CC0", "caption": None, "attribution": None}


def test_a_redirect_to_an_opted_out_url_is_not_followed(server):
    base, state = server
    before = state.counts.get("/good.jpg", 0)
    exclusions = Exclusions(urls=(("opt-000001-abc", f"{base}/good.jpg"),))
    rows = ((f"{base}/redirect.jpg", None, None, None),)
    (result,) = fetch_urls(rows, FetchSettings(**FAST), MAX_BYTES, exclusions)
    assert result.reason == Reason.OPTED_OUT and result.data is None
    assert result.detail == f"opt-000001-abc (redirected to {base}/good.jpg, not fetched)"
    assert state.counts.get("/good.jpg", 0) == before  # the target was never requested
