"""One contract for every backend: the search code must not care where Qdrant runs."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_server import SERVER_VARIANTS, server_store

from enclip_qdrant.errors import CollectionNotFound, QueryError, StoreError
from enclip_qdrant.store import (
    CollectionSpec,
    EdgeStore,
    PointRecord,
    SearchFilter,
    SearchParams,
    ServerOptions,
    ServerStore,
    SparseVec,
    Store,
    open_store,
)
from enclip_qdrant.store.base import CollectionOptions

NAMES = {"clip_a": 8, "clip_b": 8, "clip_c": 8}
N = 200
COLOURS = ("red", "blue", "green")
SPEC = CollectionSpec(
    vectors=NAMES,
    metadata={"bundle": {"fingerprint": "abc123", "members": list(NAMES)}, "k": 5},
    indexed_fields={"cluster": "integer", "colour": "keyword"},
)


def make_points(n: int = N, seed: int = 0) -> list[PointRecord]:
    rng = np.random.default_rng(seed)
    return [
        PointRecord(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"product-{i}")),
            vectors={k: rng.normal(size=d).astype(np.float32) for k, d in NAMES.items()},
            payload={"cluster": i % 5, "colour": COLOURS[i % 3], "title": f"item {i}"},
        )
        for i in range(n)
    ]


POINTS = make_points()


@pytest.fixture(params=["edge", "memory", *SERVER_VARIANTS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "edge":
        s: Store = EdgeStore(tmp_path / "home")
    elif request.param == "memory":
        s = ServerStore(":memory:")
    else:
        s = server_store(request, request.param, timeout=10)
    created: list[str] = []
    s.test_names = created  # type: ignore[attr-defined]
    yield s
    for alias in set(created) & set(s.aliases()):  # aliases first: drop refuses aliased collections
        s.delete_alias(alias)
    for name in created:  # a real server is shared: remove only what this test made
        if s.exists(name):
            s.drop(name)
    s.close()


def new_name(store: Store) -> str:
    name = f"enclip-test-{uuid.uuid4().hex[:10]}"
    store.test_names.append(name)  # type: ignore[attr-defined]
    return name


@pytest.fixture
def filled(store: Store) -> tuple[Store, str]:
    name = new_name(store)
    store.create(name, SPEC)
    store.upsert(name, POINTS)
    return store, name


# -- collections -------------------------------------------------------------------------------


def test_create_exists_list_drop(store: Store) -> None:
    name = new_name(store)
    assert not store.exists(name)
    assert name not in store.list_collections()
    store.create(name, SPEC)
    assert store.exists(name)
    assert name in store.list_collections()
    store.drop(name)
    assert not store.exists(name)
    assert name not in store.list_collections()
    with pytest.raises(CollectionNotFound):
        store.drop(name)


def test_create_twice_errors(store: Store) -> None:
    name = new_name(store)
    store.create(name, SPEC)
    with pytest.raises(StoreError, match="already exists"):
        store.create(name, SPEC)


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "../up", ".hidden", "x" * 129, "é"])
def test_invalid_name_errors(store: Store, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid collection name"):
        store.create(bad, SPEC)
    with pytest.raises(StoreError, match="invalid collection name"):
        store.exists(bad)


def test_info(filled: tuple[Store, str]) -> None:
    store, name = filled
    info = store.info(name)
    assert info.name == name
    assert info.points == N
    assert info.vectors == NAMES
    assert info.payload_schema["cluster"] == "integer"
    assert info.payload_schema["colour"] == "keyword"
    assert info.metadata == SPEC.metadata


def test_cluster_always_indexed(store: Store) -> None:
    name = new_name(store)
    store.create(name, CollectionSpec(vectors={"v": 4}, indexed_fields={"colour": "keyword"}))
    assert store.info(name).payload_schema.get("cluster") == "integer"


def test_set_metadata_replaces(filled: tuple[Store, str]) -> None:
    store, name = filled
    store.set_metadata(name, {"fingerprint": "new", "nested": {"a": [1, 2]}})
    assert store.info(name).metadata == {"fingerprint": "new", "nested": {"a": [1, 2]}}
    assert name in store.list_collections()  # still ours after a replace


# -- points ------------------------------------------------------------------------------------


def test_release_lets_go_and_the_next_call_opens_it_again(filled: tuple[Store, str]) -> None:
    """What a service does after a blue/green switch: the old collection is released (on the embedded store
    another store can open it then) and still answers when asked again."""
    store, name = filled
    store.release(name)
    if isinstance(store, EdgeStore):
        with EdgeStore(store.home) as other:  # another holder, as another process would be
            assert other.count(name) == N
    assert store.count(name) == N and store.describe(name).metadata == store.info(name).metadata


def test_upsert_then_count(filled: tuple[Store, str]) -> None:
    store, name = filled
    assert store.count(name) == N


def test_upsert_same_id_overwrites(filled: tuple[Store, str]) -> None:
    store, name = filled
    p = POINTS[7]
    store.upsert(name, [PointRecord(p.id, p.vectors, {**p.payload, "title": "renamed"})])
    assert store.count(name) == N
    assert store.retrieve(name, [p.id])[0].payload["title"] == "renamed"


def test_delete(filled: tuple[Store, str]) -> None:
    store, name = filled
    gone = [POINTS[0].id, POINTS[1].id]
    store.delete(name, gone)
    assert store.count(name) == N - 2
    assert store.retrieve(name, gone) == []


def test_set_payload_keeps_vectors(filled: tuple[Store, str]) -> None:
    store, name = filled
    p = POINTS[3]
    store.set_payload(name, p.id, {"cluster": 4, "colour": "blue", "title": "new"})
    assert store.retrieve(name, [p.id])[0].payload == {"cluster": 4, "colour": "blue", "title": "new"}
    hits = store.query_fused(name, p.vectors, limit=3, prefetch_limit=20)
    assert hits[0].id == p.id


def test_scroll(filled: tuple[Store, str]) -> None:
    store, name = filled
    rows = dict(store.scroll(name))
    assert set(rows) == {p.id for p in POINTS}
    assert rows[POINTS[5].id] == POINTS[5].payload
    only = dict(store.scroll(name, fields=["cluster"]))
    assert len(only) == N
    assert only[POINTS[5].id] == {"cluster": POINTS[5].payload["cluster"]}


def test_retrieve(filled: tuple[Store, str]) -> None:
    store, name = filled
    unknown = str(uuid.uuid4())
    hits = store.retrieve(name, [POINTS[9].id, unknown, POINTS[2].id])
    assert [h.id for h in hits] == [POINTS[9].id, POINTS[2].id]
    assert hits[0].payload == POINTS[9].payload
    assert hits[0].score == 0


# -- search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_query_fused(filled: tuple[Store, str], fusion: str) -> None:
    store, name = filled
    rng = np.random.default_rng(1)
    query = {k: rng.normal(size=d) for k, d in NAMES.items()}
    hits = store.query_fused(name, query, limit=10, prefetch_limit=30, fusion=fusion)  # type: ignore[arg-type]
    ids = {p.id for p in POINTS}
    assert len(hits) == 10
    assert all(h.id in ids for h in hits)
    assert all(h.payload.get("title", "").startswith("item ") for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_exact_point_ranks_first(filled: tuple[Store, str], fusion: str) -> None:
    store, name = filled
    for p in (POINTS[0], POINTS[123]):
        hits = store.query_fused(name, p.vectors, limit=5, prefetch_limit=20, fusion=fusion)  # type: ignore[arg-type]
        assert hits[0].id == p.id
        per = store.query_each(name, p.vectors, limit=5)
        assert all(res[0].id == p.id for res in per.values())


def test_query_each(filled: tuple[Store, str]) -> None:
    store, name = filled
    rng = np.random.default_rng(2)
    query = {k: rng.normal(size=d).tolist() for k, d in list(NAMES.items())[:2]}
    per = store.query_each(name, query, limit=7)
    assert list(per) == list(query)
    assert all(len(hits) == 7 for hits in per.values())
    assert all(-1.0001 <= h.score <= 1.0001 for hits in per.values() for h in hits)  # cosine


def test_empty_query_errors(filled: tuple[Store, str]) -> None:
    store, name = filled
    with pytest.raises(QueryError):
        store.query_fused(name, {}, limit=5, prefetch_limit=10)


def test_filter_by_clusters(filled: tuple[Store, str]) -> None:
    store, name = filled
    flt = SearchFilter(clusters=[1, 3])
    query = POINTS[0].vectors  # cluster 0: its best matches must still be filtered out
    hits = store.query_fused(name, query, limit=20, prefetch_limit=50, filter=flt)
    assert len(hits) == 20
    assert {h.payload["cluster"] for h in hits} <= {1, 3}
    for res in store.query_each(name, query, limit=20, filter=flt).values():
        assert {h.payload["cluster"] for h in res} <= {1, 3}
    assert store.count(name, flt) == sum(p.payload["cluster"] in (1, 3) for p in POINTS)


def test_filter_fields_and_clusters(filled: tuple[Store, str]) -> None:
    store, name = filled
    flt = SearchFilter(clusters=[0, 2], fields={"colour": ["red", "green"]})
    expected = {
        p.id for p in POINTS if p.payload["cluster"] in (0, 2) and p.payload["colour"] in ("red", "green")
    }
    assert store.count(name, flt) == len(expected)
    hits = store.query_fused(name, POINTS[1].vectors, limit=N, prefetch_limit=N, filter=flt)
    assert {h.id for h in hits} == expected
    single = SearchFilter(fields={"colour": ["blue"]})
    assert store.count(name, single) == sum(p.payload["colour"] == "blue" for p in POINTS)


def test_facet_counts(filled: tuple[Store, str]) -> None:
    store, name = filled
    assert store.facet_counts(name, "cluster") == dict(Counter(p.payload["cluster"] for p in POINTS))
    assert store.facet_counts(name, "colour") == dict(Counter(p.payload["colour"] for p in POINTS))


ODD_KEYS = ("base colour", "size[eu]", "a..b", "$price", "a.b")  # catalog column names that are path syntax


def test_field_names_with_path_syntax_filter_index_and_facet_as_themselves(store: Store) -> None:
    """A column named "base colour" (or with `[`, `..`, `$`, `.`) is indexed, filtered, faceted and scrolled as
    that one flat key, on every backend; plain keys keep their names in the schema."""
    name = new_name(store)
    fields = {"cluster": "integer", "colour": "keyword"} | {k: "keyword" for k in ODD_KEYS}
    store.create(name, CollectionSpec(vectors=NAMES, indexed_fields=fields))
    points = [PointRecord(id=p.id, vectors=p.vectors,
                          payload=p.payload | {k: p.payload["colour"] for k in ODD_KEYS} | {"a": {"b": "nested"}})
              for p in POINTS]
    store.upsert(name, points)
    assert set(fields) <= set(store.info(name).payload_schema)
    blue = sum(p.payload["colour"] == "blue" for p in POINTS)
    for key in ODD_KEYS:
        assert store.count(name, SearchFilter(fields={key: ["blue"]})) == blue, key
        hits = store.query_fused(name, POINTS[1].vectors, limit=N, prefetch_limit=N,
                                 filter=SearchFilter(fields={key: ["red", "green"]}))
        assert len(hits) == N - blue and all(h.payload[key] != "blue" for h in hits), key
        assert store.facet_counts(name, key) == dict(Counter(p.payload["colour"] for p in POINTS)), key
    assert {pl["base colour"] for _, pl in store.scroll(name, ["base colour"])} == set(COLOURS)
    with pytest.raises(QueryError, match="double quote"):
        store.count(name, SearchFilter(fields={'say "hi"': ["x"]}))


def test_missing_collection(store: Store) -> None:
    name = new_name(store)
    q = POINTS[0].vectors
    with pytest.raises(CollectionNotFound):
        store.info(name)
    with pytest.raises(CollectionNotFound):
        store.query_fused(name, q, limit=3, prefetch_limit=5)
    with pytest.raises(CollectionNotFound):
        store.query_each(name, q, limit=3)
    with pytest.raises(CollectionNotFound):
        store.upsert(name, POINTS[:2])
    with pytest.raises(CollectionNotFound):
        store.count(name)


# -- backend specifics -------------------------------------------------------------------------


def test_edge_persists_across_reopen(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with EdgeStore(home) as first:
        first.create("shop", SPEC)
        first.upsert("shop", POINTS)
        first.delete("shop", [POINTS[0].id])
    with EdgeStore(home) as again:
        assert again.list_collections() == ["shop"]
        info = again.info("shop")
        assert info.points == N - 1
        assert info.metadata == SPEC.metadata
        assert info.payload_schema["cluster"] == "integer"
        assert again.query_fused("shop", POINTS[10].vectors, limit=3, prefetch_limit=10)[0].id == POINTS[10].id


def test_edge_shard_in_use_is_clear(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with EdgeStore(home) as first:
        first.create("shop", SPEC)
        first.upsert("shop", POINTS[:5])
        with EdgeStore(home) as second, pytest.raises(StoreError, match="in use"):
            second.count("shop")


def test_edge_half_created_folder_is_not_listed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "collections" / "halfway" / "shard").mkdir(parents=True)  # as if create died before enclip.json
    (home / "collections" / ".creating-x-1234").mkdir()
    with EdgeStore(home) as store:
        assert store.list_collections() == []
        assert not store.exists("halfway")
        with pytest.raises(CollectionNotFound):
            store.info("halfway")


def test_server_ignores_foreign_collections() -> None:
    from qdrant_client import models

    with ServerStore(":memory:") as store:
        client = store.client  # type: ignore[attr-defined]
        vectors = {"v": models.VectorParams(size=4, distance=models.Distance.COSINE)}
        client.create_collection("theirs", vectors_config=vectors)
        store.create("ours", SPEC)
        assert store.list_collections() == ["ours"]
        assert store.exists("theirs")  # the name is taken all the same
        for action in (lambda: store.drop("theirs"), lambda: store.info("theirs"), lambda: store.count("theirs")):
            with pytest.raises(StoreError, match="not made by enclip"):
                action()
        assert client.collection_exists("theirs")


def test_server_unreachable_is_one_line() -> None:
    start = time.monotonic()
    store = ServerStore("http://127.0.0.1:1", options=ServerOptions(timeout=1, backoff=0.01))
    with pytest.raises(StoreError, match="cannot reach Qdrant at http://127.0.0.1:1") as err:
        store.list_collections()
    assert "\n" not in str(err.value)
    assert "gave up after 4 attempts" in str(err.value)  # refused connections are retried (3 by default)
    assert store.retried == 3
    with pytest.raises(StoreError, match="cannot reach Qdrant"):
        store.info("shop")
    assert time.monotonic() - start < 5


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b'{"status":{"error":"Must provide an API key or an Authorization bearer token"}}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_server_auth_error_is_clear() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        options = ServerOptions(timeout=2)
        with ServerStore(url, options=options) as store, pytest.raises(StoreError, match="API key") as err:
            store.list_collections()
        assert "\n" not in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.server
@pytest.mark.parametrize("transport", ["rest", "grpc"])
@pytest.mark.parametrize("key", [None, "not-the-key"])
def test_a_real_server_with_a_key_refuses_a_missing_or_wrong_one(qdrant_key_node, transport: str,
                                                                  key: str | None) -> None:
    """The server's own 401 (REST) / UNAUTHENTICATED (gRPC) becomes one line, not retried; the right key works."""
    from qdrant_server import Node

    wrong = Node(qdrant_key_node.url, qdrant_key_node.grpc_port, key)
    with wrong.store(transport, timeout=5) as store, pytest.raises(StoreError, match="check the API key") as err:
        store.list_collections()
    assert "\n" not in str(err.value) and store.retried == 0
    with qdrant_key_node.store(transport, timeout=5) as store:
        assert isinstance(store.list_collections(), list)


