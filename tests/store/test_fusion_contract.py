"""Fusion contract: what every store returns for a fused query equals the fusion computed here, by hand, from the
per-prefetch lists, with the documented formulas (store/base.py, RRF_K):

- RRF: a point at 0-based position p of a list with weight w scores w / (k + p), summed over lists;
- DBSF: each list's scores normalised by (s - (mean - 3 sd)) / (6 sd) (sample sd; one point: 0.5), summed.

Shapes are the project's: five dense named vectors plus the sparse text vector, prefetch limits 10-100,
thousands of points, with and without the cluster filter and a payload filter. The per-list lists come from
`query_each` (plain nearest-neighbour searches, no fusion), and the dense ones are checked against numpy's
exact cosine ranking, so the reference does not lean on the code under test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from qdrant_server import SERVER_VARIANTS, server_store

from enclip_qdrant.search.query import hybrid_vectors
from enclip_qdrant.store import (
    CollectionSpec,
    EdgeStore,
    Hit,
    PointRecord,
    SearchFilter,
    ServerStore,
    SparseVec,
    Store,
)
from enclip_qdrant.store.base import RRF_K

MEMBERS = {f"m{i}": 16 for i in range(5)}
TEXT = "text_bm25"
N = 2500
COLOURS = ("Red", "Blue", "Black", "White")
SPEC = CollectionSpec(vectors=MEMBERS, sparse_vectors=[TEXT],
                      indexed_fields={"cluster": "integer", "baseColour": "keyword"})
FILTERS = {
    "none": None,
    "clusters": SearchFilter(clusters=[1, 4]),
    "clusters+field": SearchFilter(clusters=[0, 2, 5], fields={"baseColour": ["Red", "Black"]}),
}
# the default query's shape: members routed, the text list over every cluster (field filters kept)
OWN = {"none": None, "clusters": {TEXT: None}, "clusters+field": {TEXT: SearchFilter(fields={"baseColour": ["Red"]})}}
# name -> (fusion, weights): every fusion and weight form the CLI, library and service can send. The library sends
# {text: --text-weight x members}; 5 is the default (1 x 5 members), 2.5 and 10 are --text-weight 0.5 and 2.
WEIGHTINGS: dict[str, tuple[str, dict[str, float] | None]] = {
    "rrf": ("rrf", None),
    "rrf text x5 (default)": ("rrf", {TEXT: 5.0}),
    "rrf text x2.5": ("rrf", {TEXT: 2.5}),
    "rrf text x10": ("rrf", {TEXT: 10.0}),
    "rrf text x0.5, m1 x2": ("rrf", {TEXT: 0.5, "m1": 2.0}),
    "dbsf": ("dbsf", None),
}
TOP = 10


def _points(seed: int = 0) -> list[PointRecord]:
    """Members that agree a little (a shared latent plus member noise, as members trained on one catalog do)
    and a sparse text vector over a small vocabulary, so lists overlap and fusion has something to decide."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(N, 16))
    out = []
    for i in range(N):
        vecs = {k: (latent[i] + rng.normal(size=16)).astype(np.float32) for k in MEMBERS}
        words = sorted({int(w) for w in rng.choice(60, size=4)})
        sparse = {TEXT: SparseVec(words, [float(x) for x in rng.uniform(0.5, 2.0, size=len(words))])} if i % 9 else {}
        out.append(PointRecord(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"fusion-{i}")), vectors=vecs,
                               payload={"cluster": i % 7, "baseColour": COLOURS[i % 4]}, sparse=sparse))
    return out


POINTS = _points()


def _queries(n: int = 2, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{**{k: rng.normal(size=16).astype(np.float32) for k in MEMBERS},
             TEXT: SparseVec([int(w) for w in sorted(rng.choice(60, size=3, replace=False))], [1.0, 1.0, 1.0])}
            for _ in range(n)]


QUERIES = _queries()


