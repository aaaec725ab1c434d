"""Held-out evaluation: does the ensemble with cluster routing beat a single CLIP on *this* catalog?

A seeded share of the products is held out, the ensemble is trained on the rest (or a given bundle is
checked never to have seen them), and the held-out products are indexed into a throw-away embedded
collection. Every ranking (each member alone, the fused ensemble, the ensemble with routing) answers
the same queries on the same split; each query is encoded once and its vectors reused for every row,
so the latency column is the store's search time alone.

    from enclip_qdrant.evaluation import evaluate
    print(evaluate("./shop", config=TrainConfig(members=3, preset="tiny")).to_markdown())
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from enclip_qdrant.bundle.manifest import Bundle, seen_product_ids
from enclip_qdrant.bundle.names import MANIFEST
from enclip_qdrant.catalog.model import Catalog, Product
from enclip_qdrant.catalog.open import open_catalog
from enclip_qdrant.collection.meta import read_meta
from enclip_qdrant.collection.points import point_id
from enclip_qdrant.collection.text import TextRecipe
from enclip_qdrant.engine.load import load_bundle
from enclip_qdrant.errors import BundleError, CatalogError, QueryError
from enclip_qdrant.evaluation.metrics import ndcg_at
from enclip_qdrant.evaluation.protocol import ProtocolRow, read_protocol, restrict
from enclip_qdrant.evaluation.protocol import score as protocol_score
from enclip_qdrant.evaluation.queries import (
    KEYWORDS,
    QUERIES,
    TITLES,
    TYPE_FIELD,
    EvalQuery,
    _same,
    chance_recall,
    file_queries,
    keyword_queries,
    read_queries,
    split_test,
    title_queries,
)
from enclip_qdrant.evaluation.report import EvalReport, EvalRow, QuerySetInfo, RowKind
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.progress import NullProgress, Progress
from enclip_qdrant.search.options import (
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_OVERSAMPLE,
    DEFAULT_TEXT_WEIGHT,
    DEFAULT_THRESHOLD,
)
from enclip_qdrant.search.query import EncodedQuery, encode_query, hybrid_vectors, text_filters
from enclip_qdrant.search.routing import route
from enclip_qdrant.store import EdgeStore, Hit, SearchFilter, SearchParams, Store
from enclip_qdrant.training.config import TrainConfig

COLLECTION = "enclip-eval"
# Rankings are scored on the exact neighbours, so a figure measures the model, never an index's approximation.
EXACT = SearchParams(exact=True)
# --text-weight values the hybrid rows try (the BM25 list's RRF weight is this x the number of members).
HYBRID_WEIGHTS = (DEFAULT_TEXT_WEIGHT, 1.0, 4.0)


@dataclass(frozen=True)
class _Ranking:
    name: str
    kind: RowKind
    fusion: Literal["rrf", "dbsf"] | None = None  # None: a member's own nearest-neighbour search
    member: str | None = None
    routing: tuple[float, int] | None = None  # (threshold, max_clusters)
    text_weight: float | None = None  # hybrid rows: the BM25 prefetch's RRF weight


def _row(query_set: str, ranking: _Ranking, queries: Sequence[EvalQuery], results: Sequence[list[str]],
         searched: Sequence[list[int] | None], latencies: Sequence[float], cluster_of: Mapping[str, int],
         by_id: Mapping[str, Product], ks: Sequence[int], top_k: int) -> EvalRow:
    first, ndcg, precision, type_precision, routed_ok = [], [], [], [], []
    for q, ids, clusters in zip(queries, results, searched, strict=True):
        flags = [i in q.relevant for i in ids[:top_k]]
        first.append(flags.index(True) + 1 if any(flags) else math.inf)
        ndcg.append(ndcg_at(flags, len(q.relevant), top_k))
        if q.attributes:
            precision.append(sum(all(_same(by_id[i].fields.get(a), v) for a, v in q.attributes.items())
                                 for i in ids[:top_k]) / top_k)
        if TYPE_FIELD in q.attributes:
            want = q.attributes[TYPE_FIELD]
            type_precision.append(sum(_same(by_id[i].fields.get(TYPE_FIELD), want) for i in ids[:top_k]) / top_k)
        if clusters is not None:
            routed_ok.append(_target_cluster(q, cluster_of) in clusters)
    ranks = np.array(first)
    return EvalRow(
        query_set=query_set, ranking=ranking.name, kind=ranking.kind, queries=len(queries),
        recall={k: float(np.mean(ranks <= k)) for k in ks}, mrr=float(np.mean(1.0 / ranks)),
        ndcg=float(np.mean(ndcg)), attribute_precision=float(np.mean(precision)) if precision else None,
        routing_accuracy=float(np.mean(routed_ok)) if routed_ok else None,
        clusters_searched=float(np.mean([len(c) for c in searched if c is not None]))
        if ranking.routing else None,
        latency_ms=round(float(np.mean(latencies)) * 1e3, 3),
        type_precision=float(np.mean(type_precision)) if type_precision else None)


def _target_cluster(q: EvalQuery, cluster_of: Mapping[str, int]) -> int:
    """The cluster the answer lives in: the title's own product's, else where most relevant products are."""
    if q.target is not None:
        return cluster_of[q.target.id]
    counts = Counter(cluster_of[i] for i in q.relevant)
    return min(counts, key=lambda c: (-counts[c], c))


# --------------------------------------------------------------------------- the run


def rankings(bundle: Bundle) -> list[_Ranking]:
    """Every member alone, the fused ensemble over all clusters, and the RRF ensemble restricted to the
    query's most likely cluster (top-1) or to the clusters `search` picks by default (p>=0.8, at most 3)."""
    out = [_Ranking(f"member {name}", "member", member=name) for name in bundle.vectors]
    out += [_Ranking("ensemble RRF", "ensemble", "rrf"), _Ranking("ensemble DBSF", "ensemble", "dbsf"),
            _Ranking("routed top-1", "routed", "rrf", routing=(0.0, 1)),
            _Ranking(f"routed p>={DEFAULT_THRESHOLD:g}", "routed", "rrf",
                     routing=(DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS))]
    return out


