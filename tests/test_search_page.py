"""The web page's search switch and removable filter chips, in headless Chromium (issue 16)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("tantivy")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: install it with `apt-get install -y chromium chromium-driver` "
                "(`make test` does where apt is available)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the `playwright` package (dev extra) is missing")

from shopclip.serve.app import create_app  # noqa: E402
from shopclip.serve.testing import running, shared_model  # noqa: E402

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def site(serve_workdir, tmp_path_factory):
    work = tmp_path_factory.mktemp("search-page") / "work"
    shutil.copytree(serve_workdir, work)
    with running(create_app(work, model=shared_model(), preload_model=True)) as url:
        yield url


def test_filter_chips_show_and_remove_and_mode_switch(site):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(site)
        page.wait_for_selector("#category option[value='Footwear']", state="attached")
        page.fill("#q", "red shoes under 0")
        page.keyboard.press("Enter")
        page.wait_for_selector("#understood:not([hidden]) .chip")
        labels = page.locator("#filter-chips .chip span").all_inner_texts()
        assert "colour = red" in labels
        assert "under 0" in page.inner_text("#understood-notes")  # a nonsense price is shown as ignored
        page.locator("#filter-chips .chip-remove[data-facet='color']").click()
        page.wait_for_function("() => location.hash.includes('drop=color')")
        page.wait_for_function("() => ![...document.querySelectorAll('#filter-chips .chip span')]"
                               ".some((s) => s.textContent === 'colour = red')")
        page.select_option("#search-mode", "lexical")
        page.wait_for_function("() => location.hash.includes('mode=lexical')")
        page.wait_for_selector("#results .card")
        assert not errors, errors
        browser.close()
