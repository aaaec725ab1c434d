"""Loopback load test of the query service: text queries at several concurrencies.

    enclip-qdrant serve --port 8080 &                     # a collection indexed beforehand
    python bench/serve_load.py http://127.0.0.1:8080 --concurrency 1 8 32 --requests 200

Prints, per concurrency: requests/s, latency p50/p95/p99 (ms), errors by status, and the service's
micro-batching counters (queries per forward pass). Only loopback URLs are accepted: this is a local
measurement, never traffic to another machine. Every run is bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import httpx

QUERIES = ["red dress", "blue denim jeans", "black leather handbag", "white sneakers", "green cap", "yellow tshirt",
           "striped shirt", "floral summer dress", "brown watch", "pink sandals", "grey hoodie", "navy shorts"]


def loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(url: str, concurrency: int, requests: int, max_seconds: float, headers: dict[str, str]) -> dict:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock, counter = threading.Lock(), iter(range(requests))
    stop_at = time.monotonic() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/search", json={"text": QUERIES[i % len(QUERIES)], "top_k": 10})
                    status = str(r.status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                dt = (time.perf_counter() - t0) * 1e3
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = sum(statuses.values())
    return {"concurrency": concurrency, "requests": done, "seconds": round(wall, 2),
            "rps": round(statuses["200"] / wall, 1) if wall else 0.0,
            "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
            "errors": {k: v for k, v in statuses.items() if k != "200"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="the service, e.g. http://127.0.0.1:8080 (loopback only)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=200, help="per concurrency level")
    ap.add_argument("--max-seconds", type=float, default=120, help="per concurrency level")
    ap.add_argument("--key", default=os.environ.get("ENCLIP_API_KEY"), help="the service's API key, if it has one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not loopback(args.url):
        raise SystemExit("serve_load only measures a service on this machine (127.0.0.1 / localhost / ::1)")
    headers = {"X-API-Key": args.key} if args.key else {}
    httpx.post(f"{args.url}/v1/search", json={"text": "warm up"}, headers=headers, timeout=60).raise_for_status()
    rows = []
    for c in args.concurrency:
        before = httpx.get(f"{args.url}/readyz", timeout=10).json().get("batches", {})
        row = run(args.url, c, args.requests, args.max_seconds, headers)
        after = httpx.get(f"{args.url}/readyz", timeout=10).json().get("batches", {})
        passes = after.get("batches", 0) - before.get("batches", 0)
        row["queries_per_forward_pass"] = round((after.get("queries", 0) - before.get("queries", 0)) / passes, 2) \
            if passes else None
        rows.append(row)
        if not args.json:
            print(f"c={c:>3}  {row['rps']:>7} req/s  p50 {row['p50_ms']:>7} ms  p95 {row['p95_ms']:>7} ms  "
                  f"p99 {row['p99_ms']:>7} ms  n={row['requests']}  errors={row['errors'] or 0}  "
                  f"batch={row['queries_per_forward_pass']}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