@pytest.mark.server
def test_prefer_grpc_talks_to_the_grpc_port(qdrant_node) -> None:
    """With prefer_grpc the requests go to `grpc_port`, not the URL's REST port: a wrong one cannot be reached."""
    options = ServerOptions(prefer_grpc=True, grpc_port=1, timeout=2, retries=0)
    with ServerStore(qdrant_node.url, qdrant_node.api_key, options=options) as store, pytest.raises(
            StoreError, match="cannot reach Qdrant"):
        store.list_collections()
    with qdrant_node.store("grpc", timeout=5) as store:
        assert isinstance(store.list_collections(), list)


def test_grpc_port_is_checked() -> None:
    for bad in (0, 70000, True, "6334"):
        with pytest.raises(StoreError, match="grpc_port must be a port number"):
            ServerOptions(grpc_port=bad)  # type: ignore[arg-type]


# -- collection options ------------------------------------------------------------------------

# Everything at once; values a single-node server accepts too (2 shards, 1 replica), so the `server`
# backend can run this against a real Qdrant.
OPTIONS = CollectionOptions(
    on_disk_vectors=True,
    quantization="int8",
    hnsw_m=8,
    hnsw_ef_construct=64,
    hnsw_full_scan_kb=2000,
    shard_number=2,
    replication_factor=1,
    payload_indexes={"title": "keyword"},
)
OPTIONS_SPEC = CollectionSpec(
    vectors=NAMES, metadata=SPEC.metadata, indexed_fields=SPEC.indexed_fields, options=OPTIONS
)


