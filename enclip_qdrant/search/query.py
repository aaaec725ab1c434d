"""ENCLIP search: encode the query with every member, route it to its likely clusters, and run ONE
fused Qdrant query (a prefetch per member, RRF or DBSF) restricted to those clusters. When the collection
has a sparse text vector and the query has text, that vector is one more prefetch in the same call (hybrid).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from enclip_qdrant.bundle.labels import manifest_labels
from enclip_qdrant.bundle.manifest import Bundle
from enclip_qdrant.catalog.images import DEFAULT_BOUND, ImageRejected, image_bound, load_image
from enclip_qdrant.collection.meta import read_meta
from enclip_qdrant.collection.text import TextRecipe
from enclip_qdrant.errors import QueryError
from enclip_qdrant.search.filters import FieldKinds, typed_filters
from enclip_qdrant.search.labels import label_response
from enclip_qdrant.search.options import SearchOptions, parse_clusters
from enclip_qdrant.search.routing import choose_clusters
from enclip_qdrant.store import Fusion, Hit, QueryVector, SearchFilter, Store
from enclip_qdrant.store.common import dbsf_normalise, rrf_score


@dataclass
class Result:
    rank: int
    id: str
    score: float
    cluster: int | None
    payload: dict[str, Any]
    member_ranks: dict[str, int | None] | None = None  # filled by explain: each list's own rank (1-based)
    shares: dict[str, float] | None = None  # filled by explain: each list's share of the fused score
    cluster_label: str | None = None  # the cluster's readable name (labels.py), when the bundle has labels

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        """Built by hand, not `asdict`: asdict deep-copies every payload, which cost the query service ~1.3 ms
        of GIL time per query (cProfile, 10 results of fashion-dev). Payload values are JSON scalars and
        lists straight from the store, so a shallow copy detaches them enough."""
        d: dict[str, Any] = {"rank": self.rank, "id": self.payload.get("product_id", self.id), "score": self.score,
                             "cluster": self.cluster, "payload": dict(self.payload)}
        if explain:
            d["member_ranks"] = None if self.member_ranks is None else dict(self.member_ranks)
            d["shares"] = None if self.shares is None else dict(self.shares)
        d["cluster_label"] = self.cluster_label
        d["point_id"] = self.id
        return d


@dataclass
class SearchResponse:
    query: dict[str, Any]
    clusters: list[dict[str, float]]  # [{"id": 3, "p": 0.71}, ...]; empty when searching all
    results: list[Result]
    timings_ms: dict[str, float] = field(default_factory=dict)
    catalog_root: str | None = None  # where relative image paths in the payloads resolve (the contact sheet)

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        return {"query": self.query, "clusters": self.clusters, "results": [r.to_dict(explain) for r in self.results]}


class QueryEncoder(Protocol):
    """What encodes queries: a Bundle itself, or the query service's micro-batcher in front of it."""

    def embed_texts(self, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]: ...

    def embed_images(self, images: list[Image.Image]) -> tuple[dict[str, np.ndarray], np.ndarray]: ...


@dataclass
class EncodedQuery:
    vectors: dict[str, np.ndarray]  # per member, unit length
    cluster_probs: np.ndarray


def load_query_image(path: str | Path, bound: int | None = DEFAULT_BOUND) -> Image.Image:
    """The `--image` query, decoded with the same bounds as catalog images (bombs, FIFOs: one line)."""
    try:
        return load_image(path, bound)
    except ImageRejected as e:
        if e.reason == "missing image":
            raise QueryError(f"query image not found: {path}") from None
        raise QueryError(f"cannot read query image {path}: {e}") from None


