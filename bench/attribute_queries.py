"""Attribute-query quality and latency of an indexed collection (prints figures; not a test).

For every (baseColour, articleType) pair with at least --min-products products, queries
"<colour> <article type>" (e.g. "black handbags") and counts how many of the top 10 have both
attributes. Compares the fused ensemble with cluster routing, without it, and each member alone.

Caveat: on the catalog the ensemble was trained on, this measures fit to seen products; a held-out
evaluation is `enclip-qdrant eval` (issue 3).

    python bench/attribute_queries.py --home /tmp/fd/.enclip --collection fashion-dev
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np

from enclip_qdrant import Connection, Searcher
from enclip_qdrant.search.query import encode_query


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--collection", default=None)
    ap.add_argument("--min-products", type=int, default=30)
    ap.add_argument("--top-k", type=int, default=10)
    args = ap.parse_args()

    with Searcher(args.collection, conn=Connection(home=args.home)) as s:
        points = [p for _, p in s.store.scroll(s.collection, ["baseColour", "articleType", "cluster"])]
        counts = collections.Counter((p.get("baseColour"), p.get("articleType")) for p in points)
        pairs = sorted((k for k, n in counts.items() if n >= args.min_products and all(k)), key=lambda k: -counts[k])
        k = args.top_k
        rows: dict[str, list[float]] = collections.defaultdict(list)
        lat: dict[str, list[float]] = collections.defaultdict(list)
        routed_ok = []
        for colour, article in pairs:
            text = f"{colour} {article}".lower()
            for mode in ("auto", "all"):
                t = time.perf_counter()
                resp = s.search(text, top_k=k, clusters=mode)
                lat[f"ensemble ({'routed' if mode == 'auto' else 'all clusters'})"].append(time.perf_counter() - t)
                hits = [r.payload.get("baseColour") == colour and r.payload.get("articleType") == article
                        for r in resp.results]
                rows[f"ensemble ({'routed' if mode == 'auto' else 'all clusters'})"].append(np.mean(hits))
                if mode == "auto":
                    chosen = {c["id"] for c in resp.clusters}
                    relevant = collections.Counter(p.get("cluster") for p in points
                                                   if p.get("baseColour") == colour and p.get("articleType") == article)
                    routed_ok.append(sum(v for c, v in relevant.items() if c in chosen) / sum(relevant.values()))
            q = encode_query(s.bundle, text)
            per = s.store.query_each(s.collection, q.vectors, limit=k)
            for name, hits in per.items():
                rows[f"member {name}"].append(np.mean([h.payload.get("baseColour") == colour
                                                       and h.payload.get("articleType") == article for h in hits]))
        print(f"collection {s.collection}: {len(pairs)} attribute queries (colour x article type, >= "
              f"{args.min_products} products each), precision@{k} (both attributes match)\n")
        print(f"| ranking | P@{k} | p50 ms (encode+search) |")
        print("|---|---|---|")
        for name, vals in rows.items():
            ms = f"{statistics.median(lat[name]) * 1e3:.1f}" if name in lat else ""
            print(f"| {name} | {np.mean(vals):.3f} | {ms} |")
        print(f"\nrouting: share of each query's relevant products inside the searched clusters: "
              f"mean {np.mean(routed_ok):.3f}, min {np.min(routed_ok):.3f}")
        for text in ("black leather handbag", "red floral dress", "men blue jeans", "white sports shoes",
                     "pink kurta"):
            resp = s.search(text, top_k=5)
            print(f"\n`{text}` (clusters {[c['id'] for c in resp.clusters]}):")
            for r in resp.results:
                print(f"  {r.rank}. {r.payload.get('text')}  [{r.payload.get('articleType')}, "
                      f"{r.payload.get('baseColour')}]")


if __name__ == "__main__":
    main()