def test_options_keep_the_contract(store: Store) -> None:
    """Options change layout and cost, never what the store answers."""
    name = new_name(store)
    store.create(name, OPTIONS_SPEC)
    store.upsert(name, POINTS)
    info = store.info(name)
    assert info.points == N
    assert info.vectors == NAMES
    assert info.metadata == SPEC.metadata  # the recorded options stay out of the user's metadata
    assert info.payload_schema["title"] == "keyword"  # the extra index
    assert info.payload_schema["cluster"] == "integer"
    assert info.payload_schema["colour"] == "keyword"
    for p in (POINTS[0], POINTS[77]):
        assert store.query_fused(name, p.vectors, limit=3, prefetch_limit=10)[0].id == p.id
    assert store.count(name, SearchFilter(fields={"title": ["item 5"]})) == 1
    store.set_metadata(name, {"fingerprint": "new"})
    assert store.info(name).metadata == {"fingerprint": "new"}


def test_edge_applies_options(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with EdgeStore(home) as store:
        store.create("shop", OPTIONS_SPEC)
        store.upsert("shop", POINTS[:20])
    folder = home / "collections" / "shop"
    recorded = json.loads((folder / "enclip.json").read_text())
    assert CollectionOptions.from_dict(recorded["options"]) == OPTIONS  # sharding recorded, though unused
    # qdrant-edge keeps its own config beside the shard: check it got what it can honour.
    config = json.loads((folder / "shard" / "edge_config.json").read_text())
    assert all(v["on_disk"] is True for v in config["vectors"].values())
    assert set(config["vectors"]) == set(NAMES)
    assert (config["hnsw_config"]["m"], config["hnsw_config"]["full_scan_threshold"]) == (8, 2000)
    assert config["hnsw_config"]["m"] == 8 and config["hnsw_config"]["ef_construct"] == 64
    assert config["quantization_config"] == {"scalar": {"type": "int8", "always_ram": True}}
    with EdgeStore(home) as again:  # reopens with the stored config
        assert again.info("shop").points == 20


def test_edge_without_options_keeps_defaults(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as store:
        store.create("plain", SPEC)
    folder = tmp_path / "collections" / "plain"
    assert "options" not in json.loads((folder / "enclip.json").read_text())
    config = json.loads((folder / "shard" / "edge_config.json").read_text())
    assert config.get("quantization_config") is None
    assert not any(v.get("on_disk") for v in config["vectors"].values())


def test_server_passes_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from qdrant_client import models

    with ServerStore(":memory:") as store:
        client = store.client  # type: ignore[attr-defined]
        calls: list[dict[str, object]] = []
        real = client.create_collection

        def spy(*args: object, **kwargs: object) -> bool:
            calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(client, "create_collection", spy)
        store.create("shop", OPTIONS_SPEC)
        (kw,) = calls
        assert kw["hnsw_config"] == models.HnswConfigDiff(m=8, ef_construct=64, full_scan_threshold=2000)
        assert kw["quantization_config"] == models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
        )
        assert kw["shard_number"] == 2 and kw["replication_factor"] == 1
        assert all(v.on_disk is True for v in kw["vectors_config"].values())  # type: ignore[attr-defined]
        # local mode keeps the per-vector on_disk flag, and our metadata records the rest
        config = client.get_collection("shop").config
        assert all(v.on_disk is True for v in config.params.vectors.values())
        assert CollectionOptions.from_dict(config.metadata["enclip_options"]) == OPTIONS
        store.set_metadata("shop", {"fingerprint": "new"})  # a replace keeps the record
        assert client.get_collection("shop").config.metadata["enclip_options"] == OPTIONS.to_dict()

        calls.clear()
        store.create("plain", SPEC)  # no options: nothing but the vectors and metadata is sent
        assert set(calls[0]) == {"vectors_config", "metadata"}
        assert all(v.on_disk is None for v in calls[0]["vectors_config"].values())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "bad",
    [
        {"quantization": "int4"},
        {"hnsw_m": -1},
        {"hnsw_ef_construct": 2},
        {"shard_number": 0},
        {"replication_factor": 1.5},
        {"payload_indexes": {"title": "text"}},
        {"payload_indexes": {"": "keyword"}},
    ],
)
def test_bad_options_error(bad: dict[str, object]) -> None:
    with pytest.raises(StoreError):
        CollectionOptions(**bad)  # type: ignore[arg-type]


