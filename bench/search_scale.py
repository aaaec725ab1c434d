"""How the storage layer scales with collection size: indexing rate, warm search latency, memory, disk.

Prints figures (markdown tables for BENCHMARKS.md); not a test. No models: synthetic vectors go through the
project's own `Store` interface, so the numbers are those of the code paths `index` and `query` use:

- `edge`:  `EdgeStore` on a temporary folder: embedded qdrant-edge, the real Rust engine in process (default
  backend);
- `local`: `ServerStore(":memory:")`: qdrant-client's local mode, a pure-Python brute-force stand-in for a
  server (what the tests run against), kept as the reference point the embedded engine must beat.

Why: search must stay interactive as catalogs grow. Target: embedded fused + cluster-filtered search
p50 <= 10 ms at 20k points (5 members x 256 d), the ENCLIP query. This script shows where that holds, what the
fusion costs over a one-CLIP query, and what memory and disk each size needs.

Data mimic a real collection: M named cosine vectors ("m0".."m{M-1}", dim D), payload
{"cluster": int, "product_id": str} with K clusters (`cluster` indexed as integer, as `CollectionSpec` does by
default). Per cluster and member there is a random unit centroid; a point is centroid + gaussian noise
(noise norm about 1), normalised; seeded, and identical for both backends. Points are upserted in batches of
256 like `index` does. A query is a noisy copy of one cluster's centroids, filtered to that cluster, in three
shapes (timed interleaved, after warm-up, so a busy machine hurts all three alike):

- `fused+filter`: `query_fused` over all M vectors (one prefetch per member, limit 40 each, RRF, top 10),
  restricted to the query's cluster: the ENCLIP query;
- `fused`: the same without the filter;
- `single+filter`: `query_each` with "m0" only, filtered: the one-CLIP baseline.

Every (size, backend) runs in a fresh child process (this script re-invoked with hidden arguments), so its
peak RSS (`ru_maxrss`) belongs to that size alone. "index s" counts the store calls only (create + upserts,
EdgeStore's flush after every upsert included), not generating the vectors; "disk MiB" is what `du` would
count of the edge folder (the JSON also has the apparent size: qdrant-edge preallocates sparse files).

    OMP_NUM_THREADS=1 python bench/search_scale.py --sizes 1000 10000 20000 100000 --json /tmp/search_scale.json

Options: --backends edge local, --members 5, --dim 256, --clusters 10, --queries 200, --local-queries 20
(local takes seconds per filtered query at 20k points), --local-max 100000 (bigger sizes skip local), --seed 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enclip_qdrant.search.options import DEFAULT_TEXT_WEIGHT
from enclip_qdrant.store import (
    CollectionOptions,
    CollectionSpec,
    EdgeStore,
    PointRecord,
    SearchFilter,
    SearchParams,
    ServerStore,
    SparseVec,
    Store,
)

COLLECTION = "bench"
BATCH = 256  # what `index_catalog` upserts per call
NOISE = 1.0  # norm of a point's noise relative to its unit centroid: cosine to the centroid about 0.7
LIMIT = 10
PREFETCH_LIMIT = 40  # top_k x the search's default oversampling
SHAPES = ("fused+filter", "hybrid+filter", "fused", "single+filter")
FILTERED = ("fused+filter", "single+filter")  # every list filtered (hybrid's words search every cluster)
BACKENDS = ("edge", "local", "edge-hnsw")
TEXT = "text"  # the sparse (BM25-like) vector every point carries, as `index` writes it
VOCAB_PER_CLUSTER = 400  # each cluster draws its words from its own range of token ids, plus shared ones
SHARED_VOCAB = 200
WORDS = 8  # tokens per point


# -- synthetic data ----------------------------------------------------------------------------------------


def centroids(seed: int, members: int, clusters: int, dim: int) -> np.ndarray:
    """(members, clusters, dim) unit vectors: each member sees each cluster in its own direction."""
    c = np.random.default_rng([seed, 0]).standard_normal((members, clusters, dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=-1, keepdims=True)


def noisy(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Centroid + gaussian noise, normalised: points spread around their cluster, not pure noise."""
    dim = base.shape[-1]
    v = base + rng.standard_normal(base.shape, dtype=np.float32) * np.float32(NOISE / np.sqrt(dim))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def words(rng: np.random.Generator, cluster: int, n: int) -> SparseVec:
    """`n` distinct token ids, mostly from the cluster's own range, weights like BM25's (0.5..2)."""
    own = cluster * VOCAB_PER_CLUSTER + SHARED_VOCAB + rng.zipf(1.3, size=n) % VOCAB_PER_CLUSTER
    ids = sorted({int(t) for t in np.where(rng.random(n) < 0.8, own, rng.integers(SHARED_VOCAB, size=n))})
    return SparseVec(ids, [float(w) for w in rng.uniform(0.5, 2.0, size=len(ids))])