def encode_query(bundle: Bundle, text: str | None = None, image: Image.Image | None = None, *,
                 encoder: QueryEncoder | None = None) -> EncodedQuery:
    """Text, image, or both (the members' two unit vectors are summed and renormalised).
    `encoder`: who runs the members (default the bundle; the service passes its micro-batcher)."""
    text = (text or "").strip() or None
    if text is None and image is None:
        raise QueryError("empty query: give some text or --image")
    enc = encoder or bundle
    parts: list[dict[str, np.ndarray]] = []
    probs: list[np.ndarray] = []
    if text is not None:
        per, joint = enc.embed_texts([text])
        parts.append(per)
        probs.append(bundle.clusters.text_router.probs(joint)[0])
    if image is not None:
        per, joint = enc.embed_images([image])
        parts.append(per)
        probs.append(bundle.clusters.image_router.probs(joint)[0])
    vectors = {}
    for name in bundle.vectors:
        v = np.sum([p[name][0] for p in parts], axis=0)
        vectors[name] = v / max(float(np.linalg.norm(v)), 1e-12)
    return EncodedQuery(vectors, np.mean(probs, axis=0))


def hybrid_vectors(vectors: Mapping[str, np.ndarray], text: str | None, recipe: TextRecipe | None,
                   text_weight: float, fusion: Fusion = "rrf",
                   ) -> tuple[dict[str, QueryVector], dict[str, float] | None]:
    """The query's prefetch vectors: the members' dense ones, plus the sparse text vector when the collection
    has one, the query has words and `text_weight` > 0; and the RRF weights (None: all weigh 1).

    `text_weight` W weighs the text list against the whole ensemble, not one member: its RRF weight is W x the
    number of members, and a weight multiplies that list's RRF terms (w / (k + p), store.base.RRF_K), so W = 1
    gives words and pictures an equal say however many members vote. DBSF has no weights: there the text
    counts as one member. Figures: BENCHMARKS.md, "Fusion"."""
    out: dict[str, QueryVector] = dict(vectors)
    sparse = recipe.query(text) if recipe is not None and text_weight > 0 else None
    if recipe is None or sparse is None:
        return out, None
    out[recipe.vector] = sparse
    weight = float(text_weight) * max(1, len(vectors))
    return out, ({recipe.vector: weight} if fusion == "rrf" and weight != 1.0 else None)


def collection_recipe(store: Store, collection: str) -> TextRecipe | None:
    """The text recipe recorded by the collection (None: no text vector, dense-only as before)."""
    return read_meta(store, collection).text_recipe()


@dataclass
class QueryPlan:
    """What one query sends to Qdrant: its encoding, the routed clusters, the filter and the prefetch vectors.
    `search` runs it; the service's /v1/encode hands it to applications as a Query API body."""

    encoded: EncodedQuery
    chosen: list[tuple[int, float]]  # (cluster, probability); empty: every cluster
    filter: SearchFilter | None
    vectors: dict[str, QueryVector]  # the members' dense vectors, plus the sparse text vector in hybrid search
    weights: dict[str, float] | None  # RRF weights (None: all weigh 1)
    vector_filters: dict[str, SearchFilter | None] = field(default_factory=dict)  # the text list's own filter


def plan_query(bundle: Bundle, store: Store, collection: str, text: str | None, image: Image.Image | None, *,
               options: SearchOptions | None = None, filters: Mapping[str, Sequence[Any]] | None = None,
               encoder: QueryEncoder | None = None, recipe: TextRecipe | None | str = "auto",
               field_kinds: FieldKinds | None = None) -> QueryPlan:
    """Encode, route and build the prefetches, the same way for `search` and for /v1/encode.
    `field_kinds`: the collection's filter field types when the caller keeps them (`FieldKinds`)."""
    o = options or SearchOptions()
    typed = typed_filters(store, collection, filters or {}, field_kinds)  # before encoding: a bad filter is cheap
    q = encode_query(bundle, text, image, encoder=encoder)
    mode = parse_clusters(o.clusters)
    chosen = choose_clusters(bundle, q.cluster_probs, mode, o.threshold, o.max_clusters)
    flt = SearchFilter(clusters=[c for c, _ in chosen] or None, fields=typed)
    if recipe == "auto":
        recipe = collection_recipe(store, collection) if text and text.strip() and o.text_weight > 0 else None
    vectors, weights = hybrid_vectors(q.vectors, text, recipe if isinstance(recipe, TextRecipe) else None,
                                      o.text_weight, o.fusion)
    shared = None if flt.is_empty() else flt
    # clusters named by the caller restrict every list; only routing's guess leaves the words free
    own = text_filters(vectors, q.vectors, shared) if mode == "auto" else {}
    return QueryPlan(q, chosen, shared, vectors, weights, own)