def test_conflicting_payload_index_errors(store: Store) -> None:
    name = new_name(store)
    clash = CollectionSpec(vectors={"v": 4}, indexed_fields={"colour": "keyword"},
                           options=CollectionOptions(payload_indexes={"colour": "integer"}))
    with pytest.raises(StoreError, match="indexed both"):
        store.create(name, clash)
    with pytest.raises(StoreError, match="indexed both"):
        store.create(name, CollectionSpec(vectors={"v": 4}, options=CollectionOptions(
            payload_indexes={"cluster": "keyword"})))
    assert not store.exists(name)


def test_open_store_picks_backend(tmp_path: Path) -> None:
    with open_store(home=tmp_path) as edge:
        assert isinstance(edge, EdgeStore) and edge.kind == "embedded"
    with open_store(home=tmp_path, url=":memory:") as server:
        assert isinstance(server, ServerStore) and server.kind == "server"


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_backends_fuse_identically(tmp_path, fusion):
    """The same points and query must give the same fused ranking embedded and on a server."""
    import uuid as _uuid

    import numpy as np

    from enclip_qdrant.store import CollectionSpec, EdgeStore, PointRecord, ServerStore

    rng = np.random.default_rng(7)
    names = ("m0", "m1", "m2")
    points = [PointRecord(str(_uuid.UUID(int=i + 1)), {n: rng.standard_normal(8) for n in names}, {"cluster": i % 3})
              for i in range(120)]
    query = {n: rng.standard_normal(8) for n in names}
    rankings = []
    for store in (EdgeStore(tmp_path / "edge"), ServerStore(":memory:")):
        with store:
            store.create("same", CollectionSpec({n: 8 for n in names}))
            store.upsert("same", points)
            hits = store.query_fused("same", query, limit=15, prefetch_limit=40, fusion=fusion)
            rankings.append(([h.id for h in hits], [round(h.score, 4) for h in hits]))
    assert rankings[0] == rankings[1]