def point_batches(size: int, cents: np.ndarray, seed: int) -> Iterator[list[PointRecord]]:
    """Points in upsert batches, each from its own seeded RNG, so only one batch of vectors is ever in memory
    (the child's RSS is the store's, not the generator's) and both backends get the very same points."""
    members, clusters, _ = cents.shape
    for b, start in enumerate(range(0, size, BATCH)):
        n = min(BATCH, size - start)
        rng = np.random.default_rng([seed, 1, b])
        labels = rng.integers(clusters, size=n)
        vecs = [noisy(rng, cents[m][labels]) for m in range(members)]
        yield [
            PointRecord(
                id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"search-scale-{start + i}")),
                vectors={f"m{m}": vecs[m][i] for m in range(members)},
                payload={"cluster": int(labels[i]), "product_id": f"p{start + i:07d}"},
                sparse={TEXT: words(rng, int(labels[i]), WORDS)},
            )
            for i in range(n)
        ]


def make_queries(n: int, cents: np.ndarray, seed: int) -> list[tuple[int, dict[str, Any]]]:
    """(cluster, one vector per member + a few of the cluster's words): a noisy copy of its centroids."""
    members, clusters, _ = cents.shape
    rng = np.random.default_rng([seed, 2])
    out = []
    for c in rng.integers(clusters, size=n):
        out.append((int(c), {**{f"m{m}": noisy(rng, cents[m][c]) for m in range(members)},
                             TEXT: words(rng, int(c), 3)}))
    return out


