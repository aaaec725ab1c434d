"""The query service: same answers as the library and CLI, a Qdrant body that reproduces them, one-line
4xx errors, limits, auth, micro-batching and back-pressure."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from qdrant_client import QdrantClient, models
from service_helpers import live_server, searcher_factory
from typer.testing import CliRunner

from enclip_qdrant.cli.app import app as cli_app
from enclip_qdrant.errors import EnclipError, StoreError
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.search.options import SearchOptions
from enclip_qdrant.search.query import Result, search
from enclip_qdrant.service import MicroBatcher, Overloaded, ServeOptions, create_app, startup_warnings
from enclip_qdrant.service.app import LockedStore, PerThreadStore, catalog_file, concurrent_store
from enclip_qdrant.store import ServerStore

KEY = "s3cret-service-key"


@pytest.fixture(scope="module")
def qdrant(bundle, catalog):
    """A server-backed collection (qdrant-client local mode) built by enclip, shared by service and test."""
    client = QdrantClient(":memory:")
    index_catalog(catalog, bundle, ServerStore(client=client), "shop")
    yield client
    client.close()


def make_client(qdrant, bundle, **opts) -> TestClient:
    return TestClient(create_app(ServeOptions(**opts), searcher_factory=searcher_factory(qdrant, bundle)))


@pytest.fixture(scope="module")
def client(qdrant, bundle):
    with make_client(qdrant, bundle) as c:
        yield c


def jpeg(path: Path) -> bytes:
    return path.read_bytes()


def test_search_matches_the_library(client, qdrant, bundle):
    r = client.post("/v1/search", json={"text": "red dress", "top_k": 5, "explain": True})
    assert r.status_code == 200, r.text
    got = r.json()
    want = search(bundle, ServerStore(client=qdrant), "shop", "red dress",
                  options=SearchOptions(top_k=5, explain=True)).to_dict(True)
    assert got == json.loads(json.dumps(want))
    assert [x["rank"] for x in got["results"]] == [1, 2, 3, 4, 5]
    # the members' ranks and the BM25 text prefetch's own (the catalog has text: hybrid by default)
    assert set(got["results"][0]["member_ranks"]) == set(bundle.vectors) | {"text_bm25"}


def test_get_with_query_params_and_filters(client):
    r = client.get("/v1/search", params=[("text", "bag"), ("top_k", "4"), ("clusters", "all"),
                                         ("filter", "baseColour=Blue"), ("fusion", "dbsf")])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["clusters"] == [] and out["query"]["fusion"] == "dbsf"
    assert len(out["results"]) == 4 and all(x["payload"]["baseColour"] == "Blue" for x in out["results"])


def test_image_upload_and_more_like_this_find_the_product(client, catalog):
    product = catalog.products[7]
    r = client.post("/v1/search", data={"top_k": "3"},
                    files={"image": ("q.jpg", jpeg(product.image), "image/jpeg")})
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    assert first["id"] == product.id
    like = client.post("/v1/search", json={"like": first["point_id"], "top_k": 3}).json()
    assert like["results"][0]["point_id"] == first["point_id"] and like["query"]["like"] == first["point_id"]
    both = client.post("/v1/search", data={"text": "dress", "top_k": "3"},
                       files={"image": ("q.jpg", jpeg(product.image), "image/jpeg")})
    assert both.status_code == 200 and both.json()["query"]["text"] == "dress"


@pytest.mark.parametrize(("fusion", "text_weight"), [("rrf", 1.0), ("dbsf", 1.0), ("rrf", 2.5), ("rrf", 0.0)])
def test_encode_body_sent_to_qdrant_returns_the_search_ids(client, qdrant, bundle, fusion, text_weight):
    req = {"text": "green sneakers", "top_k": 6, "fusion": fusion, "filter": ["gender=Men", "gender=Women"],
           "text_weight": text_weight}
    enc = client.post("/v1/encode", json=req)
    assert enc.status_code == 200, enc.text
    out = enc.json()
    assert set(out["vectors"]) == set(bundle.vectors)
    assert all(len(v) == bundle.vectors[k] for k, v in out["vectors"].items())
    assert out["clusters"] and len(out["cluster_probs"]) == bundle.clusters.k
    body = out["qdrant"]["body"]
    hybrid = text_weight > 0  # the collection has a BM25 text vector: one more prefetch, same call and filter
    assert len(body["prefetch"]) == len(bundle.vectors) + hybrid
    assert set(out["sparse_vectors"]) == ({"text_bm25"} if hybrid else set())
    n = len(bundle.vectors)  # the text list weighs text_weight x the members' count (RRF only)
    want = [1.0] * n + [text_weight * n] if fusion == "rrf" and hybrid and text_weight * n != 1 else None
    if want is None:  # plain RRF or DBSF: one fusion over the lists themselves
        lists = body["prefetch"]
        assert "formula" not in body["query"] and "weights" not in body["query"].get("rrf", {})
    else:  # weighted: each list is its own RRF prefetch, and a formula sums weight x that score
        lists = [p["prefetch"] for p in body["prefetch"]]
        assert all(p["query"] == {"rrf": {"k": 60}} for p in body["prefetch"])
        terms = body["query"]["formula"]["sum"]
        assert [t["mult"] for t in terms] == [[w, f"$score[{i}]"] for i, w in enumerate(want)]
    if hybrid:
        assert lists[-1]["using"] == "text_bm25" and "indices" in lists[-1]["query"]
    members, text = (lists[:-1], lists[-1]) if hybrid else (lists, None)
    assert all(p["limit"] == 6 * 4 and p["filter"]["must"][0]["key"] == "cluster" for p in members)
    if text is not None:  # the words search every cluster, under the same field filter
        assert text["limit"] == 6 * 4 and [c["key"] for c in text["filter"]["must"]] == ["gender"]
    # an application sends the body as-is to its own Qdrant
    request = models.QueryRequest.model_validate(json.loads(json.dumps(body)))
    (answer,) = qdrant.query_batch_points(out["qdrant"]["collection"], requests=[request])
    served = client.post("/v1/search", json=req).json()
    assert [str(p.id) for p in answer.points] == [x["point_id"] for x in served["results"]]
    assert len(served["results"]) > 0


def test_cli_json_and_service_share_one_schema(bundle, catalog_dir, tmp_path, monkeypatch):
    """`query --json` and /v1/search both come from SearchResponse.to_dict: same keys, same values."""
    home = tmp_path / "home"
    monkeypatch.delenv("QDRANT_URL", raising=False)
    runner = CliRunner()
    args = ["--home", str(home)]
    assert runner.invoke(cli_app, ["index", str(catalog_dir), "--bundle", str(bundle.path), *args]).exit_code == 0
    res = runner.invoke(cli_app, ["query", "blue cap", "--json", "--explain", "-k", "4", *args],
                        catch_exceptions=False)
    cli = json.loads(res.stdout)
    with TestClient(create_app(ServeOptions(home=home))) as c:  # the default factory: the workspace's collection
        svc = c.post("/v1/search", json={"text": "blue cap", "top_k": 4, "explain": True}).json()
    assert set(svc) == set(cli) and set(svc["results"][0]) == set(cli["results"][0])
    assert set(svc["query"]) == set(cli["query"])
    assert [r["point_id"] for r in svc["results"]] == [r["point_id"] for r in cli["results"]]


def test_result_to_dict_matches_dataclass_shape():
    """The hand-built row (asdict deep-copied every payload: ~1.3 ms of GIL per query) keeps asdict's keys,
    order and values, and its payload is a copy: editing the row leaves the Result alone."""
    r = Result(2, "p-uuid", 0.5, 3, {"product_id": "sku-9", "tags": ["a"], "title": "red dress"},
               member_ranks={"m0": 1, "m1": None}, shares={"m0": 1.0, "m1": 0.0}, cluster_label="dresses")
    for explain in (False, True):
        old = dataclasses.asdict(r)
        old["id"], old["point_id"] = "sku-9", "p-uuid"
        if not explain:
            old.pop("member_ranks")
            old.pop("shares")
        row = r.to_dict(explain)
        assert list(row) == list(old) and row == old
    row["payload"]["title"] = "changed"
    assert r.payload["title"] == "red dress"
    assert Result(1, "q", 0.1, None, {}).to_dict()["id"] == "q"  # no product_id: the point id


def cli_error(*args: str) -> str:
    with pytest.raises(EnclipError) as e:
        CliRunner().invoke(cli_app, ["query", *args], catch_exceptions=False)
    return str(e.value)


@pytest.mark.parametrize("body,status,cli_args", [
    ({"text": "  "}, 400, None),
    ({"text": "dress", "clusters": [99]}, 400, None),
    ({"text": "dress", "clusters": "1,x"}, 400, ["dress", "--clusters", "1,x"]),
    ({"text": "dress", "filter": ["colour"]}, 400, ["dress", "--filter", "colour"]),
    ({"text": "dress", "fusion": "max"}, 400, None),
    ({"text": "dress", "top_k": 0}, 400, None),
    ({"text": "dress", "top_k": 1000}, 400, None),
    ({"text": "dress", "colour": "red"}, 400, None),
    ({"text": "dress", "collection": "nope"}, 404, None),
    ({"like": "00000000-0000-0000-0000-000000000000"}, 404, None),
])
def test_bad_input_is_a_one_line_json_error(client, body, status, cli_args, tmp_path, monkeypatch):
    r = client.post("/v1/search", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err and "\n" not in err and set(r.json()) == {"error"}
    if cli_args:  # the same words the CLI prints
        monkeypatch.setenv("ENCLIP_HOME", str(tmp_path))
        assert err == cli_error(*cli_args)
    assert client.post("/v1/search", json={"text": "dress", "top_k": 1}).status_code == 200  # still serving


def test_unreadable_or_malformed_requests(client):
    r = client.post("/v1/search", files={"image": ("x.jpg", b"not an image at all", "image/jpeg")})
    assert r.status_code == 400 and r.json()["error"].startswith("cannot read query image x.jpg")
    r = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "request body is not valid JSON"}
    r = client.post("/v1/search", content=b"text", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/v1/encode", json={})
    assert r.status_code == 400 and r.json() == {"error": "empty query: give some text or --image"}
    r = client.get("/v1/search", params={"text": "dress", "top_k": "many"})
    assert r.status_code == 400 and "top_k" in r.json()["error"]
    assert client.get("/v1/nothing").json() == {"error": "Not Found"}


def test_collections_health_ready_docs_and_page(client, bundle, catalog):
    cols = client.get("/v1/collections").json()
    assert cols["served"] == "shop" and cols["members"] == list(bundle.vectors)
    (c,) = cols["collections"]
    assert c["served"] and c["aliases"] == ["shop"] and c["points"] == len(catalog.products)
    assert "Blue" in cols["fields"]["baseColour"] and "cluster" not in cols["fields"]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["points"] == len(catalog.products) and ready["bundle"] == bundle.fingerprint
    assert "/v1/search" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "http" not in page.text.replace(
        'http-equiv', '')
    assert client.get("/static/app.js").status_code == 200


def test_readyz_fails_when_the_store_is_gone(bundle, catalog):
    spare = QdrantClient(":memory:")
    store = ServerStore(client=spare)
    index_catalog(catalog, bundle, store, "shop")
    with TestClient(create_app(ServeOptions(), searcher_factory=searcher_factory(spare, bundle))) as c:
        assert c.get("/readyz").status_code == 200
        store.delete_alias("shop")
        store.drop(store.list_collections()[0])
        r = c.get("/readyz")
        assert r.status_code == 503 and not r.json()["ready"] and "no collection" in r.json()["error"]
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/search", json={"text": "dress"}).status_code == 404


def test_images_only_from_inside_the_catalog(client, qdrant, catalog, tmp_path):
    first = client.post("/v1/search", json={"text": "cap", "top_k": 2}).json()["results"]
    r = client.get(f"/images/{first[0]['point_id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size[0] > 0
    assert client.get("/images/00000000-0000-0000-0000-000000000000").status_code == 404

    store = ServerStore(client=qdrant)
    victim = first[1]["point_id"]
    original = store.retrieve("shop", [victim])[0].payload
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    link = Path(catalog.root) / "images" / "zz-escape-link.jpg"
    try:
        for bad in (str(secret), "../" * 12 + str(secret).lstrip("/"), "images/zz-escape-link.jpg"):
            if bad.endswith("link.jpg"):
                link.symlink_to(secret)
            store.set_payload("shop", victim, {**original, "image": bad})
            r = client.get(f"/images/{victim}")
            assert r.status_code == 403 and "private" not in r.text, bad
    finally:
        link.unlink(missing_ok=True)
        store.set_payload("shop", victim, original)
    assert client.get(f"/images/{victim}").status_code == 200


def test_catalog_file_containment(tmp_path):
    root = tmp_path / "cat"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"y")
    (root / "images" / "out.jpg").symlink_to(tmp_path / "outside.jpg")
    assert catalog_file(root, "images/a.jpg") == (root / "images" / "a.jpg").resolve()
    for bad in ("../outside.jpg", str(tmp_path / "outside.jpg"), "images/out.jpg", "images/../../outside.jpg"):
        with pytest.raises(PermissionError):
            catalog_file(root, bad)


def test_api_key_on_every_v1_call(qdrant, bundle):
    with make_client(qdrant, bundle, key=KEY) as c:
        for path in ("/v1/collections", "/v1/search?text=dress"):
            r = c.get(path)
            assert r.status_code == 401 and KEY not in r.text and r.json()["error"].startswith("missing or wrong")
            assert c.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert c.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            assert c.get(path, headers={"X-API-Key": KEY}).status_code == 200
        assert c.post("/v1/encode", json={"text": "x"}).status_code == 401
        pid = c.get("/v1/search?text=cap&top_k=1", headers={"X-API-Key": KEY}).json()["results"][0]["point_id"]
        assert c.get(f"/images/{pid}").status_code == 401
        c.cookies.set("enclip_key", KEY)  # the page's way: <img> requests cannot send headers
        assert c.get(f"/images/{pid}").status_code == 200
        assert c.get("/v1/collections").status_code == 401  # the cookie opens images only, never /v1
        c.cookies.clear()
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_off_localhost_without_a_key_warns(bundle, catalog_dir, tmp_path, monkeypatch):
    assert startup_warnings(ServeOptions(host="127.0.0.1")) == []
    assert startup_warnings(ServeOptions(host="0.0.0.0", key=KEY)) == []
    (line,) = startup_warnings(ServeOptions(host="0.0.0.0", port=9000))
    assert "0.0.0.0:9000 without an API key" in line and "ENCLIP_API_KEY" in line
    # through the CLI: the warning is printed, then uvicorn would start (stubbed here: no port is opened)
    import uvicorn

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # serve() tightens it; restore after
    ran: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw))
    monkeypatch.delenv("ENCLIP_API_KEY", raising=False)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    home = tmp_path / "home"
    runner = CliRunner()
    assert runner.invoke(cli_app, ["index", str(catalog_dir), "--bundle", str(bundle.path),
                                   "--home", str(home)]).exit_code == 0
    res = runner.invoke(cli_app, ["serve", "--home", str(home), "--host", "0.0.0.0", "--port", "9001"],
                        catch_exceptions=False)
    assert res.exit_code == 0 and "without an API key" in res.output and ran["port"] == 9001
    with pytest.raises(EnclipError, match="no collection"):
        runner.invoke(cli_app, ["serve", "--home", str(tmp_path / "empty")], catch_exceptions=False)


def test_upload_limits_and_decompression_bombs(qdrant, bundle, catalog):
    with make_client(qdrant, bundle, max_upload_bytes=50_000, max_image_pixels=1_000_000) as c:
        big = b"\xff" * 200_000
        r = c.post("/v1/search", files={"image": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(20):
                yield b"x" * 10_000
        r = c.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413

        bomb = io.BytesIO()
        Image.new("1", (2000, 2000)).save(bomb, "PNG")  # 4 Mpx in a few kB
        assert len(bomb.getvalue()) < 50_000
        r = c.post("/v1/search", files={"image": ("bomb.png", bomb.getvalue(), "image/png")})
        assert r.status_code == 400 and r.json()["error"] == ("image bomb.png is too large: 2000x2000 pixels "
                                                              "(the limit is 1,000,000)")
        ok = c.post("/v1/search", files={"image": ("q.jpg", catalog.products[0].image.read_bytes(), "image/jpeg")})
        assert ok.status_code == 200


def slow(bundle, monkeypatch, seconds: float, calls: list[int]):
    real = bundle.embed_texts

    def embed_texts(texts):
        calls.append(len(texts))
        time.sleep(seconds)
        return real(texts)
    monkeypatch.setattr(bundle, "embed_texts", embed_texts)


def test_request_timeout_is_504(qdrant, bundle, monkeypatch):
    slow(bundle, monkeypatch, 1.5, [])
    with make_client(qdrant, bundle, request_timeout=0.3) as c:
        t0 = time.monotonic()
        r = c.post("/v1/search", json={"text": "dress"})
        assert r.status_code == 504 and "timed out" in r.json()["error"]
        assert time.monotonic() - t0 < 1.4


def concurrent_posts(base: str, bodies: list[dict]) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as h:
            start.wait()
            out[i] = h.post(f"{base}/v1/search", json=bodies[i])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out  # type: ignore[return-value]


def test_concurrent_queries_share_forward_passes(qdrant, bundle, monkeypatch):
    calls: list[int] = []
    slow(bundle, monkeypatch, 0.2, calls)
    texts = ["red dress", "blue cap", "green sneakers", "black handbag", "white dress", "yellow cap",
             "red handbag", "blue sneakers"]
    app = create_app(ServeOptions(max_wait_ms=400), searcher_factory=searcher_factory(qdrant, bundle))
    with live_server(app) as base:
        answers = concurrent_posts(base, [{"text": t, "top_k": 3} for t in texts])
        stats = httpx.get(f"{base}/readyz").json()["batches"]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert len(calls) < len(texts) and max(calls) > 1 and sum(calls) == len(texts)
    assert stats["queries"] == len(texts) and stats["batches"] == len(calls)
    monkeypatch.undo()
    store = ServerStore(client=qdrant)
    for t, r in zip(texts, answers, strict=True):  # batching changes nothing in the answers
        want = [h.id for h in search(bundle, store, "shop", t, options=SearchOptions(top_k=3)).results]
        assert [x["point_id"] for x in r.json()["results"]] == want


def test_full_queue_is_503_with_retry_after(qdrant, bundle, monkeypatch):
    slow(bundle, monkeypatch, 0.5, [])
    app = create_app(ServeOptions(max_queue=1, max_batch=1, max_wait_ms=0),
                     searcher_factory=searcher_factory(qdrant, bundle))
    with live_server(app) as base:
        answers = concurrent_posts(base, [{"text": f"dress {i}", "top_k": 2} for i in range(6)])
        codes = sorted(r.status_code for r in answers)
        busy = [r for r in answers if r.status_code == 503]
        assert 200 in codes and busy, codes
        assert all(r.headers["retry-after"] == "1" and "server busy" in r.json()["error"] for r in busy)
        time.sleep(1.0)
        assert httpx.post(f"{base}/v1/search", json={"text": "dress"}, timeout=30).status_code == 200


def test_micro_batcher_bounds_and_errors():
    import numpy as np

    gate = threading.Event()

    def embed(items):
        gate.wait(5)
        if "boom" in items:
            raise ValueError("bad batch")
        n = len(items)
        return {"m": np.ones((n, 2))}, np.ones((n, 2))

    b = MicroBatcher(embed, embed, max_batch=4, max_wait_ms=1, max_queue=2).start()
    try:
        first = b.submit("text", "a")
        time.sleep(0.05)  # the worker holds "a" and waits at the gate
        b.submit("text", "b")
        b.submit("text", "c")
        with pytest.raises(Overloaded):
            b.submit("text", "d")
        gate.set()
        assert first.result(5)[0]["m"].shape == (1, 2)
        with pytest.raises(ValueError, match="bad batch"):
            b.submit("text", "boom").result(5)  # through the worker
        assert b.submit("text", "x").result(5)[0]["m"].shape == (1, 2)  # the worker survived
        with pytest.raises(ValueError, match="bad batch"):
            b.encode("text", ["boom"], timeout=5)  # idle: in the caller's thread
        per, joint = b.encode("text", ["x", "y"], timeout=5)
        assert per["m"].shape == (2, 2) and joint.shape == (2, 2)
    finally:
        gate.set()
        b.close()


def test_an_image_burst_leaves_text_queries_their_places():
    """Each kind has its own max_queue places: uploads that fill theirs make the next upload wait for a 503,
    never a shopper's text query (issue 20's hostile load saw one such 503 with a shared queue)."""
    import numpy as np

    gate = threading.Event()

    def embed(items):
        gate.wait(5)
        return {"m": np.ones((len(items), 2))}, np.ones((len(items), 2))

    b = MicroBatcher(embed, embed, max_batch=1, max_wait_ms=0, max_queue=2).start()
    try:
        held = b.submit("image", "x")
        time.sleep(0.05)  # the worker holds it at the gate
        images = [b.submit("image", "y"), b.submit("image", "z")]
        with pytest.raises(Overloaded):
            b.submit("image", "w")
        texts = [b.submit("text", "red dress"), b.submit("text", "bag")]  # their own places: admitted
        with pytest.raises(Overloaded):
            b.submit("text", "one too many")
        gate.set()
        for f in [held, *images, *texts]:
            assert f.result(5)[1].shape == (1, 2)
        assert b.submit("image", "again").result(5)[1].shape == (1, 2)  # places come back as entries leave
    finally:
        gate.set()
        b.close()


def test_lone_query_is_not_held_for_company():
    """An idle batcher encodes a query at once: max_wait only applies when others are already waiting."""
    import numpy as np

    calls: list[int] = []
    threads: list[int] = []

    def embed(items):
        calls.append(len(items))
        threads.append(threading.get_ident())
        return {"m": np.ones((len(items), 2))}, np.ones((len(items), 2))

    b = MicroBatcher(embed, embed, max_batch=8, max_wait_ms=3000, max_queue=8).start()
    try:
        t = time.monotonic()
        b.encode("text", ["alone"], timeout=10)
        assert time.monotonic() - t < 2.0  # would be >= 3 s if it waited for company
        assert calls == [1]
        assert threads == [threading.get_ident()]  # no hand-off to the worker thread and back
        assert vars(b.stats) == {"batches": 1, "queries": 1, "largest": 1}
    finally:
        b.close()


class _FakeStore:
    """A store that counts its clones and closes (for the per-thread wrapper's bookkeeping)."""

    thread_clients = True
    kind = "server"

    def __init__(self, opened: list[_FakeStore]) -> None:
        self.opened, self.closed = opened, False

    def clone(self) -> _FakeStore:
        s = _FakeStore(self.opened)
        self.opened.append(s)
        return s

    def whoami(self) -> int:
        return id(self)

    def close(self) -> None:
        self.closed = True


def test_server_store_gives_each_thread_its_own_client():
    """A Qdrant server the service opened is shared by threads with a client each (their searches overlap on
    the server); local mode, ":memory:" and a caller's client stay behind one lock."""
    remote = ServerStore("http://127.0.0.1:9")  # no request is made until a call
    assert remote.thread_clients and isinstance(concurrent_store(remote), PerThreadStore)
    twin = remote.clone()
    assert twin is not remote and twin.client is not remote.client and twin.location == remote.location
    twin.close()
    remote.close()
    for store in (ServerStore(":memory:"), ServerStore(client=QdrantClient(":memory:"))):
        assert not store.thread_clients and isinstance(concurrent_store(store), LockedStore)
        with pytest.raises(NotImplementedError):
            store.clone()
    opened: list[_FakeStore] = []
    shared = PerThreadStore(_FakeStore(opened))  # type: ignore[arg-type]
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.extend([shared.whoami(), shared.whoami()])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 3 and len(set(seen)) == 3  # one client per thread, reused within it
    assert seen.count(seen[0]) == 2
    shared.close_threads()
    assert all(s.closed for s in opened)


@pytest.mark.server
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_service_on_a_real_server(bundle, catalog, qdrant_node, transport: str):
    """`serve --url` against a real Qdrant (the qdrant_node fixture: QDRANT_URL or a binary started here), over
    REST and gRPC: concurrent searches each on a thread's own client answer what the library answers on that
    server. Skips without a server, like the storage contract suite."""
    import uuid

    url, api_key = qdrant_node.url, qdrant_node.api_key
    name = f"enclip-test-{uuid.uuid4().hex[:10]}"
    store = qdrant_node.store(transport)
    try:
        index_catalog(catalog, bundle, store, name)
        app = create_app(ServeOptions(url=url, api_key=api_key, collection=name, bundle=bundle.path,
                                      store_options=store.options))
        texts = ["red dress", "blue cap", "green sneakers", "black handbag", "white dress", "yellow cap"]
        with live_server(app) as base:
            assert isinstance(app.state.service.store, PerThreadStore)
            answers = concurrent_posts(base, [{"text": t, "top_k": 3} for t in texts])
            opened = len(app.state.service.store._opened)
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        assert opened > 1  # the request threads had clients of their own
        for t, r in zip(texts, answers, strict=True):
            want = [h.id for h in search(bundle, store, name, t, options=SearchOptions(top_k=3)).results]
            assert [x["point_id"] for x in r.json()["results"]] == want
    finally:
        with contextlib.suppress(StoreError):  # an unreachable server: keep the test's own error
            if store.exists(name):
                store.drop(name)
        store.close()