def hybrid_rankings(recipe: TextRecipe | None) -> list[_Ranking]:
    """The RRF ensemble plus the BM25 text prefetch (same single query), unrouted and routed, at a few weights;
    none when the collection has no text vector. Only for query sets whose words are not a product's own title."""
    if recipe is None:
        return []
    out = []
    for w in HYBRID_WEIGHTS:
        tag = "" if w == DEFAULT_TEXT_WEIGHT else f" w={w:g}"
        out += [_Ranking(f"hybrid RRF{tag}", "hybrid", "rrf", text_weight=w),
                _Ranking(f"hybrid routed p>={DEFAULT_THRESHOLD:g}{tag}", "hybrid", "rrf",
                         routing=(DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS), text_weight=w)]
    return out


DEFAULT_QUERY = "default query"


def protocol_rankings(bundle: Bundle, recipe: TextRecipe | None) -> list[_Ranking]:
    """What the public protocol scores: each member alone, the ensemble dense-only (RRF, DBSF), and the default
    query (`query TEXT` as shipped: hybrid when the collection has a text vector, routed)."""
    out = [_Ranking(f"member {name}", "member", member=name) for name in bundle.vectors]
    out += [_Ranking("ensemble RRF", "ensemble", "rrf"), _Ranking("ensemble DBSF", "ensemble", "dbsf")]
    if recipe is not None:
        out.append(_Ranking("hybrid RRF (all clusters)", "hybrid", "rrf", text_weight=DEFAULT_TEXT_WEIGHT))
    out.append(_Ranking(DEFAULT_QUERY, "hybrid" if recipe is not None else "routed", "rrf",
                        routing=(DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS),
                        text_weight=DEFAULT_TEXT_WEIGHT if recipe is not None else None))
    return out


def _run(store: Store, bundle: Bundle, ranking: _Ranking, q: EncodedQuery, top_k: int, text: str = "",
         recipe: TextRecipe | None = None) -> tuple[list[Hit], list[int] | None, float]:
    """One ranking for one encoded query: (hits, clusters searched or None when unrouted, search seconds)."""
    clusters: list[int] | None = None
    if ranking.routing is not None:
        threshold, max_clusters = ranking.routing
        clusters = [c for c, _ in route(q.cluster_probs, threshold, max_clusters)]
    flt = SearchFilter(clusters=clusters) if clusters is not None else None
    t0 = time.perf_counter()
    if ranking.member is not None:
        hits = store.query_each(COLLECTION, {ranking.member: q.vectors[ranking.member]}, limit=top_k,
                                params=EXACT)[ranking.member]
    else:
        vectors, weights = hybrid_vectors(q.vectors, text, recipe, ranking.text_weight or 0.0, ranking.fusion or "rrf")
        hits = store.query_fused(COLLECTION, vectors, limit=top_k, prefetch_limit=top_k * DEFAULT_OVERSAMPLE,
                                 fusion=ranking.fusion or "rrf", filter=flt, weights=weights,
                                 vector_filters=text_filters(vectors, q.vectors, flt), params=EXACT)
    return hits, clusters, time.perf_counter() - t0