# -- aliases -----------------------------------------------------------------------------------


def test_alias_resolves_and_serves_every_call(filled: tuple[Store, str]) -> None:
    store, name = filled
    alias = new_name(store)
    store.set_alias(alias, name)
    assert store.resolve(alias) == name and store.resolve(name) == name
    assert store.aliases()[alias] == name
    assert store.exists(alias)
    assert alias not in store.list_collections()  # listings stay physical
    info = store.info(alias)
    assert info.name == name and info.points == N and info.metadata == SPEC.metadata
    assert store.count(alias) == N
    p = POINTS[4]
    assert store.query_fused(alias, p.vectors, limit=3, prefetch_limit=10)[0].id == p.id
    assert all(r[0].id == p.id for r in store.query_each(alias, p.vectors, limit=3).values())
    assert store.retrieve(alias, [p.id])[0].payload == p.payload
    store.set_payload(alias, p.id, {"cluster": 1, "colour": "red", "title": "via alias"})
    assert dict(store.scroll(alias, ["title"]))[p.id] == {"title": "via alias"}
    store.upsert(alias, make_points(N + 1)[-1:])
    store.delete(alias, [POINTS[0].id])
    assert store.count(name) == N
    store.set_metadata(alias, {"fingerprint": "via alias"})
    assert store.info(name).metadata == {"fingerprint": "via alias"}
    assert store.facet_counts(alias, "colour") == store.facet_counts(name, "colour")


def test_alias_switches_and_deletes(filled: tuple[Store, str]) -> None:
    store, old = filled
    new, alias = new_name(store), new_name(store)
    store.create(new, SPEC)
    store.upsert(new, POINTS[:10])
    store.set_alias(alias, old)
    store.set_alias(alias, new)  # switch
    assert store.resolve(alias) == new and store.count(alias) == 10
    store.delete_alias(alias)
    assert alias not in store.aliases()
    with pytest.raises(CollectionNotFound):
        store.resolve(alias)
    with pytest.raises(CollectionNotFound):
        store.delete_alias(alias)
    with pytest.raises(CollectionNotFound):
        store.resolve(new_name(store))


