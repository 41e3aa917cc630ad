"""A URL-list source end to end on Ray, against a real HTTP server on 127.0.0.1: licence and caption columns
reach the samples, fetch-time opt-outs and errors become rows, nothing is lost."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curation
from tests.corpus import image_bytes
from tests.web import QuietHandler, serving

IMAGES = {f"/img/{index}.jpg": image_bytes(100 + index) for index in range(6)}
NOAI = "/img/0.jpg"


class Handler(QuietHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        robots = {"X-Robots-Tag": "noai, noimageai"} if self.path == NOAI else {}
        self.send_body(IMAGES.get(self.path), {"Content-Type": "image/jpeg", **robots})


@pytest.fixture
def web():
    with serving(Handler) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_url_list_to_version(ray_local, web, tmp_path, home):
    urls = [f"{web}{path}" for path in sorted(IMAGES)] + [f"{web}/missing.jpg", "ftp://example.invalid/x.jpg"]
    table = pa.table(
        {
            "url": urls,
            "license": ["CC-BY-4.0"] * len(urls),
            "caption": [f"caption {index}" for index in range(len(urls))],
        }
    )
    pq.write_table(table, tmp_path / "urls.parquet")
    listed = tmp_path / "listed.csv"  # a hand-made list with one broken line: the line is a row, the rest is read
    listed.write_text(f"url,license\n{web}/img/5.jpg,CC-BY-4.0\n{web}/img/4.jpg,CC-BY-4.0,stray field\n")
    spec = {
        "name": "web",
        "sources": [
            {"kind": "urls", "name": "web", "path": str(tmp_path / "urls.parquet")},
            {"kind": "urls", "name": "listed", "path": str(listed)},
        ],
        "fetch": {"retries": 0, "timeout_s": 5},
        "execution": {"executor": "ray", "block_size": 3},
    }
    version = curation.open_version(curation.run(spec, home=home).version, home=home)
    fates = {(row["source"], row["uri"]): row["reason"] or row["status"] for row in version.provenance().to_pylist()}
    assert fates.pop(("listed", f"{web}/img/5.jpg")) == "kept"
    assert fates.pop(("listed", f"{listed}#row=3")) == "malformed_row"
    assert {uri: fate for (_, uri), fate in fates.items()} == {
        **{f"{web}{path}": "kept" for path in IMAGES if path != NOAI},
        f"{web}{NOAI}": "robots_opt_out",
        f"{web}/missing.jpg": "http_error",
        "ftp://example.invalid/x.jpg": "invalid_url",
    }
    samples = version.samples().to_pylist()
    assert len(samples) == 5 and all(sample["license"] == "CC-BY-4.0" for sample in samples)
    by_url = {sample["provenance"][0]["uri"]: sample for sample in samples}
    assert by_url[f"{web}/img/3.jpg"]["caption"] == "caption 3"
    assert version.manifest["dropped"]["ingest"] == {
        "http_error": 1, "invalid_url": 1, "malformed_row": 1, "robots_opt_out": 1
    }  # fmt: skip
