"""`/v1/encode` against the library doing the same work in-process, one query at a time.

    python bench/encode_compare.py --home .enclip --collection fashion-dev [--engine onnx] [--port 8094]

Measures, on the same queries (each warmed first), p50 in ms of:
  * library: `plan_query` (encode with every member, route, filter) + the Qdrant request body, in this process;
  * service work: the same inside `enclip-qdrant serve`, from its `Server-Timing: encode;dur=` header;
  * HTTP round trip: the whole POST /v1/encode from a loopback client (adds JSON, HTTP and the event loop).
Starts the service itself on a loopback port and stops it afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

QUERIES = ["red floral dress", "black leather handbag", "men blue jeans", "white sneakers", "women kurta",
           "sports shoes", "green tshirt", "watch", "sunglasses for men", "pink top", "navy blue shirt",
           "brown belt", "grey track pants", "gold earrings", "yellow saree", "kids shoes", "red lipstick",
           "black wallet", "striped shirt", "denim jacket"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--port", type=int, default=8094)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    from enclip_qdrant import Connection, Searcher
    from enclip_qdrant.search.query import collection_recipe, plan_query
    from enclip_qdrant.store.server import fused_query_request

    queries = QUERIES * a.rounds
    with Searcher(a.collection, conn=Connection(home=a.home), engine=a.engine) as s:
        engine = s.bundle.engine
        recipe = collection_recipe(s.store, s.collection)  # the service reads it once, at startup, too

        def lib(q: str) -> None:
            plan = plan_query(s.bundle, s.store, s.collection, q, None, recipe=recipe)
            fused_query_request(plan.vectors, limit=10, prefetch_limit=40, fusion="rrf", filter=plan.filter,
                                weights=plan.weights).model_dump(mode="json", exclude_none=True)

        for q in QUERIES:
            lib(q)
        lib_ms = []
        for q in queries:
            t = time.perf_counter()
            lib(q)
            lib_ms.append((time.perf_counter() - t) * 1e3)
    exe = str(Path(sys.executable).with_name("enclip-qdrant"))
    proc = subprocess.Popen([exe, "serve", "--home", a.home, "--collection", a.collection, "--port", str(a.port),
                             "--engine", a.engine], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{a.port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=30) as c:
            for q in QUERIES:
                c.post("/v1/encode", json={"text": q})
            work, http = [], []
            for q in queries:
                t = time.perf_counter()
                r = c.post("/v1/encode", json={"text": q})
                http.append((time.perf_counter() - t) * 1e3)
                r.raise_for_status()
                work.append(float(r.headers["server-timing"].split("dur=")[1]))
    finally:
        proc.terminate()
        proc.wait(30)
    lib_p50, work_p50, http_p50 = (statistics.median(x) for x in (lib_ms, work, http))
    print(f"engine {engine}, {len(queries)} text queries, one at a time (p50 ms)")
    print("| library plan + body | service work (Server-Timing) | service / library | HTTP round trip |")
    print("|---|---|---|---|")
    print(f"| {lib_p50:.2f} | {work_p50:.2f} | {work_p50 / lib_p50:.2f}x | {http_p50:.2f} |")


if __name__ == "__main__":
    main()