def text_filters(vectors: Mapping[str, QueryVector], dense: Mapping[str, Any],
                 flt: SearchFilter | None) -> dict[str, SearchFilter | None]:
    """Routing (`--clusters auto`) restricts what the members may propose; the text list searches every
    cluster (under the same field filters): a shopper's words find their products wherever the image clusters
    put them. Held out, this keeps routing for the pictures at no cost to word queries (BENCHMARKS.md, "Fusion")."""
    if flt is None or flt.clusters is None:
        return {}
    own = SearchFilter(fields=flt.fields)
    return {name: None if own.is_empty() else own for name in vectors if name not in dense}


def explain_results(results: Sequence[Result], per: Mapping[str, Sequence[Hit]], fusion: Fusion,
                    weights: Mapping[str, float] | None) -> None:
    """Fill each result's per-list rank and each list's share of its fused score, from the same lists the fused
    query fused: RRF terms w / (k + p) (store.base.RRF_K), or DBSF's normalised scores."""
    terms: dict[str, dict[str, float]] = {}
    for name, hits in per.items():
        if fusion == "dbsf":
            terms[name] = dict(zip((h.id for h in hits), dbsf_normalise([h.score for h in hits]), strict=True))
        else:
            w = float((weights or {}).get(name, 1.0))
            terms[name] = {h.id: rrf_score(p, w) for p, h in enumerate(hits)}
    ranks = {name: {h.id: r + 1 for r, h in enumerate(hits)} for name, hits in per.items()}
    for r in results:
        r.member_ranks = {name: ranks[name].get(r.id) for name in ranks}
        total = sum(terms[name].get(r.id, 0.0) for name in terms)
        r.shares = {name: round(terms[name].get(r.id, 0.0) / total, 4) if total else 0.0 for name in terms}


def search(bundle: Bundle, store: Store, collection: str, text: str | None = None, *,
           image: str | Path | Image.Image | None = None, options: SearchOptions | None = None,
           filters: Mapping[str, Sequence[Any]] | None = None, encoder: QueryEncoder | None = None,
           recipe: TextRecipe | None | str = "auto", field_kinds: FieldKinds | None = None) -> SearchResponse:
    """`options`: how to search (`SearchOptions`, checked when built). `recipe`: the collection's text recipe
    when the caller has it cached ("auto": read from the collection's metadata when the query has text).
    `field_kinds`: the collection's filter field types when the caller keeps them."""
    o = options or SearchOptions()
    t0 = time.perf_counter()
    pil = load_query_image(image, image_bound(bundle)) if isinstance(image, (str, Path)) else image
    plan = plan_query(bundle, store, collection, text, pil, options=o, filters=filters, encoder=encoder,
                      recipe=recipe, field_kinds=field_kinds)
    q, chosen, vectors = plan.encoded, plan.chosen, plan.vectors
    t1 = time.perf_counter()
    hits = store.query_fused(collection, vectors, limit=o.top_k, prefetch_limit=o.top_k * o.oversample,
                             fusion=o.fusion, filter=plan.filter, weights=plan.weights,
                             vector_filters=plan.vector_filters, params=o.search_params())
    t2 = time.perf_counter()
    results = [Result(i + 1, h.id, h.score, h.payload.get("cluster"), h.payload) for i, h in enumerate(hits)]
    if o.explain:
        per = store.query_each(collection, vectors, limit=o.top_k * o.oversample, filter=plan.filter,
                               vector_filters=plan.vector_filters, params=o.search_params())
        explain_results(results, per, o.fusion, plan.weights)
    query = {"text": text, "image": str(image) if isinstance(image, (str, Path)) else None, "top_k": o.top_k,
             "fusion": o.fusion, "filters": {k: list(v) for k, v in (filters or {}).items()},
             "text_vector": len(vectors) > len(q.vectors)}
    response = SearchResponse(query, [{"id": c, "p": round(p, 4)} for c, p in chosen], results,
                              {"encode": round((t1 - t0) * 1e3, 2), "search": round((t2 - t1) * 1e3, 2)})
    return label_response(response, manifest_labels(bundle.manifest))  # readable cluster names, when stored
