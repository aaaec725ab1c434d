"""The search page in a real headless Chromium, driven over the W3C WebDriver protocol (chromedriver + httpx,
no extra package): type a query, see the thumbnails load, upload an image, click "more like this".

Needs Debian's `chromium` and `chromium-driver`; skipped with that reason where they are not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from paths import free_port
from qdrant_client import QdrantClient
from service_helpers import live_server, searcher_factory

from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.service import ServeOptions, create_app
from enclip_qdrant.store import ServerStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no headless browser: install Debian's chromium "
                                 "and chromium-driver (apt-get install -y chromium chromium-driver)")]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element reference key


class Browser:
    """Just enough WebDriver: a session, navigation, elements, typing, clicking, script."""

    def __init__(self, driver_url: str, profile: Path) -> None:
        self.http = httpx.Client(base_url=driver_url, timeout=60)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.request(method, path, json=body if body is not None else ({} if method == "POST" else None))
        data = r.json()
        if r.status_code != 200:
            raise AssertionError(f"webdriver {method} {path}: {data.get('value', data)}")
        return data.get("value", data)

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", self._s("/element"), {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        self._call("POST", self._s(f"/element/{self.find(css)}/value"), {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", self._s(f"/element/{self.find(css)}/click"))

    def js(self, script: str, *args: Any) -> Any:
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def wait(self, script: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script)
            if value:
                return value
            if time.monotonic() > deadline:
                status = self.js("return document.getElementById('status').textContent")
                raise AssertionError(f"timed out waiting for: {script} (page status: {status!r})")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))

    def quit(self) -> None:
        try:
            self._call("DELETE", self._s(""))
        finally:
            self.http.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    port = free_port()
    driver = subprocess.Popen([DRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/status", timeout=2).json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        b = Browser(url, tmp_path / "profile")
        try:
            yield b
        finally:
            b.quit()
    finally:
        driver.terminate()
        driver.wait(timeout=20)


LOADED = ("const imgs = [...document.querySelectorAll('#results .card img')];"
          "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;")
CARDS = "return [...document.querySelectorAll('#results .card')].map(c => c.dataset.pointId);"


def test_search_page_in_a_real_browser(browser: Browser, bundle, catalog, tmp_path):
    client = QdrantClient(":memory:")
    index_catalog(catalog, bundle, ServerStore(client=client), "shop")
    app = create_app(ServeOptions(), searcher_factory=searcher_factory(client, bundle))
    with live_server(app) as base:
        browser.get(base + "/")
        browser.wait("return document.querySelectorAll('#filters select').length")  # filters from the payload
        browser.js("document.getElementById('top-k').value = '8'; document.getElementById('explain').click();")
        browser.type("#q", "red dress")
        browser.click("#go")
        assert browser.wait(LOADED) == 8  # every thumbnail decoded (naturalWidth > 0)
        status = browser.js("return document.getElementById('status').textContent")
        assert "8 results for red dress" in status
        assert "m" in browser.js("return document.querySelector('#results .card .ranks').textContent")
        browser.screenshot(Path(os.environ.get("ENCLIP_SCREENSHOT_DIR", tmp_path)) / "search-page.png")

        # an image upload searches by that photo: the product itself comes first
        product = catalog.products[11]
        browser.js("document.getElementById('results').textContent = ''; document.getElementById('q').value = ''")
        browser.type("#image", str(product.image))  # the change event runs the search
        browser.wait(LOADED)
        first_title = browser.js("return document.querySelector('#results .card .title').textContent")
        assert first_title == product.text

        # "more like this" on the third result: an image query by that product's catalog photo
        ids = browser.js(CARDS)
        browser.js("document.getElementById('results').dataset.before = 'x'")
        browser.js("document.querySelectorAll('#results .card .more')[2].click()")
        browser.wait(f"return document.getElementById('status').textContent.includes('more like {ids[2]}')")
        browser.wait(LOADED)
        assert browser.js(CARDS)[0] == ids[2]

        # a bad request shows the server's one-line error, not a blank page
        browser.js("document.getElementById('clusters').value = '999'")
        browser.click("#go")
        browser.wait("return document.getElementById('status').className === 'error'")
        assert "no cluster 999" in browser.js("return document.getElementById('status').textContent")
    client.close()