# -- one measurement (child process) -----------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float | None:
    """Resident set now (not a peak): shows what indexing left behind once its transient buffers are gone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes as `du` counts them, apparent bytes): qdrant files may be sparse or preallocated."""
    allocated = apparent = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def summary(ms: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(ms, dtype=np.float64)
    p50, p95 = np.percentile(a, [50, 95])
    return {"n": len(a), "p50_ms": float(p50), "p95_ms": float(p95), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "max_ms": float(a.max())}


def shape_calls(store: Store, params: SearchParams | None = None
                ) -> dict[str, Callable[[int, dict[str, Any]], list[Any]]]:
    """The query shapes as callables returning hits, so they are timed the same way; `params` go to every
    list's search (exact=True: the reference a HNSW search's recall is measured against)."""

    def dense(q: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in q.items() if k != TEXT}

    def fused_filter(c: int, q: dict[str, Any]) -> list[Any]:
        return store.query_fused(COLLECTION, dense(q), limit=LIMIT, prefetch_limit=PREFETCH_LIMIT, fusion="rrf",
                                 filter=SearchFilter(clusters=[c]), params=params)

    def hybrid_filter(c: int, q: dict[str, Any]) -> list[Any]:
        """The ENCLIP query: members routed to the cluster, the words searching everywhere, text weighted."""
        members = len(q) - 1
        return store.query_fused(COLLECTION, q, limit=LIMIT, prefetch_limit=PREFETCH_LIMIT, fusion="rrf",
                                 filter=SearchFilter(clusters=[c]), vector_filters={TEXT: None},
                                 weights={TEXT: DEFAULT_TEXT_WEIGHT * members}, params=params)

    def fused(c: int, q: dict[str, Any]) -> list[Any]:
        return store.query_fused(COLLECTION, dense(q), limit=LIMIT, prefetch_limit=PREFETCH_LIMIT, fusion="rrf",
                                 params=params)

    def single_filter(c: int, q: dict[str, Any]) -> list[Any]:
        return store.query_each(COLLECTION, {"m0": q["m0"]}, limit=LIMIT, filter=SearchFilter(clusters=[c]),
                                params=params)["m0"]

    return {"fused+filter": fused_filter, "hybrid+filter": hybrid_filter, "fused": fused,
            "single+filter": single_filter}


def measure(size: int, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Index `size` points into a fresh `backend` store, then time the query shapes; all in this process."""
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    cents = centroids(args.seed, args.members, args.clusters, args.dim)
    n_queries = args.queries if backend == "edge" else min(args.queries, args.local_queries)
    # Brute force has nothing to warm beyond the first call, and each local query costs seconds.
    warmup = args.warmup if backend == "edge" else min(args.warmup, 1)
    queries = make_queries(warmup + n_queries, cents, args.seed)
    result: dict[str, Any] = {"size": size, "backend": backend, "status": "ok", "rss_base_mib": peak_rss_mib()}

    edge = backend.startswith("edge")
    home = Path(tempfile.mkdtemp(prefix="enclip-search-scale-", dir=args.tmp)) if edge else None
    store: Store = EdgeStore(home) if home is not None else ServerStore(":memory:")
    try:
        options = CollectionOptions(hnsw_full_scan_kb=args.full_scan_kb) if args.full_scan_kb else None
        spec = CollectionSpec(vectors={f"m{m}": args.dim for m in range(args.members)}, sparse_vectors=(TEXT,),
                              options=options)
        spent = 0.0  # store calls only: generating the synthetic batches is not indexing
        t = time.perf_counter()
        store.create(COLLECTION, spec)
        spent += time.perf_counter() - t
        for batch in point_batches(size, cents, args.seed):
            t = time.perf_counter()
            store.upsert(COLLECTION, batch)
            spent += time.perf_counter() - t
        counted = store.count(COLLECTION)
        if counted != size:
            raise RuntimeError(f"{backend}: {counted} points in the collection, expected {size}")
        result.update(index_s=spent, points_per_s=size / spent, rss_indexed_mib=peak_rss_mib(),
                      rss_now_indexed_mib=current_rss_mib())
        print(f"  indexed {size:,} points in {spent:.1f} s", file=sys.stderr, flush=True)
        if backend == "edge-hnsw":  # what `index` does at the end of a run above its threshold
            t = time.perf_counter()
            store.build_index(COLLECTION)
            result["build_s"] = time.perf_counter() - t
            result.update(rss_built_mib=peak_rss_mib(), rss_now_built_mib=current_rss_mib())
            print(f"  built HNSW in {result['build_s']:.1f} s", file=sys.stderr, flush=True)
        if isinstance(store, EdgeStore):
            result["disk_bytes"], result["disk_apparent_bytes"] = disk_usage(store.home)
        state = store.info(COLLECTION).index
        if state is not None:
            result["index_state"] = {"hnsw": state.hnsw, "indexed_vectors": state.indexed_vectors,
                                     "vectors": state.vectors, "segments": state.segments}

        calls = shape_calls(store, SearchParams(hnsw_ef=args.hnsw_ef) if args.hnsw_ef else None)
        exact = shape_calls(store, SearchParams(exact=True)) if backend == "edge-hnsw" else None
        for c, q in queries[:warmup]:
            for call in [*calls.values(), *(exact or {}).values()]:
                call(c, q)
        lat: dict[str, list[float]] = {s: [] for s in SHAPES}
        lat_exact: dict[str, list[float]] = {s: [] for s in SHAPES}
        recall: dict[str, list[float]] = {s: [] for s in SHAPES}
        hits: dict[str, list[int]] = {s: [] for s in SHAPES}
        wrong: dict[str, int] = dict.fromkeys(SHAPES, 0)
        for c, q in queries[warmup:]:
            for shape in SHAPES:  # interleaved: background load spreads over all shapes alike
                t = time.perf_counter()
                found = calls[shape](c, q)
                lat[shape].append((time.perf_counter() - t) * 1000)
                hits[shape].append(len(found))
                if shape in FILTERED:
                    wrong[shape] += sum(h.payload.get("cluster") != c for h in found)
                if exact is not None:
                    t = time.perf_counter()
                    truth = {h.id for h in exact[shape](c, q)}
                    lat_exact[shape].append((time.perf_counter() - t) * 1000)
                    recall[shape].append(len(truth & {h.id for h in found}) / max(1, len(truth)))
        result["queries"] = {
            s: {**summary(lat[s]), "latencies_ms": lat[s], "hits_mean": float(np.mean(hits[s])),
                "filter_violations": wrong[s] if s in FILTERED else None,
                **({"recall_at_10": float(np.mean(recall[s])), "recall_min": float(np.min(recall[s])),
                    "exact": summary(lat_exact[s])} if exact is not None else {})}
            for s in SHAPES
        }
        result["warmup"] = warmup
        result.update(rss_queried_mib=peak_rss_mib(), rss_now_queried_mib=current_rss_mib())
    finally:
        store.close()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
    return result


# -- driver (parent process) -------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("qdrant-edge-py", "qdrant-client", "numpy", "enclip-qdrant"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run_child(size: int, backend: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Re-invoke this script for one (size, backend): a fresh process, so peak RSS is that run's alone."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", str(size), backend, "--_result", str(out),
           "--members", str(args.members), "--dim", str(args.dim), "--clusters", str(args.clusters),
           "--queries", str(args.queries), "--local-queries", str(args.local_queries),
           "--warmup", str(args.warmup), "--seed", str(args.seed),
           *(["--hnsw-ef", str(args.hnsw_ef)] if args.hnsw_ef else []), *(["--tmp", args.tmp] if args.tmp else []),
           *(["--full-scan-kb", str(args.full_scan_kb)] if args.full_scan_kb else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not out.is_file():
        return {"size": size, "backend": backend, "status": f"failed (exit {proc.returncode})", "wall_s": wall}
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    return result


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def fmt_pair(q: dict[str, Any] | None) -> str:
    return "—" if q is None else f"{fmt_ms(q['p50_ms'])} / {fmt_ms(q['p95_ms'])}"


def p50(runs: dict[tuple[int, str], dict[str, Any]], size: int, backend: str, shape: str) -> float | None:
    r = runs.get((size, backend))
    if r is None or r.get("status") != "ok":
        return None
    return r["queries"][shape]["p50_ms"]


def span(values: Sequence[float]) -> str:
    low, high = f"{min(values):.0f}", f"{max(values):.0f}"
    return low if low == high else f"{low}-{high}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.1f}x"


def report(results: list[dict[str, Any]], skipped: list[str], args: argparse.Namespace, ver: dict[str, str]) -> None:
    """Markdown tables (paste into BENCHMARKS.md) plus the notes needed to read them."""
    print(f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(f"data: {args.members} named vectors x {args.dim} d (cosine), {args.clusters} clusters, upsert batches "
          f"of {BATCH}, seed {args.seed}; queries: edge {args.queries}, local {min(args.queries, args.local_queries)}"
          f" (after {args.warmup} warm-up on edge, {min(args.warmup, 1)} on local); top {LIMIT}, prefetch "
          f"{PREFETCH_LIMIT} per member, RRF")
    print()
    print("| size | backend | index s | HNSW build s | peak RSS MiB (indexed / queried) | disk MiB | "
          + " | ".join(f"{s} p50 / p95 ms" for s in SHAPES) + " |")
    print("|---" * (6 + len(SHAPES)) + "|")
    for r in results:
        if r.get("status") != "ok":
            print(f"| {r['size']:,} | {r['backend']} | {r['status']} |" + " |" * (3 + len(SHAPES)))
            continue
        disk = f"{r['disk_bytes'] / 2**20:,.0f}" if "disk_bytes" in r else "—"
        build = f"{r['build_s']:,.0f}" if "build_s" in r else "—"
        q = r["queries"]
        print(f"| {r['size']:,} | {r['backend']} | {r['index_s']:.1f} | {build} | "
              f"{r['rss_indexed_mib']:,.0f} / {r['rss_queried_mib']:,.0f} | {disk} | "
              + " | ".join(fmt_pair(q[s]) for s in SHAPES) + " |")
    print()
    hnsw_runs = [r for r in results if r.get("status") == "ok" and r["backend"] == "edge-hnsw"]
    if hnsw_runs:
        print("| size | shape | HNSW p50 / p95 ms | exact p50 / p95 ms (same store) | recall@10 vs exact (min) |")
        print("|---|---|---|---|---|")
        for r in hnsw_runs:
            for shape, q in r["queries"].items():
                print(f"| {r['size']:,} | {shape} | {fmt_pair(q)} | {fmt_pair(q['exact'])} | "
                      f"{q['recall_at_10']:.3f} ({q['recall_min']:.1f}) |")
        print()
    runs = {(r["size"], r["backend"]): r for r in results}
    print("| size | local ÷ edge, fused+filter p50 | edge fused+filter ÷ single+filter p50 |")
    print("|---|---|---|")
    for size in args.sizes:
        edge_ff = p50(runs, size, "edge", "fused+filter")
        print(f"| {size:,} | {ratio(p50(runs, size, 'local', 'fused+filter'), edge_ff)} | "
              f"{ratio(edge_ff, p50(runs, size, 'edge', 'single+filter'))} |")
    print()
    notes = list(skipped)
    base = {b: [r["rss_base_mib"] for r in results if r["backend"] == b and "rss_base_mib" in r] for b in BACKENDS}
    if any(base.values()):
        notes.append("peak RSS of a child before any point (interpreter + imports), MiB: "
                     + ", ".join(f"{b} {span(v)}" for b, v in base.items() if v))
    hnsw = [f"{r['size']:,} {r['backend']}: {r['index_state']['indexed_vectors']:,} of "
            f"{r['index_state']['vectors']:,} in {r['index_state']['segments']} segment(s)" for r in results
            if r.get("status") == "ok" and r.get("index_state") and r["backend"].startswith("edge")]
    if hnsw:
        notes.append("member vectors in an HNSW graph (`info`'s index state): " + "; ".join(hnsw))
    built = [f"{r['size']:,}: peak {r['rss_built_mib']:,.0f} MiB" for r in hnsw_runs]
    if built:
        notes.append("edge-hnsw RSS after the build: " + "; ".join(built))
    bad = [f"{r['size']:,} {r['backend']} {s}: {q['filter_violations']}" for r in results if r.get("status") == "ok"
           for s, q in r["queries"].items() if q["filter_violations"]]
    if bad:
        notes.append("hits outside the filtered cluster: " + "; ".join(bad))
    short = [f"{r['size']:,} {r['backend']} {s}: {q['hits_mean']:.1f}" for r in results if r.get("status") == "ok"
             for s, q in r["queries"].items() if q["hits_mean"] < LIMIT]
    if short:
        notes.append(f"fewer than {LIMIT} hits on average: " + "; ".join(short))
    target = p50(runs, 20_000, "edge", "fused+filter")
    if target is not None:
        notes.append(f"target, embedded fused+filter p50 <= 10 ms at 20k points: {fmt_ms(target)} ms, "
                     + ("met" if target <= 10 else "NOT met"))
    for size, goal in ((100_000, 5.0), (1_000_000, 30.0)):
        r = runs.get((size, "edge-hnsw"))
        if r is not None and r.get("status") == "ok":
            q = r["queries"]["hybrid+filter"]
            met = q["p50_ms"] <= goal and q["recall_at_10"] >= 0.95
            notes.append(f"goal, HNSW hybrid+filter p50 <= {goal:g} ms with recall@10 >= 0.95 at {size:,}: "
                         f"{fmt_ms(q['p50_ms'])} ms, recall {q['recall_at_10']:.3f}: " + ("met" if met else "NOT met"))
    for n in notes:
        print(f"- {n}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 20_000, 100_000])
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--members", type=int, default=5, help="named vectors per point (m0..m{N-1})")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200, help="timed queries per shape")
    ap.add_argument("--local-queries", type=int, default=20, help="cap for the local backend (seconds per query)")
    ap.add_argument("--local-max", type=int, default=100_000, help="skip local above this many points")
    ap.add_argument("--warmup", type=int, default=3, help="untimed queries of each shape first (local: at most 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hnsw-ef", type=int, default=None, help="edge-hnsw: HNSW candidates per list (default Qdrant's)")
    ap.add_argument("--full-scan-kb", type=int, default=None,
                    help="edge-hnsw: Qdrant's full_scan_threshold (KB): filters matching less are searched exactly")
    ap.add_argument("--tmp", default=None, help="where the edge stores are built (default the system's)")
    ap.add_argument("--json", type=Path, default=None, help="write every raw figure here")
    ap.add_argument("--_child", nargs=2, metavar=("SIZE", "BACKEND"), help=argparse.SUPPRESS)
    ap.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key in ("members", "dim", "clusters", "queries", "local_queries"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or any(s < 1 for s in args.sizes):
        ap.error("--warmup must be >= 0 and every size >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args._child:
        size, backend = int(args._child[0]), args._child[1]
        args._result.write_text(json.dumps(measure(size, backend, args)))
        return

    ver = versions()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="enclip-search-scale-results-") as tmp:
        for size in args.sizes:
            for backend in args.backends:
                if backend == "local" and size > args.local_max:
                    skipped.append(f"local skipped at {size:,} points (> --local-max {args.local_max:,})")
                    continue
                print(f"[{size:,} points, {backend}]", file=sys.stderr, flush=True)
                r = run_child(size, backend, args, Path(tmp) / f"{size}-{backend}.json")
                print(f"  {r['status']} in {r['wall_s']:.1f} s wall", file=sys.stderr, flush=True)
                results.append(r)
    report(results, skipped, args, ver)
    if args.json:
        doc = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "versions": ver},
               "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                          if not k.startswith("_")} | {"batch": BATCH, "noise": NOISE, "limit": LIMIT,
                                                       "prefetch_limit": PREFETCH_LIMIT},
               "skipped": skipped, "runs": results}
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"\nraw figures: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
