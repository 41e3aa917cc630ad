"""The web page in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download).

`infra/install-browser.sh` installs Chromium; the README's test command runs it first.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from curation.store.blobs import image_id_of
from tests.conftest import FIXTURE_IMAGES
from tests.service.conftest import SPECS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags from the machine notes: no sandbox as root, and no background calls to the (closed) network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium not found: run `bash infra/install-browser.sh` (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def test_a_curator_runs_browses_audits_and_opts_an_image_out_from_the_page(service, page, tmp_path):
    page.goto(service.base + "/")
    page.fill("#token", service.tokens["curator"])
    page.click("text=Use token")
    expect(page.locator("#whoami")).to_have_text("test-curator (curator)")

    # Check a spec, then submit it as a run and watch it finish.
    page.select_option("#spec-file", "fashion.yaml")
    expect(page.locator("#spec-text")).to_have_value(re.compile(r"name: fashion"))
    page.click("#check-spec")
    expect(page.locator("#check-result")).to_contain_text("a run could start")
    expect(page.locator("#check-result")).to_contain_text("120 image files under")
    page.click("#submit-run")
    expect(page.locator("#submitted")).to_have_text(re.compile(r"queued job-"))
    expect(page.locator("[data-status=finished]")).to_have_count(1, timeout=180_000)
    page.reload()  # the run list (CLI and page runs alike) is read when the page opens
    page.locator("#runs tr", has_text="fashion-").click()
    expect(page.locator("#rejects")).to_contain_text("nothing rejected")
    page.locator("#jobs a", has_text="fashion@v1").click()

    # The version: summary, composition and the sample browser with thumbnails.
    expect(page.locator("#version-title")).to_contain_text("fashion@v1")
    expect(page.locator("#samples")).to_contain_text("1–24 of 120")
    expect(page.locator(".card img[src^='blob:']").first).to_be_visible()
    page.select_option("[data-filter=license]", "MIT")
    expect(page.locator("#samples")).to_contain_text("of 120")
    page.click("#verify")
    expect(page.locator("#verified")).to_have_text(re.compile(r"^OK, \d+ files"))
    page.screenshot(path=str(tmp_path / "version.png"))

    # A sample opens its provenance.
    first = page.locator(".card").first
    image_id = first.get_attribute("data-image")
    first.click()
    expect(page.locator("#provenance")).to_contain_text("fashion-mnist")
    expect(page.locator("#audit-query")).to_have_value(image_id)

    # Opt an image out by uploading it, then apply the requests: the next version lacks it.
    upload = sorted((FIXTURE_IMAGES / "fashion-mnist" / "bag").iterdir())[0]
    page.click("#nav-optout")
    page.select_option("#optout-kind", "image")
    page.set_input_files("#optout-image", str(upload))
    page.fill("input[name=requester]", "rights holder")
    page.click("#optout-submit")
    expect(page.locator("#optout-result")).to_have_text(re.compile(r"request opt-\d{6}-[0-9a-f]{8}: received"))
    page.fill("#apply-name", "fashion")
    page.click("#apply-submit")
    expect(page.locator("[data-status=finished]")).to_have_count(2, timeout=180_000)
    expect(page.locator("a", has_text="fashion@v2")).to_be_visible()

    samples = service.get("/api/versions/fashion@v2/samples", params={"limit": 500}).json()
    assert samples["total"] == 119
    assert image_id_of(upload.read_bytes()) not in {sample["image_id"] for sample in samples["samples"]}
    page.click("text=fashion@v2")
    expect(page.locator("#samples")).to_contain_text("of 119")


def test_the_page_tells_a_visitor_without_a_token_what_to_do(service, page):
    page.evaluate("localStorage.clear()")
    page.goto(service.base + "/#/datasets")
    page.reload()
    expect(page.locator("#error")).to_contain_text("401")
    expect(page.locator("#error")).to_contain_text("enter an API token")
    page.click("#nav-optout")  # opt-out is open to the public by policy
    expect(page.locator("#optout-form")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()


def test_a_run_whose_dedup_chained_look_alikes_shows_the_warning(service, page):
    """The 120 Fashion-MNIST photos deduplicated with the builtin descriptor at cosine 0.5: one chain of look-alike
    products, which the page must flag beside the run's rejects."""
    spec = (SPECS / "fashion.yaml").read_text().replace("name: fashion", "name: chained")
    spec = spec.replace("execution:", "  dedup: {threshold: 0.5, perceptual: false}\nexecution:")
    job = service.wait_job(service.submit(spec)["job_id"])
    assert job["status"] == "finished", job
    page.goto(service.base + "/")
    page.evaluate(f"localStorage.setItem('curation-token', {service.tokens['viewer']!r})")
    page.reload()
    page.locator("#runs tr", has_text="chained-").click()
    expect(page.locator("#rejects")).to_contain_text("WARNING dedup: the largest duplicate group holds")
    expect(page.locator("#rejects")).to_contain_text("near_duplicate")


def test_search_by_example_from_the_page(service, page, tmp_path):
    """Upload a photo: the version's own copy of it comes first; "similar" on a card lists its look-alikes."""
    spec = (SPECS / "fashion.yaml").read_text().replace("name: fashion", "name: searchable")
    job = service.wait_job(service.submit(spec)["job_id"])
    assert job["status"] == "finished", job
    page.goto(service.base + "/")
    page.evaluate(f"localStorage.setItem('curation-token', {service.tokens['viewer']!r})")
    page.goto(service.base + f"/#/version/{job['version']}")
    page.reload()
    upload = sorted((FIXTURE_IMAGES / "fashion-mnist" / "sneaker").iterdir())[0]
    page.set_input_files("#similar-image", str(upload))
    page.click("#similar-submit")
    first = page.locator("#similar .card[data-rank='1']")
    expect(first).to_have_attribute("data-image", image_id_of(upload.read_bytes()))
    expect(first).to_contain_text("#1 · 1.000")
    expect(page.locator("#similar .card")).to_have_count(12)
    expect(page.locator("#similar .card img[src^='blob:']").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "search.png"), full_page=True)

    card = page.locator("#samples .card").nth(2)
    query = card.get_attribute("data-image")
    card.locator("button.similar").click()
    expect(page.locator("#similar")).to_contain_text(f"12 nearest to {query[:12]}")
    expect(page.locator(f"#similar .card[data-image='{query}']")).to_have_count(0)  # itself left out
    expect(page.locator("#audit-query")).to_have_count(0)  # the button did not open the card's provenance
    page.locator("#similar .card").first.click()
    expect(page.locator("#provenance")).to_contain_text("fashion-mnist")