@pytest.fixture(scope="module", params=["edge", "memory", *SERVER_VARIANTS])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str]]:
    if request.param == "edge":
        store: Store = EdgeStore(tmp_path_factory.mktemp("fusion") / "home")
    elif request.param == "memory":
        store = ServerStore(":memory:")
    else:
        store = server_store(request, request.param, timeout=30)
    name = f"enclip-fusion-{uuid.uuid4().hex[:8]}"
    store.create(name, SPEC)
    for i in range(0, N, 500):
        store.upsert(name, POINTS[i:i + 500])
    yield store, name
    store.drop(name)
    store.close()


def rrf_reference(lists: Mapping[str, list[Hit]], weights: Mapping[str, float] | None) -> dict[str, float]:
    scores: dict[str, float] = {}
    for name, hits in lists.items():
        w = float((weights or {}).get(name, 1.0))
        for p, h in enumerate(hits):
            scores[h.id] = scores.get(h.id, 0.0) + w / (RRF_K + p)
    return scores


def dbsf_reference(lists: Mapping[str, list[Hit]]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for hits in lists.values():
        s = np.array([h.score for h in hits], dtype=np.float64)
        if len(s) == 1:
            norm = np.array([0.5])
        elif len(s) == 0:
            continue
        else:
            mean, sd = s.mean(), s.std(ddof=1)
            norm = np.full(len(s), 0.5) if sd == 0 else (s - (mean - 3 * sd)) / (6 * sd)
        for h, v in zip(hits, norm, strict=True):
            scores[h.id] = scores.get(h.id, 0.0) + float(v)
    return scores


def assert_same_ranking(got: list[Hit], reference: dict[str, float], tol: float = 1e-5) -> None:
    """Equal top lists: the same score at every position, and the same point up to exact ties of the formula
    (which the store breaks by id; a tie in exact arithmetic can differ by a rounding step in float32)."""
    ranked = sorted(reference.items(), key=lambda kv: (-kv[1], kv[0]))
    want = ranked[:len(got)]
    assert len(got) == min(TOP, len(ranked))
    for pos, (h, (rid, rscore)) in enumerate(zip(got, want, strict=True)):
        assert abs(h.score - rscore) <= tol * max(1.0, abs(rscore)), (pos, h.score, rscore)
        if h.id != rid:
            tied = {i for i, s in ranked if abs(s - rscore) <= tol * max(1.0, abs(rscore))}
            assert h.id in tied and rid in tied, f"position {pos}: got {h.id} ({h.score}), want {rid} ({rscore})"


def _numpy_top(query: np.ndarray, name: str, flt: SearchFilter | None, limit: int) -> list[str]:
    q = query / np.linalg.norm(query)
    keep = [p for p in POINTS if _matches(p, flt)]
    mat = np.stack([np.asarray(p.vectors[name], dtype=np.float64) for p in keep])
    sims = mat @ q / np.linalg.norm(mat, axis=1)
    return [keep[i].id for i in np.argsort(-sims)[:limit]]


def _matches(p: PointRecord, flt: SearchFilter | None) -> bool:
    if flt is None:
        return True
    if flt.clusters is not None and p.payload["cluster"] not in flt.clusters:
        return False
    return all(p.payload.get(k) in v for k, v in flt.fields.items())


@pytest.mark.parametrize("limit", [10, 50, 100])
@pytest.mark.parametrize("flt_name", list(FILTERS))
@pytest.mark.parametrize("own", [False, True], ids=["one filter", "text's own filter"])
@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_fused_equals_the_hand_computed_fusion(filled: tuple[Store, str], limit: int, flt_name: str, own: bool,
                                               weighting: str) -> None:
    store, name = filled
    fusion, weights = WEIGHTINGS[weighting]
    flt = FILTERS[flt_name]
    vector_filters = OWN[flt_name] if own else None
    if own and vector_filters is None:
        pytest.skip("no filter to differ from")
    for query in QUERIES:
        got = store.query_fused(name, query, limit=TOP, prefetch_limit=limit, fusion=fusion,  # type: ignore[arg-type]
                                filter=flt, weights=weights, vector_filters=vector_filters)
        lists = store.query_each(name, query, limit=limit, filter=flt, vector_filters=vector_filters)
        if vector_filters:  # the text list really searched under its own filter
            assert [h.id for h in lists[TEXT]] == [h.id for h in store.query_each(
                name, {TEXT: query[TEXT]}, limit=limit, filter=vector_filters[TEXT])[TEXT]]
        ref = dbsf_reference(lists) if fusion == "dbsf" else rrf_reference(lists, weights)
        assert_same_ranking(got, ref)


@pytest.mark.parametrize("flt_name", list(FILTERS))
def test_the_per_list_inputs_are_exact_nearest_neighbours(filled: tuple[Store, str], flt_name: str) -> None:
    """The reference's dense lists are numpy's exact cosine top 50 (ids and order), not just the engine's word."""
    store, name = filled
    flt = FILTERS[flt_name]
    lists = store.query_each(name, QUERIES[0], limit=50, filter=flt)
    for member in MEMBERS:
        assert [h.id for h in lists[member]] == _numpy_top(QUERIES[0][member], member, flt, 50)


def test_the_weight_multiplies_as_documented(filled: tuple[Store, str]) -> None:
    """The README's promise in numbers: with 5 members, --text-weight 1 gives the text list as much say as all
    the members together; a point first in the text list alone outscores a point 10th in every member list only
    when the weight really multiplies (Qdrant's rank-dividing weight 5 would give it 1/60.2 vs 5/69)."""
    store, name = filled
    query = QUERIES[0]
    lists = store.query_each(name, query, limit=50)
    only_text = [h.id for h in lists[TEXT] if all(h.id not in {x.id for x in lists[m]} for m in MEMBERS)]
    got = store.query_fused(name, query, limit=50, prefetch_limit=50, weights={TEXT: 5.0})
    top_text = only_text[0]
    score = {h.id: h.score for h in got}[top_text]
    pos = [h.id for h in lists[TEXT]].index(top_text)
    assert score == pytest.approx(5.0 / (RRF_K + pos), rel=1e-5)


def test_library_text_weight_is_members_times_the_option() -> None:
    """`--text-weight W` sends the text list's weight W x (number of members): 1 gives words and pictures an
    equal say however many members vote; 0 leaves the text list out."""
    from enclip_qdrant.collection.text import TextRecipe

    dense = {k: np.ones(16, dtype=np.float32) for k in MEMBERS}
    recipe = TextRecipe()
    for w in (0.5, 1.0, 2.0):
        vectors, weights = hybrid_vectors(dense, "red dress", recipe, w)
        assert weights == {recipe.vector: w * len(MEMBERS)} and recipe.vector in vectors
    vectors, weights = hybrid_vectors(dense, "red dress", recipe, 0.0)
    assert weights is None and set(vectors) == set(MEMBERS)


def test_identical_queries_rank_identically(filled: tuple[Store, str]) -> None:
    """Fusion scores tie often; the store breaks ties by point id, so repeating a query repeats its ranking."""
    store, name = filled
    runs = {tuple(h.id for h in store.query_fused(name, QUERIES[1], limit=TOP, prefetch_limit=10,
                                                  weights={TEXT: 5.0})) for _ in range(5)}
    assert len(runs) == 1
    got = store.query_fused(name, QUERIES[1], limit=TOP, prefetch_limit=10)
    assert [(-h.score, h.id) for h in got] == sorted((-h.score, h.id) for h in got)


def test_encode_body_ranks_as_search(filled: tuple[Store, str]) -> None:
    """The Query API body the service hands applications (`fused_query_request`) ranks what `query_fused` ranks,
    weights included, when sent to the same collection by qdrant-client (on the server-backed stores)."""
    from qdrant_client import models

    from enclip_qdrant.store.server import fused_query_request

    store, name = filled
    if not isinstance(store, ServerStore):
        pytest.skip("the body is sent by qdrant-client: server-backed stores only")
    for weights in (None, {TEXT: 5.0}):
        body = fused_query_request(QUERIES[0], limit=TOP, prefetch_limit=40, weights=weights)
        request = models.QueryRequest.model_validate(body.model_dump(mode="json", exclude_none=True))
        res = store.client.query_points(name, prefetch=request.prefetch, query=request.query, limit=TOP + 16,
                                        with_payload=False)
        ref = {str(p.id): p.score for p in res.points}
        assert_same_ranking(store.query_fused(name, QUERIES[0], limit=TOP, prefetch_limit=40, weights=weights), ref)
