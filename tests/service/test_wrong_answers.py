"""Inputs that used to get the wrong answer from the service (issue 20): each gets its status and one line."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import live_server, two_collections

from enclip_qdrant.errors import QueryError, redact_url
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.service import ServeOptions, create_app
from enclip_qdrant.store import EdgeStore

KEY = "clé-secrète"  # not ASCII: compared as its UTF-8 bytes


@pytest.fixture(scope="module")
def home(bundle, catalog, tmp_path_factory):
    return two_collections(bundle, catalog, tmp_path_factory.mktemp("wrong") / "home")


@pytest.fixture
def client(home, bundle):
    with TestClient(create_app(ServeOptions(home=home, collection="shop", bundle=bundle.path))) as c:
        yield c


def _one_line(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    line = r.json()["error"]
    assert "\n" not in line and "Traceback" not in line
    return line


def _point(client) -> str:
    return client.post("/v1/search", json={"text": "red dress", "top_k": 1}).json()["results"][0]["point_id"]


def test_client_mistakes_are_4xx_not_store_down(client) -> None:
    assert "UUID" in _one_line(client.get("/images/some-product-id"), 404)
    _one_line(client.get("/images/a%00b"), 404)
    _one_line(client.post("/v1/search", json={"like": "../../etc/passwd"}), 404)
    assert "invalid collection name" in _one_line(client.post("/v1/search", json={"text": "x",
                                                                                 "collection": "../../etc"}), 400)
    files = {"filter": ("f.txt", b"baseColour=Red", "text/plain")}
    assert "only `image` may be a file" in _one_line(client.post("/v1/search", data={"text": "dress"}, files=files),
                                                     400)


def test_lone_surrogates_and_deep_json_are_400(client) -> None:
    for body in ('{"text": "\\ud800"}', '{"text": "dress", "filter": ["baseColour=\\udfff"]}'):
        r = client.post("/v1/search", content=body, headers={"Content-Type": "application/json"})
        line = _one_line(r, 400).lower()
        assert "surrogate" in line or "unicode" in line
    deep = '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = client.post("/v1/search", content=deep, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 413) and "\n" not in r.json()["error"]
    deep = '{"text": ' + "[" * 20_000 + "]" * 20_000 + "}"  # under the size limit, over the parser's depth
    assert "nested too deeply" in _one_line(client.post("/v1/search", content=deep,
                                                        headers={"Content-Type": "application/json"}), 400)


def test_lax_types_and_repeated_parameters_are_refused(client) -> None:
    assert "top_k" in _one_line(client.post("/v1/search", json={"text": "dress", "top_k": True}), 400)
    assert "explain" in _one_line(client.post("/v1/search", json={"text": "dress", "explain": "maybe"}), 400)
    assert "explain" in _one_line(client.get("/v1/search", params={"text": "dress", "explain": "maybe"}), 400)
    assert "more than once" in _one_line(client.get("/v1/search?text=dress&top_k=3&top_k=5"), 400)
    ok = client.get("/v1/search", params={"text": "dress", "explain": "yes", "top_k": "3"})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3 and "member_ranks" in ok.json()["results"][0]
    both = client.get("/v1/search?text=dress&filter=gender=Men&filter=gender=Women")
    assert both.status_code == 200  # filter is the one parameter that repeats


def test_images_serves_only_the_indexed_file(home, bundle, catalog, tmp_path) -> None:
    """A symlink to captions.csv or a text file under an image's name is not the indexed image: 404."""
    import shutil

    cat = tmp_path / "cat"
    shutil.copytree(catalog.root, cat)
    from enclip_qdrant import load_catalog

    mine = load_catalog(cat)
    h = tmp_path / "h"
    with EdgeStore(h) as store:
        index_catalog(mine, bundle, store, "shop")
    with TestClient(create_app(ServeOptions(home=h, collection="shop", bundle=bundle.path))) as c:
        results = c.post("/v1/search", json={"text": "red dress", "top_k": 2}).json()["results"]
        first, second = results
        assert c.get(f"/images/{first['point_id']}").status_code == 200
        img = cat / first["payload"]["image"]
        img.unlink()
        img.symlink_to(cat / "captions.csv")
        assert "not the file that was indexed" in _one_line(c.get(f"/images/{first['point_id']}"), 404)
        (cat / second["payload"]["image"]).write_text("not an image at all")
        _one_line(c.get(f"/images/{second['point_id']}"), 404)


def test_an_empty_key_is_refused_and_a_non_ascii_key_works_as_utf8(home, bundle) -> None:
    for empty in ("", "   "):
        with pytest.raises(QueryError, match="empty"):
            ServeOptions(home=home, collection="shop", key=empty)
    app = create_app(ServeOptions(home=home, collection="shop", bundle=bundle.path, key=KEY))
    # a real server: Starlette's TestClient re-encodes header bytes, so it cannot send the latin-1 ones
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        body = json.dumps({"text": "red dress", "top_k": 1})
        good = {"X-API-Key": KEY.encode("utf-8"), "Content-Type": "application/json"}
        assert c.post("/v1/search", content=body, headers=good).status_code == 200
        latin = {"X-API-Key": KEY.encode("latin-1"), "Content-Type": "application/json"}
        assert c.post("/v1/search", content=body, headers=latin).status_code == 401
        assert c.get("/readyz").json() == {"ready": True}  # no key: alive, but nothing about what is served
        assert c.get("/readyz", headers={"X-API-Key": KEY.encode()}).json()["points"] == 480


def test_beyond_loopback_only_the_served_collection_and_no_paths(home, bundle) -> None:
    app = create_app(ServeOptions(home=home, collection="shop", bundle=bundle.path, host="0.0.0.0", key="k"))
    with TestClient(app) as c:
        auth = {"X-API-Key": "k"}
        listed = c.get("/v1/collections", headers=auth).json()["collections"]
        assert [x["aliases"] for x in listed] == [["shop"]]
        r = c.post("/v1/search", json={"text": "x", "collection": "nope"}, headers=auth)
        assert r.status_code in (400, 404) and str(home) not in r.text
    with TestClient(create_app(ServeOptions(home=home, collection="shop", bundle=bundle.path))) as c:
        assert len(c.get("/v1/collections").json()["collections"]) == 2  # on loopback: the workspace


def test_secrets_in_a_url_are_redacted() -> None:
    assert redact_url("http://u:pw@host:6333/?api-key=s3cret&x=1") == "http://***@host:6333/?api-key=***&x=1"
    assert redact_url("https://host/?token=abc") == "https://host/?token=***"
    assert redact_url("http://host:6333") == "http://host:6333"


def test_tiny_image_upload_still_searches(client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    r = client.post("/v1/search", files={"image": ("a.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200 and r.json()["results"]
