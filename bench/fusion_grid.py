"""Choosing the fusion defaults: text weight x prefetch depth x dense/hybrid x routed, held out, in one pass.

    python bench/fusion_grid.py CATALOG --bundle B [--protocol DIR] [--seed 0 --test-fraction 0.2] [--out OUT.md]

The bundle must come from `eval` on the same split (it must not have seen the held-out products). The held-out
products are indexed once into a throw-away embedded collection; each query is encoded once, and each of its
lists (every member, the BM25 text list) is fetched once at the deepest prefetch (exact search, so a shallower
prefetch is a prefix of it), with and without the routed cluster filter. Every grid cell is then fused from those
lists with the stores' documented formula (store/base.py, RRF_K; tests/test_fusion_contract.py proves both stores
rank exactly so). "qdrant-weights" rows fuse with Qdrant's own rank-dividing RRF weight (1 / ((p + 1) / w + k - 1)),
which is what the default query did before the fusion issue.

Query sets: the keyword queries `eval` makes from the held-out products' fields (type P@10, all-fields P@10), and,
with --protocol, Marqo's KAGL tasks (protocol.py; P@10 for the category tasks, R@10 for text-to-image).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from enclip_qdrant.bundle.manifest import seen_product_ids
from enclip_qdrant.catalog.open import open_catalog
from enclip_qdrant.collection.meta import read_meta
from enclip_qdrant.engine.load import load_bundle
from enclip_qdrant.evaluation.protocol import read_protocol, restrict
from enclip_qdrant.evaluation.protocol import score as protocol_score
from enclip_qdrant.evaluation.queries import TYPE_FIELD, keyword_queries, split_test
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.search.options import DEFAULT_MAX_CLUSTERS, DEFAULT_THRESHOLD
from enclip_qdrant.search.query import encode_query, hybrid_vectors, text_filters
from enclip_qdrant.search.routing import route
from enclip_qdrant.store import EdgeStore, SearchFilter
from enclip_qdrant.store.base import RRF_K

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
DEPTHS = (20, 40, 100)  # prefetch limits: top 10 x oversample 2, 4 (today's default), 10
TOP = 10


def fuse(lists: dict[str, list[str]], depth: int, weights: dict[str, float], qdrant_weights: bool = False) -> list[str]:
    scores: dict[str, float] = {}
    for name, ids in lists.items():
        w = weights.get(name, 1.0)
        for p, pid in enumerate(ids[:depth]):
            term = 1.0 / ((p + 1) / w + RRF_K - 1) if qdrant_weights else w / (RRF_K + p)
            scores[pid] = scores.get(pid, 0.0) + term
    return [pid for pid, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("catalog")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--protocol")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--out")
    ap.add_argument("--latency", action="store_true", help="Also time the default query's search: the formula "
                    "body vs the flat weighted-RRF body it replaced, alternating, same queries.")
    a = ap.parse_args()

    cat = open_catalog(a.catalog, None, True, NullProgress())
    _, test_ids = split_test(cat.products, a.test_fraction, a.seed)
    bundle = load_bundle(a.bundle)
    if seen_product_ids(bundle.path) & set(test_ids):
        raise SystemExit(f"{a.bundle} was trained on held-out products: use the bundle `eval` trained on this split")
    by_id = {p.id: p for p in cat.products}
    test = [by_id[i] for i in sorted(test_ids)]
    tmp = Path(tempfile.mkdtemp(prefix="fusion-grid-"))
    try:
        store = EdgeStore(tmp / "store")
        t0 = time.perf_counter()
        index_catalog(dataclasses.replace(cat, products=test, skipped=[]), bundle, store, "grid")
        print(f"indexed {len(test)} held-out products in {time.perf_counter() - t0:.0f} s")
        recipe = read_meta(store, "grid").text_recipe()
        pid_of = {str(pl["product_id"]): pid for pid, pl in store.scroll("grid", ["product_id"])}
        prod_of = {v: k for k, v in pid_of.items()}

        sets: dict[str, list[tuple[str, frozenset[str], dict]]] = {
            "keywords": [(q.text, q.relevant, q.attributes) for q in keyword_queries(test)]}
        for task in read_protocol(a.protocol) if a.protocol else []:
            sets[task.name] = [(q, rel, {}) for q, rel in restrict(task, test_ids).items()]

        lists: dict[tuple[str, bool], dict[str, list[str]]] = {}
        t0 = time.perf_counter()
        texts = list(dict.fromkeys(q for qs in sets.values() for q, _, _ in qs))
        for text in texts:
            enc = encode_query(bundle, text)
            vectors, _ = hybrid_vectors(enc.vectors, text, recipe, 1.0)
            capped = [c for c, _ in route(enc.cluster_probs, DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS)]
            uncapped = [c for c, _ in route(enc.cluster_probs, DEFAULT_THRESHOLD, bundle.clusters.k)]
            for routed, clusters in ((False, None), (True, capped), ("uncapped", uncapped)):
                flt = SearchFilter(clusters=clusters) if clusters else None
                per = store.query_each("grid", vectors, limit=max(DEPTHS), filter=flt)
                lists[text, routed] = {name: [prod_of[h.id] for h in hits] for name, hits in per.items()}
            if text_vec_name := (recipe.vector if recipe else None):  # routed members, text over every cluster
                lists[text, "text-unrouted"] = dict(lists[text, True])
                if text_vec_name in lists[text, False]:
                    lists[text, "text-unrouted"][text_vec_name] = lists[text, False][text_vec_name]
        print(f"encoded and searched {len(texts)} queries in {time.perf_counter() - t0:.0f} s")
        members = len(bundle.vectors)
        text_vec = recipe.vector if recipe else None

        def measure(depth: int, w: float, routed: bool | str, qdrant_weights: bool = False) -> dict[str, float]:
            out: dict[str, float] = {}
            for name, qs in sets.items():
                results, rels, type_p, all_p = [], [], [], []
                for text, rel, attrs in qs:
                    per = dict(lists[text, routed])
                    if w == 0 or text_vec not in per:
                        per.pop(text_vec, None)
                    ranked = fuse(per, depth, {text_vec: w * members} if text_vec else {}, qdrant_weights)
                    results.append(ranked)
                    rels.append(rel)
                    if attrs:
                        type_p.append(sum(str(by_id[i].fields.get(TYPE_FIELD)).casefold()
                                          == str(attrs[TYPE_FIELD]).casefold() for i in ranked) / TOP)
                        all_p.append(sum(all(str(by_id[i].fields.get(k)).casefold() == str(v).casefold()
                                             for k, v in attrs.items()) for i in ranked) / TOP)
                m = protocol_score(results, rels, TOP)
                if name == "keywords":
                    out["kw type P@10"] = sum(type_p) / len(type_p)
                    out["kw all-fields P@10"] = sum(all_p) / len(all_p)
                else:
                    out[f"{name} {'R@10' if name == 'text-to-image' else 'P@10'}"] = (
                        m["R@10"] if name == "text-to-image" else m["P@10"])
            return out

        rows = []
        for routed in (True, False):
            for depth in DEPTHS:
                for w in WEIGHTS:
                    rows.append((f"{'routed' if routed else 'all'} depth {depth} W={w:g}", measure(depth, w, routed)))
            rows.append((f"{'routed' if routed else 'all'} depth 40 W=1 qdrant-weights (before)",
                         measure(40, 1.0, routed, qdrant_weights=True)))
        for w in WEIGHTS[2:]:  # routing without the --max-clusters cap: the threshold alone decides
            rows.append((f"routed, no cluster cap, depth 40 W={w:g}", measure(40, w, "uncapped")))
        for w in WEIGHTS[2:]:  # members routed, the text list over every cluster
            rows.append((f"members routed, text all clusters, depth 40 W={w:g}", measure(40, w, "text-unrouted")))
        latency = _latency(store, bundle, recipe, texts[:200]) if a.latency else ""
        cols = list(rows[0][1])
        lines = [f"Held-out fusion grid: bundle {bundle.fingerprint}, {len(test)} held-out products, seed {a.seed}; "
                 f"W = --text-weight (text list weight W x {members} members); depth = prefetch limit.", "",
                 "| ranking | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |" for name, m in rows]
        text = "\n".join(lines) + "\n" + latency
        print(text)
        if a.out:
            Path(a.out).write_text(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _latency(store: EdgeStore, bundle, recipe, texts: list[str], rounds: int = 3) -> str:
    """Search time of the default query (routed, W=1, depth 40): today's formula body vs the flat weighted RRF
    body (Qdrant's weights) it replaced; the two alternate per round, so machine drift hits both alike."""
    import statistics

    from qdrant_edge import Expression, Formula, Fusion, Prefetch, Query, QueryRequest

    from enclip_qdrant.store.edge import edge_filter, edge_vector

    plans = []
    for text in texts:
        enc = encode_query(bundle, text)
        vectors, weights = hybrid_vectors(enc.vectors, text, recipe, 1.0)
        clusters = [c for c, _ in route(enc.cluster_probs, DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS)]
        flt = SearchFilter(clusters=clusters) if clusters else None
        plans.append((vectors, weights, flt, text_filters(vectors, enc.vectors, flt)))
    shard = store._shard(store.resolve("grid"))
    times: dict[str, list[float]] = {"engine: formula body (now)": [], "engine: flat weighted RRF body (before)": [],
                                     "query_fused (now, with hits and tie order)": []}
    for _ in range(rounds):
        for vectors, weights, flt, own in plans:
            names = list(vectors)
            w = [float((weights or {}).get(n, 1.0)) for n in names]
            lists = [Prefetch(limit=40, query=Query.Nearest(edge_vector(v), using=n),
                              filter=edge_filter(own.get(n, flt))) for n, v in vectors.items()]
            now = QueryRequest(limit=TOP, prefetches=[Prefetch(limit=40, query=Fusion.Rrf(k=RRF_K), prefetches=[p])
                                                      for p in lists],
                               query=Formula(Expression.Sum([Expression.Mult([Expression.Constant(x),
                                                                              Expression.Variable(f"$score[{i}]")])
                                                             for i, x in enumerate(w)])),
                               with_payload=True, with_vector=False)
            before = QueryRequest(limit=TOP, prefetches=lists, query=Fusion.Rrf(k=RRF_K, weights=w), with_payload=True,
                                  with_vector=False)
            for label, req in (("engine: formula body (now)", now),
                               ("engine: flat weighted RRF body (before)", before)):
                t0 = time.perf_counter()
                shard.query(req)
                times[label].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.query_fused("grid", vectors, limit=TOP, prefetch_limit=40, filter=flt, weights=weights,
                              vector_filters=own)
            times["query_fused (now, with hits and tie order)"].append(time.perf_counter() - t0)
    lines = ["", f"Search time of the default query, {len(plans)} queries x {rounds} rounds, alternating:", "",
             "| body | p50 ms | p95 ms |", "|---|---:|---:|"]
    for name, ts in times.items():
        ts = sorted(ts)
        lines.append(f"| {name} | {statistics.median(ts) * 1e3:.2f} | {ts[int(0.95 * len(ts))] * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