def test_alias_and_collection_cannot_share_a_name(filled: tuple[Store, str]) -> None:
    store, name = filled
    other, alias = new_name(store), new_name(store)
    store.create(other, SPEC)
    with pytest.raises(StoreError, match="is a collection"):
        store.set_alias(other, name)
    store.set_alias(alias, name)
    with pytest.raises(StoreError, match="is an alias"):
        store.create(alias, SPEC)
    with pytest.raises(CollectionNotFound):
        store.set_alias(new_name(store), new_name(store))  # no such target


def test_drop_refuses_an_aliased_collection(filled: tuple[Store, str]) -> None:
    store, name = filled
    alias = new_name(store)
    store.set_alias(alias, name)
    with pytest.raises(StoreError, match=alias):
        store.drop(name)
    with pytest.raises(StoreError, match="is an alias"):
        store.drop(alias)
    assert store.count(name) == N
    store.delete_alias(alias)
    store.drop(name)
    assert not store.exists(name)


def test_scroll_points_carries_vectors_and_payload(filled: tuple[Store, str]) -> None:
    store, name = filled
    got = {p.id: p for p in store.scroll_points(name, batch=64)}
    assert set(got) == {p.id for p in POINTS}
    p = POINTS[11]
    assert got[p.id].payload == p.payload and set(got[p.id].vectors) == set(NAMES)
    for k, v in p.vectors.items():  # stored normalised (cosine): same direction
        unit = np.asarray(v) / np.linalg.norm(v)
        assert np.allclose(got[p.id].vectors[k], unit, atol=1e-5)


def test_edge_aliases_persist_in_one_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with EdgeStore(home) as store:
        store.create("shop-a", SPEC)
        store.set_alias("shop", "shop-a")
    assert json.loads((home / "collections" / ".aliases.json").read_text()) == {"shop": "shop-a"}
    with EdgeStore(home) as again:
        assert again.list_collections() == ["shop-a"] and again.resolve("shop") == "shop-a"


def _set_aliases(home: str, worker: int, n: int) -> None:
    with EdgeStore(Path(home)) as store:
        for i in range(n):
            store.set_alias(f"a{worker}-{i}", "shop")


def test_edge_concurrent_alias_updates_lose_nothing(tmp_path: Path) -> None:
    """Issue 8: 4 processes x 50 `set_alias` on distinct aliases; every one must survive."""
    import multiprocessing

    home = tmp_path / "home"
    with EdgeStore(home) as store:
        store.create("shop", SPEC)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_set_aliases, args=(str(home), w, 50)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    with EdgeStore(home) as store:
        aliases = store.aliases()
    assert len(aliases) == 200 and set(aliases.values()) == {"shop"}


def test_edge_sweeps_only_marked_leftovers(tmp_path: Path) -> None:
    """A crash mid-create or mid-drop leaves a marked work folder: the next store sweeps it, nothing else."""
    from enclip_qdrant.store.edge import WORK_MARKER

    root = tmp_path / "home" / "collections"
    crashed = root / ".creating-shop-dead0001"
    (crashed / "shard").mkdir(parents=True)
    (crashed / WORK_MARKER).touch()
    dropped = root / ".dropping-old-dead0002"
    dropped.mkdir()
    (dropped / WORK_MARKER).touch()
    unmarked = root / ".creating-x-1234"  # not provably ours: kept
    unmarked.mkdir()
    foreign = root / "notes"
    foreign.mkdir()
    with EdgeStore(tmp_path / "home") as store:
        assert not crashed.exists() and not dropped.exists()
        assert unmarked.is_dir() and foreign.is_dir()
        store.create("shop", SPEC)
        store.drop("shop")
        assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [".creating-x-1234",
                                                                                         "notes"]


def test_edge_failed_create_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enclip_qdrant.store import edge

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(edge, "atomic_write_json", boom)
    with EdgeStore(tmp_path / "home") as store, pytest.raises(OSError):
        store.create("shop", SPEC)
    assert [p.name for p in (tmp_path / "home" / "collections").iterdir() if not p.name.endswith(".lock")] == []