def train_dir(workdir: Path, train_catalog: Catalog, config: TrainConfig) -> Path:
    """One folder per (training products, settings): re-running an interrupted evaluation resumes its training."""
    settings = config.resolved().to_dict()
    for k in ("device", "loader_workers"):  # where it runs, not what it learns: older folders keep their key
        settings.pop(k, None)
    key = json.dumps([train_catalog.fingerprint(), settings], sort_keys=True, default=str)
    return workdir / f"bundle-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def evaluate(catalog: str | Path | Catalog, *, bundle: str | Path | Bundle | None = None,
             config: TrainConfig | None = None, test_fraction: float | None = None, seed: int = 0,
             queries_file: str | Path | None = None, top_k: int = 10, workdir: str | Path | None = None,
             columns: Mapping[str, str | None] | None = None, progress: Progress | None = None,
             protocol: str | Path | None = None, device: str = "auto") -> EvalReport:
    """Train on a seeded split (or check `bundle` never saw it), then score every ranking on the held-out rest.

    `test_fraction`: share held out; None: 0.2 when training, the whole catalog (1) with a given `bundle`
    (a new catalog the bundle never saw). `workdir` keeps the trained bundle (re-running resumes it); without
    one it lives in a temporary folder. `protocol`: a folder of public ground truth (protocol.py) scored too.
    `device`: where the bundle encodes (and, without `config`, where it trains).
    """
    if test_fraction is None:
        test_fraction = 1.0 if bundle is not None else 0.2
    progress = progress or NullProgress()
    if top_k < 1:
        raise QueryError("--top-k must be at least 1")
    t_start = time.perf_counter()
    cat = open_catalog(catalog, columns, True, progress)
    train_ids, test_ids = split_test(cat.products, test_fraction, seed, whole=bundle is not None)
    test_set = set(test_ids)
    by_id = {p.id: p for p in cat.products}
    test = [by_id[i] for i in sorted(test_ids)]
    spec = read_queries(queries_file, cat) if queries_file is not None else None
    tasks = read_protocol(protocol) if protocol is not None else []

    tmp = Path(tempfile.mkdtemp(prefix="enclip-eval-"))
    try:
        seconds: dict[str, float] = {}
        n_train: int | None = None
        t0 = time.perf_counter()
        if bundle is not None:
            b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, device=device)
            seen = seen_product_ids(b.path) & test_set
            if seen:
                raise BundleError(
                    f"bundle {b.fingerprint} ({b.path}) was trained on {len(seen)} of the {len(test_ids)} test "
                    f"products, so it would be graded on answers it has seen. Evaluate without a bundle (one is "
                    f"trained on the rest of the catalog), or pass the bundle an earlier evaluation trained with "
                    f"its --seed and --test-fraction (given explicitly: with --bundle the default is the whole "
                    f"catalog)")
            trained, kept = False, str(b.path)
        else:
            config = config or TrainConfig(device=device)
            train_cat = dataclasses.replace(cat, products=[p for p in cat.products if p.id not in test_set])
            out = train_dir(Path(workdir) if workdir else tmp, train_cat, config)
            progress.log(f"training on {len(train_ids)} products, holding out {len(test_ids)} for the test")
            if (out / MANIFEST).is_file():
                b = load_bundle(out, device=device)
            else:  # the bundle train returns is the one it just wrote: not loaded (and hashed) a second time
                # imported here: only training needs torch, so `eval --bundle` runs on the ONNX engine without it
                from enclip_qdrant.training.run import train

                b = train(train_cat, out, config, progress)
            trained, kept = True, str(out) if workdir else None
            n_train = len(train_ids)
        seconds["train"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        store = EdgeStore(tmp / "store")
        try:
            test_cat = dataclasses.replace(cat, products=test, skipped=[])
            indexed = index_catalog(test_cat, b, store, COLLECTION, progress=progress)
            if indexed.failed:
                raise CatalogError(f"{len(indexed.failed)} test images could not be read while indexing "
                                   f"(first: {indexed.failed[0][0]}: {indexed.failed[0][1]})")
            pid_of = {point_id(p.id): p.id for p in test}
            cluster_of = {pid_of[pid]: int(p["cluster"]) for pid, p in store.scroll(COLLECTION, ["cluster"])}
            seconds["index"] = round(time.perf_counter() - t0, 2)

            sets = {TITLES: title_queries(test)}
            skipped = {TITLES: 0}
            keywords = keyword_queries(test)
            if keywords:
                sets[KEYWORDS], skipped[KEYWORDS] = keywords, 0
            if spec is not None:
                sets[QUERIES], skipped[QUERIES] = file_queries(spec, test)
                if not sets[QUERIES]:
                    raise QueryError(f"no query in {queries_file} has a relevant product among the "
                                     f"{len(test)} test products")
            ks = [k for k in (1, 5, 10) if k < top_k] + [top_k]
            gt = {t.name: restrict(t, test_ids) for t in tasks}

            t0 = time.perf_counter()
            texts = list(dict.fromkeys([q.text for qs in sets.values() for q in qs]
                                       + [q for queries in gt.values() for q in queries]))
            encoded: dict[str, EncodedQuery] = {}
            task = progress.task("encoding queries", total=len(texts))
            for text in texts:
                encoded[text] = encode_query(b, text)
                task.advance()
            task.close()
            encode_ms = round((time.perf_counter() - t0) * 1e3 / max(1, len(texts)), 3)

            rows: list[EvalRow] = []
            recipe = read_meta(store, COLLECTION).text_recipe()
            # Title queries stay dense-only: a title found by its own words proves nothing.
            plans = {name: rankings(b) + (hybrid_rankings(recipe) if name != TITLES else []) for name in sets}
            task = progress.task("searching", total=sum(len(plans[n]) * len(qs) for n, qs in sets.items()))
            for name, qs in sets.items():
                for ranking in plans[name]:
                    results, searched, lat = [], [], []
                    for q in qs:
                        hits, clusters, s = _run(store, b, ranking, encoded[q.text], top_k, q.text, recipe)
                        results.append([str(h.payload.get("product_id")) for h in hits])
                        searched.append(clusters)
                        lat.append(s)
                        task.advance()
                    rows.append(_row(name, ranking, qs, results, searched, lat, cluster_of, by_id, ks, top_k))
            task.close()
            protocol_rows = _protocol_rows(store, b, gt, encoded, recipe, top_k, progress)
            seconds["queries"] = round(time.perf_counter() - t0, 2)
            store.delete_alias(COLLECTION)  # the name is an alias: drop refuses what one serves
            store.drop(indexed.physical)
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds["total"] = round(time.perf_counter() - t_start, 2)

    return EvalReport(
        catalog=str(cat.root), bundle_fingerprint=b.fingerprint, bundle_path=kept, trained=trained, seed=seed,
        test_fraction=test_fraction, top_k=top_k, train_products=n_train, test_products=len(test),
        clusters=b.clusters.k,
        query_sets={name: QuerySetInfo(len(qs), skipped[name], chance_recall(qs, len(test), ks))
                    for name, qs in sets.items()},
        encode_ms=encode_ms, seconds=seconds, rows=rows, test_ids=sorted(test_ids), protocol=protocol_rows,
        protocol_dir=str(protocol) if protocol is not None else None)


def _protocol_rows(store: Store, bundle: Bundle, gt: Mapping[str, Mapping[str, frozenset[str]]],
                   encoded: Mapping[str, EncodedQuery], recipe: TextRecipe | None, top_k: int,
                   progress: Progress) -> list[ProtocolRow]:
    plan = protocol_rankings(bundle, recipe)
    task = progress.task("protocol", total=len(plan) * sum(len(q) for q in gt.values()))
    rows = []
    for name, queries in gt.items():
        if not queries:
            continue
        for ranking in plan:
            results = []
            for text in queries:
                hits, _, _ = _run(store, bundle, ranking, encoded[text], top_k, text, recipe)
                results.append([str(h.payload.get("product_id")) for h in hits])
                task.advance()
            rows.append(ProtocolRow(name, ranking.name, len(queries),
                                    protocol_score(results, list(queries.values()), top_k)))
    task.close()
    return rows
