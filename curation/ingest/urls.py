"""URL-list source: a CSV or Parquet table fetched over HTTP(S) with bounded concurrency, timeouts and retries.

Fetch-time opt-out: a response whose X-Robots-Tag carries one of `fetch.robots_opt_out` (noai, noimageai,
noindex, noimageindex by default) is not taken; its row says so. Bodies are streamed and cut at
`decode.max_bytes`, so a hostile server cannot make a worker hold an unbounded body. Redirects are followed
hop by hop, each target checked against the opt-out exclusions before it is requested; where they led is
recorded (`redirected_to`), so an opt-out filed later for the final URL or its host finds the image too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import requests

from curation.config import FetchSettings, UrlListSource
from curation.errors import SpecError
from curation.ingest.exclusions import NO_EXCLUSIONS, Exclusions
from curation.ingest.raw import RawInput
from curation.types import Reason

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 10
_local = threading.local()


def read_url_table(source: UrlListSource) -> list[tuple[str | None, ...]]:
    """(url, license, caption, attribution) rows in file order, then one (location, None, None, None, problem) row
    per CSV row that cannot be parsed (a wrong number of fields): it becomes a `malformed_row` input, never
    fetched, so one bad line neither refuses the whole list nor vanishes."""
    path: Path = source.path
    malformed: list[tuple[str | None, ...]] = []

    def keep_malformed(row: pacsv.InvalidRow) -> str:
        problem = f"{row.actual_columns} fields where the header has {row.expected_columns}: {row.text[:200]}"
        malformed.append((f"{path}#row={row.number}", None, None, None, problem))
        return "skip"

    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            # Every column we use is text: no type inference ('007' -> 7, 'true' -> True) and only an empty cell is
            # null (not 'NA', 'null', 'nan', ...). A quoted caption may span lines. One reading thread, so that
            # the reader knows each bad row's number (the header is row 1).
            text_columns = (source.url_column, source.license_column, source.caption_column, source.attribution_column)
            options = pacsv.ConvertOptions(
                column_types={name: pa.string() for name in text_columns}, strings_can_be_null=True, null_values=[""]
            )
            parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=keep_malformed)
            table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False), parse_options=parse,
                                   convert_options=options)  # fmt: skip
    except (OSError, pa.ArrowInvalid) as error:
        raise SpecError(f"source {source.name!r}: cannot read URL list {path}: {error}") from None
    if source.url_column not in table.column_names:
        raise SpecError(f"source {source.name!r}: {path} has no column {source.url_column!r}")

    def column(name: str) -> list[str | None]:
        if name not in table.column_names:
            return [None] * table.num_rows
        return [None if value is None else str(value) for value in table.column(name).to_pylist()]

    urls = column(source.url_column)
    rows = zip(urls, column(source.license_column), column(source.caption_column), column(source.attribution_column))
    return [*rows, *malformed]


def fetch_urls(
    rows: tuple[tuple[str, str | None, str | None, str | None], ...],
    settings: FetchSettings,
    max_bytes: int,
    exclusions: Exclusions = NO_EXCLUSIONS,
) -> Iterator[RawInput]:
    """Fetch every row concurrently; yields results in row order. A redirect to a URL that `exclusions` cover
    is not followed: the row is opted out, so a redirect cannot smuggle in what a request forbids.

    Only a window of 2 x concurrency rows is submitted ahead of the consumer (the decode loop, slower than the
    fetches), so a block holds that many bodies at most, not block_size x max_bytes."""
    workers = min(settings.concurrency, max(len(rows), 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque[Future[RawInput]] = deque()
        for row in rows:
            window.append(pool.submit(_fetch_row, row, settings, max_bytes, exclusions))
            if len(window) == 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _session(settings: FetchSettings) -> requests.Session:
    if getattr(_local, "session", None) is None:
        session = requests.Session()
        session.headers["User-Agent"] = settings.user_agent
        _local.session = session
    return _local.session


def _fetch_row(row, settings: FetchSettings, max_bytes: int, exclusions: Exclusions) -> RawInput:
    url, license_, caption, attribution = row
    meta = {key: value for key, value in (("license", license_), ("caption", caption), ("attribution", attribution))}
    if not url or not url.lower().startswith(("http://", "https://")):
        return RawInput(str(url), reason=Reason.INVALID_URL, detail="only http(s) URLs are fetched", meta=meta)
    last: RawInput | None = None
    for attempt in range(settings.retries + 1):
        if attempt:
            time.sleep(settings.backoff_s * 2 ** (attempt - 1))
        last, retry = _fetch_once(url, settings, max_bytes, exclusions)
        last.meta = meta
        if not retry:
            break
    return last


def _fetch_once(url: str, settings: FetchSettings, max_bytes: int, exclusions: Exclusions) -> tuple[RawInput, bool]:
    """One GET, redirects followed here hop by hop (each checked against the exclusions); returns (result, worth
    retrying)."""
    target = url
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            with _session(settings).get(target, stream=True, timeout=settings.timeout_s,
                                        allow_redirects=False) as response:  # fmt: skip
                if response.is_redirect:
                    target = urljoin(target, response.headers["Location"])
                    if not target.lower().startswith(("http://", "https://")):
                        return RawInput(url, reason=Reason.INVALID_URL, detail=f"redirected to {target[:200]}"), False
                    request = exclusions.covering_uri(target) if exclusions else None
                    if request:
                        detail = f"{request} (redirected to {target[:200]}, not fetched)"
                        return RawInput(url, reason=Reason.OPTED_OUT, detail=detail), False
                    continue
                result, retry = _read_response(url, response, settings, max_bytes)
                result.redirected_to = target if target != url else None
                return result, retry
        return RawInput(url, reason=Reason.FETCH_FAILED, detail=f"more than {MAX_REDIRECTS} redirects"), False
    except ValueError as error:  # requests' InvalidURL, urllib3's LocationParseError (a host label over 63
        # characters), a Location urljoin cannot parse: no request can be made, so none is retried
        return RawInput(url, reason=Reason.INVALID_URL, detail=f"{type(error).__name__}: {error}"[:300]), False
    except requests.RequestException as error:
        return RawInput(url, reason=Reason.FETCH_FAILED, detail=f"{type(error).__name__}: {error}"[:300]), True


def _read_response(url: str, response: requests.Response, settings: FetchSettings,
                   max_bytes: int) -> tuple[RawInput, bool]:  # fmt: skip
    # Status first: an error page's X-Robots-Tag (often noindex) is about that page, not the image.
    if response.status_code >= 400:
        detail = f"HTTP {response.status_code}"
        return RawInput(url, reason=Reason.HTTP_ERROR, detail=detail), response.status_code in RETRY_STATUS
    opted_out = _robots_opt_out(response.headers.get("X-Robots-Tag", ""), settings.robots_opt_out)
    if opted_out:
        return RawInput(url, reason=Reason.ROBOTS_OPT_OUT, detail=f"X-Robots-Tag: {opted_out}"), False
    declared = _content_length(response.headers.get("Content-Length"))
    if declared > max_bytes:
        return RawInput(url, reason=Reason.TOO_LARGE, detail=f"{declared} bytes > max_bytes {max_bytes}"), False
    body = bytearray()
    for piece in response.iter_content(chunk_size=1 << 16):
        body.extend(piece)
        if len(body) > max_bytes:
            return RawInput(url, reason=Reason.TOO_LARGE, detail=f"more than max_bytes {max_bytes}"), False
    return RawInput(url, data=bytes(body)), False


def _content_length(value: str | None) -> int:
    """The declared body size, 0 when absent or unparseable (the streamed read still enforces max_bytes)."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _robots_opt_out(header: str, directives: tuple[str, ...]) -> str | None:
    """The X-Robots-Tag value if it names an opt-out directive (comma lists, optional 'bot:' prefixes)."""
    found = set()
    for part in header.replace(";", ",").split(","):
        token = part.strip().lower()
        if ":" in token:  # "otherbot: noai" still applies to us only if the bot is us; be conservative: honour it
            token = token.split(":", 1)[1].strip()
        found.update(word for word in token.split() if word)
    hits = [directive for directive in directives if directive.lower() in found]
    return ", ".join(hits) if hits else None
