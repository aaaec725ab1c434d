"""Cheap ways to take the service down (issue 20) stay impossible: a listing that locks collections,
half-open connections, decode memory from tiny uploads, requests whose cost has no bound."""

from __future__ import annotations

import io
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import live_server, two_collections

from enclip_qdrant.catalog.images import image_bound
from enclip_qdrant.search.options import SearchOptions
from enclip_qdrant.search.query import search
from enclip_qdrant.service import ServeOptions, create_app
from enclip_qdrant.service.limits import server_settings
from enclip_qdrant.store import EdgeStore


@pytest.fixture(scope="module")
def home(bundle, catalog, tmp_path_factory):
    """An embedded store with two collections built by enclip: the service serves `shop`, never `other`."""
    return two_collections(bundle, catalog, tmp_path_factory.mktemp("edge") / "home")


def edge_app(home, bundle, **opts):
    opts.setdefault("collection", "shop")
    return create_app(ServeOptions(home=home, bundle=bundle.path, **opts))


def test_listing_opens_no_other_collection(home, bundle):
    with TestClient(edge_app(home, bundle)) as c:
        listed = c.get("/v1/collections").json()["collections"]
        assert {tuple(x["aliases"]): x["served"] for x in listed} == {("other",): False, ("shop",): True}
        assert [x["points"] for x in listed if x["served"]] == [480]
        # another process (here: another open store) can still query and index the collection not served
        with EdgeStore(home) as store:
            assert search(bundle, store, "other", "red dress", options=SearchOptions(top_k=3)).results
            assert store.count("other") == 480
        assert c.post("/v1/search", json={"text": "red dress"}).status_code == 200


# -- half-open connections --------------------------------------------------------------------------


def served(home, bundle, **opts):
    """A live service on loopback with the uvicorn settings `serve` runs (`server_settings`)."""
    options = ServeOptions(home=home, bundle=bundle.path, collection="shop", **opts)
    return live_server(create_app(options), **server_settings(options.header_timeout, options.connection_limit()))


def half_open(base: str, n: int, data: bytes = b"GET /v1/search?text=dre") -> list[socket.socket]:
    host, port = base.rsplit("/", 1)[-1].split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        if data:
            s.sendall(data)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


def test_half_open_sockets_neither_starve_others_nor_stay(home, bundle):
    with served(home, bundle, max_queue=4, header_timeout=1.5) as base:
        socks = half_open(base, 70)  # more than the old limit_concurrency (64), fewer than the connection limit
        try:
            t0 = time.monotonic()
            r = httpx.post(f"{base}/v1/search", json={"text": "red dress"}, timeout=30)
            assert r.status_code == 200, r.text
            assert all(closed_by_server(s, 5) for s in socks)  # the head deadline freed them
            assert time.monotonic() - t0 < 10
        finally:
            for s in socks:
                s.close()


def test_over_the_connection_limit_is_the_json_503(home, bundle):
    with served(home, bundle, max_queue=1, max_connections=6, header_timeout=2) as base:
        socks = half_open(base, 6, b"")
        try:
            r = httpx.get(f"{base}/v1/search", params={"text": "dress"}, timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"].startswith("server busy: too many open connections")
            assert all(closed_by_server(s, 6) for s in socks)
            assert httpx.get(f"{base}/v1/search", params={"text": "dress"}, timeout=10).status_code == 200
        finally:
            for s in socks:
                s.close()


def test_a_body_that_never_comes_is_408(home, bundle):
    with served(home, bundle, body_timeout=1.0) as base:
        (s,) = half_open(base, 1, b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                  b"content-length: 100\r\n\r\n{\"text\": ")
        try:
            s.settimeout(10)
            got = b""
            while b"}" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            assert got.startswith(b"HTTP/1.1 408") and b"request body not received within 1 s" in got
        finally:
            s.close()


# -- memory from tiny uploads -----------------------------------------------------------------------


def bomb_png(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("1", (w, h)).save(out, "PNG")
    return out.getvalue()


def test_uploads_decode_under_a_budget_at_the_models_size(home, bundle, monkeypatch):
    from enclip_qdrant.service import app as app_module

    seen, live, peak, guard = [], [0], [0], threading.Lock()
    real = app_module.decode_bounded

    def counted(im, bound):
        with guard:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            time.sleep(0.05)
            out = real(im, bound)
            seen.append(out.size)
            return out
        finally:
            with guard:
                live[0] -= 1
    monkeypatch.setattr(app_module, "decode_bounded", counted)
    png = bomb_png(4000, 3000)
    assert len(png) < 5000
    # the budget holds one such canvas: uploads wait their turn instead of decoding all at once
    with served(home, bundle, decode_budget_bytes=4000 * 3000, max_queue=64) as base:
        answers = concurrent_uploads(base, png, 12)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert peak[0] == 1 and len(seen) == 12
    assert max(max(size) for size in seen) <= image_bound(bundle)


def concurrent_uploads(base: str, data: bytes, n: int) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as h:
            start.wait()
            out[i] = h.post(f"{base}/v1/search", files={"image": ("b.png", data, "image/png")})
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out  # type: ignore[return-value]


# -- bounded cost per request -------------------------------------------------------------------------


def test_request_size_is_bounded_per_field(home, bundle):
    with TestClient(edge_app(home, bundle)) as c:
        many = c.post("/v1/search", json={"text": "dress", "filter": [f"f{i}=x" for i in range(5000)]})
        assert many.status_code == 400 and "filter" in many.json()["error"]
        big = c.post("/v1/search", json={"text": "dress", "filter": [f"f{i}=x" for i in range(40000)]})
        assert big.status_code == 413  # a JSON request has no image: its body is small
        assert c.post("/v1/search", json={"text": "dress " * 1000}).status_code == 400
        assert c.post("/v1/search", json={"text": "dress", "clusters": list(range(5000))}).status_code == 400
        assert c.post("/v1/search", json={"text": "dress", "filter": ["gender=" + "x" * 600]}).status_code == 400


def test_filter_fields_are_typed_once_and_unknown_ones_cost_no_scroll(home, bundle, monkeypatch):
    calls = []
    real = EdgeStore.scroll

    def scroll(self, name, fields=None):
        calls.append(fields)
        return real(self, name, fields)
    monkeypatch.setattr(EdgeStore, "scroll", scroll)
    with TestClient(edge_app(home, bundle)) as c:
        ok = c.post("/v1/search", json={"text": "dress", "filter": ["gender=Men"]})
        assert ok.status_code == 200 and all(x["payload"]["gender"] == "Men" for x in ok.json()["results"])
        before = len(calls)
        r = c.post("/v1/search", json={"text": "dress", "filter": [f"nosuch{i}=x" for i in range(30)]})
        assert r.status_code == 400 and r.json()["error"] == ("--filter nosuch0: no product in 'shop' has a "
                                                              "field 'nosuch0'")
        assert c.post("/v1/search", json={"text": "dress", "filter": ["gender=Women"]}).status_code == 200
        assert len(calls) == before  # neither the unknown fields nor the known one read the store again