def test_importing_store_loads_no_backend() -> None:
    import subprocess
    import sys

    code = ("import sys, enclip_qdrant.store, enclip_qdrant.store.base; "
            "print('qdrant_edge' in sys.modules, 'qdrant_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- sparse (lexical) vectors: hybrid search on both backends ---------------------------------------

WORDS = ("red linen shirt", "blue denim jeans", "green wool scarf", "black leather boots", "white cotton tee")
HYBRID = CollectionSpec(vectors=NAMES, metadata={"k": 5}, indexed_fields={"cluster": "integer"},
                        sparse_vectors=("text_bm25",))


def hybrid_points(n: int = 50) -> list[PointRecord]:
    """Points with a BM25 document vector of their words (from qdrant-edge's Bm25, as indexing does);
    every tenth point has no text and so no sparse vector."""
    from enclip_qdrant.collection.text import TextRecipe

    recipe = TextRecipe()
    out = []
    for p in make_points(n, seed=3):
        i = int(p.payload["title"].split()[1])
        # padding words of varying count give each document its own BM25 length, so no two scores tie
        # (tied points are ordered differently by the two backends)
        text = f"{WORDS[i % len(WORDS)]} {' '.join(['filler'] * (i // len(WORDS)))}"
        doc = None if i % 10 == 9 else recipe.document({"text": text})
        out.append(PointRecord(p.id, p.vectors, p.payload | {"words": WORDS[i % len(WORDS)]},
                               {"text_bm25": doc} if doc else {}))
    return out


@pytest.fixture
def hybrid(store: Store) -> tuple[Store, str, list[PointRecord]]:
    name = new_name(store)
    store.create(name, HYBRID)
    points = hybrid_points()
    store.upsert(name, points)
    return store, name, points


def _query(words: str) -> SparseVec:
    from enclip_qdrant.collection.text import TextRecipe

    q = TextRecipe().query(words)
    assert q is not None
    return q


def test_info_lists_sparse_vectors(hybrid: tuple[Store, str, list[PointRecord]], store: Store) -> None:
    store, name, _ = hybrid
    ci = store.info(name)
    assert ci.sparse_vectors == ["text_bm25"] and set(ci.vectors) == set(NAMES)
    plain = new_name(store)
    store.create(plain, SPEC)
    assert store.info(plain).sparse_vectors == []  # collections without text are what they always were


def test_sparse_prefetch_alone_finds_the_words(hybrid: tuple[Store, str, list[PointRecord]]) -> None:
    store, name, points = hybrid
    res = store.query_each(name, {"text_bm25": _query("denim jeans")}, limit=50)["text_bm25"]
    want = {p.id for p in points if p.payload["words"] == "blue denim jeans" and p.sparse}
    assert {h.id for h in res} == want  # only points holding those words match, and all of them


def test_hybrid_is_one_fused_query_under_the_filter(hybrid: tuple[Store, str, list[PointRecord]]) -> None:
    store, name, points = hybrid
    vectors = {k: points[0].vectors[k] for k in NAMES} | {"text_bm25": _query("wool scarf")}
    flt = SearchFilter(clusters=[1, 2])
    hits = store.query_fused(name, vectors, limit=10, prefetch_limit=40, filter=flt)
    assert hits and all(h.payload["cluster"] in (1, 2) for h in hits)
    lexical = store.query_each(name, {"text_bm25": vectors["text_bm25"]}, limit=40, filter=flt)["text_bm25"]
    assert lexical and all(h.payload["cluster"] in (1, 2) for h in lexical)
    # a heavily weighted text prefetch puts its own best matches first
    weighted = store.query_fused(name, vectors, limit=10, prefetch_limit=40, filter=flt, weights={"text_bm25": 50})
    assert all(h.payload["words"] == "green wool scarf" for h in weighted[:3])
    assert [h.id for h in hits] != [h.id for h in weighted]  # the weight changed the fusion


def test_weights_need_rrf(hybrid: tuple[Store, str, list[PointRecord]]) -> None:
    store, name, points = hybrid
    vectors = {"clip_a": points[0].vectors["clip_a"], "text_bm25": _query("scarf")}
    with pytest.raises(QueryError):
        store.query_fused(name, vectors, limit=5, prefetch_limit=20, fusion="dbsf", weights={"text_bm25": 2})
    # weight 1 everywhere is plain RRF, fine with either fusion
    assert store.query_fused(name, vectors, limit=5, prefetch_limit=20, fusion="dbsf", weights={"text_bm25": 1})


def test_scroll_points_carries_sparse_vectors(hybrid: tuple[Store, str, list[PointRecord]]) -> None:
    store, name, points = hybrid
    got = {p.id: p for p in store.scroll_points(name, batch=7)}
    for p in points:
        assert set(got[p.id].vectors) == set(NAMES)
        if p.sparse:
            s = got[p.id].sparse["text_bm25"]
            want = p.sparse["text_bm25"]
            assert dict(zip(s.indices, s.values, strict=True)) == pytest.approx(
                dict(zip(want.indices, want.values, strict=True)))
        else:
            assert not got[p.id].sparse


def test_backends_fuse_hybrid_identically(tmp_path: Path) -> None:
    """Same points, same dense+sparse query, weighted RRF: both backends return the same ranking."""
    points = hybrid_points()
    vectors = {k: points[4].vectors[k] for k in NAMES} | {"text_bm25": _query("leather boots red")}
    ranked = []
    for s in (EdgeStore(tmp_path / "home"), ServerStore(":memory:")):
        with s:
            s.create("h", HYBRID)
            s.upsert("h", points)
            ranked.append([h.id for h in s.query_fused("h", vectors, limit=10, prefetch_limit=40,
                                                        weights={"text_bm25": 2.0})])
    assert ranked[0] == ranked[1]


def test_set_sparse_rewrites_only_the_text_vector(hybrid: tuple[Store, str, list[PointRecord]]) -> None:
    store, name, points = hybrid
    p = next(p for p in points if p.sparse)
    store.set_sparse(name, p.id, "text_bm25", _query("velvet gown"))
    got = {q.id: q for q in store.scroll_points(name)}[p.id]
    assert list(got.sparse["text_bm25"].indices) == list(_query("velvet gown").indices)
    assert np.allclose(np.asarray(got.vectors["clip_a"]), np.asarray(p.vectors["clip_a"]) /
                       np.linalg.norm(p.vectors["clip_a"]), atol=1e-5)  # dense vectors untouched
    res = store.query_each(name, {"text_bm25": _query("velvet")}, limit=5)["text_bm25"]
    assert [h.id for h in res] == [p.id]
    store.set_sparse(name, p.id, "text_bm25", None)  # no words left: no text vector
    assert not {q.id: q for q in store.scroll_points(name)}[p.id].sparse
    assert store.query_each(name, {"text_bm25": _query("velvet")}, limit=5)["text_bm25"] == []


# -- HNSW and search params: the same answers, and the index state `info` shows --------------------------

# 1 KB: every segment of these small collections is big enough for the optimizer to index
HNSW_SPEC = CollectionSpec(vectors=NAMES, metadata={"k": 5}, indexed_fields={"cluster": "integer"},
                           sparse_vectors=("text_bm25",), options=CollectionOptions(indexing_threshold=1))


def _cosine_top(points: list[PointRecord], name: str, query: np.ndarray, k: int,
                cluster: int | None = None) -> list[str]:
    """The reference: cosine similarity computed here, ties broken by id, no engine involved."""
    pool = [p for p in points if cluster is None or p.payload["cluster"] == cluster]
    m = np.stack([np.asarray(p.vectors[name], dtype=np.float64) for p in pool])
    scores = m @ query / (np.linalg.norm(m, axis=1) * np.linalg.norm(query))
    order = sorted(range(len(pool)), key=lambda i: (-round(float(scores[i]), 6), pool[i].id))
    return [pool[i].id for i in order[:k]]


def _wait_indexed(store: Store, name: str, want: int, timeout: float = 30.0) -> None:
    """A server's optimizer indexes in the background; the embedded store has done it when build_index returns."""
    deadline = time.monotonic() + timeout
    while True:
        state = store.info(name).index
        assert state is not None
        if state.indexed_vectors >= want or time.monotonic() > deadline:
            assert state.indexed_vectors == want, state
            return
        time.sleep(0.2)


def test_exact_search_params_match_the_cosine_reference(hybrid: tuple[Store, str, list[PointRecord]]) -> None:
    store, name, points = hybrid
    rng = np.random.default_rng(9)
    query = {k: rng.normal(size=d) for k, d in NAMES.items()}
    for flt, cluster in ((None, None), (SearchFilter(clusters=[2]), 2)):
        per = store.query_each(name, query, limit=7, filter=flt, params=SearchParams(exact=True))
        for k, q in query.items():
            assert [h.id for h in per[k]] == _cosine_top(points, k, q, 7, cluster)
    fused = store.query_fused(name, query, limit=5, prefetch_limit=20, params=SearchParams(exact=True))
    assert [h.id for h in fused] == [h.id for h in store.query_fused(name, query, limit=5, prefetch_limit=20)]
    ef = store.query_each(name, query, limit=7, params=SearchParams(hnsw_ef=64))
    assert all(len(hits) == 7 for hits in ef.values())
    with pytest.raises(StoreError, match="hnsw_ef"):
        SearchParams(hnsw_ef=0)


def test_build_index_indexes_every_member_vector_and_keeps_answers(store: Store) -> None:
    name = new_name(store)
    local = isinstance(store, ServerStore) and store._local  # type: ignore[attr-defined]
    store.create(name, HNSW_SPEC)
    points = hybrid_points(120)
    store.upsert(name, points[:80])
    before = store.info(name).index
    assert before is not None and before.vectors == 80 * len(NAMES)
    state = store.build_index(name, progress=None)
    if local:  # qdrant-client's stand-in has no index at all: it says so, and searches exactly
        assert not state.hnsw and state.indexed_vectors == 0
    else:
        assert state.hnsw
        _wait_indexed(store, name, 80 * len(NAMES))  # members only: the text vectors are not counted
    store.upsert(name, points[80:])  # a later run: its points are indexed by the next build
    store.build_index(name)
    if not local:
        _wait_indexed(store, name, 120 * len(NAMES))
    assert store.info(name).index.vectors == 120 * len(NAMES)  # type: ignore[union-attr]
    for p in (points[0], points[100]):
        assert store.query_fused(name, p.vectors, limit=3, prefetch_limit=10,
                                 params=SearchParams(hnsw_ef=32))[0].id == p.id
        per = store.query_each(name, p.vectors, limit=3)
        assert all(res[0].id == p.id for res in per.values())
    rng = np.random.default_rng(4)
    q = rng.normal(size=NAMES["clip_a"])
    got = store.query_each(name, {"clip_a": q}, limit=5, filter=SearchFilter(clusters=[1]),
                           params=SearchParams(exact=True))["clip_a"]
    assert [h.id for h in got] == _cosine_top(points, "clip_a", q, 5, cluster=1)


def test_edge_hnsw_choice_persists_and_can_be_turned_off(tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "home") as store:
        store.create("shop", HNSW_SPEC)
        store.upsert("shop", hybrid_points(60))
        off = store.info("shop").index
        assert off is not None and not off.hnsw and off.indexed_vectors == 0  # nothing built until asked
        assert store.build_index("shop", hnsw=False).indexed_vectors == 0
        on = store.build_index("shop")
        assert on.hnsw and on.indexed_vectors == on.vectors == 60 * len(NAMES)
    with EdgeStore(tmp_path / "home") as again:
        assert again.info("shop").index == on  # recorded beside the shard
        assert not again.build_index("shop", hnsw=False).hnsw
    spec = json.loads((tmp_path / "home" / "collections" / "shop" / "enclip.json").read_text())
    assert spec["hnsw"] is False
