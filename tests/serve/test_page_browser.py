"""The web page in a real browser: headless Chromium (Debian's package, driven by Playwright) opens `/`, types a
sentence, clicks Translate and reads the translation from the page; it must be what `seqtool translate` gives."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.test_server import Server, offline, run  # noqa: F401  (run is a fixture)

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (seqtool[dev])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's own background traffic has nowhere to go on a closed network: these flags keep it quiet
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


if CHROMIUM is None and os.environ.get("SEQTOOL_REQUIRE_BROWSER") == "1":
    raise RuntimeError("SEQTOOL_REQUIRE_BROWSER=1 but no chromium on PATH: run make setup (it installs it)")


@pytest.fixture(scope="module")
def page_server(run: Path) -> Iterator[Server]:  # noqa: F811
    srv = Server(str(run), "--quantize", "none").wait_ready()
    yield srv
    srv.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (make setup installs Debian's chromium)")
def test_translate_in_the_browser(page_server: Server, run: Path, tmp_path: Path) -> None:  # noqa: F811
    sentence = "Save the file before closing."
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(page_server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=30_000)
            assert page.locator("#model").input_value() == run.name
            page.fill("#beam", "5")
            page.fill("#source", sentence)
            page.click("#go")
            page.wait_for_selector("#output .line .best", timeout=60_000)
            shown = page.locator("#output .line .best").all_inner_texts()
            status = page.locator("#status").inner_text()
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert shown == offline(run, [sentence], "--beam", "5")
    assert status.startswith("Translated 1 line(s) with " + run.name)
    assert (tmp_path / "page.png").stat().st_size > 10_000
