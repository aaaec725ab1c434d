"""Loopback load test of the query service: text queries at several concurrencies.

    enclip-qdrant serve --port 8080 &                     # a collection indexed beforehand
    python bench/serve_load.py http://127.0.0.1:8080 --concurrency 1 8 32 --requests 200

Prints, per concurrency: requests/s, latency p50/p95/p99 (ms), errors by status, and the service's
micro-batching counters (queries per forward pass). Only loopback URLs are accepted: this is a local
measurement, never traffic to another machine. Every run is bounded in requests and seconds.

`--client wrk` drives the load with wrk (Debian package `wrk`, a C load generator; GET /v1/search with the
same queries in turn, for `--max-seconds`) instead of Python threads: on a 2-core machine the Python client's
own CPU time competes with the service it measures.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from urllib.parse import quote, urlparse

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


_WRK_SCRIPT = """
local paths = {%s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%.3f %%.3f %%.3f %%.3f\\n", summary.requests, e.connect,
    e.read, e.write, e.status, e.timeout, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.mean / 1000))
end
"""


def run_wrk(url: str, concurrency: int, seconds: float, key: str | None) -> dict:
    """wrk for `seconds` at `concurrency` connections (2 threads at most: the machine has 2 cores)."""
    paths = ", ".join(f'"/v1/search?text={quote(q)}&top_k=10"' for q in QUERIES)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_SCRIPT % paths)
    cmd = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{int(seconds)}s", "--latency",
           "-s", f.name, url]
    if key:
        cmd[1:1] = ["-H", f"X-API-Key: {key}"]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)", text)
    if not m:
        raise SystemExit(f"wrk printed no result:\n{text}")
    n, *errs = (int(x) for x in m.groups()[:6])
    p50, p95, p99, mean = (float(x) for x in m.groups()[6:])
    errors = {k: v for k, v in zip(("connect", "read", "write", "status", "timeout"), errs, strict=True) if v}
    return {"concurrency": concurrency, "requests": n, "seconds": seconds,
            "rps": round((n - errors.get("status", 0)) / seconds, 1), "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1), "p99_ms": round(p99, 1), "mean_ms": round(mean, 1), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="the service, e.g. http://127.0.0.1:8080 (loopback only)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=200, help="per concurrency level")
    ap.add_argument("--max-seconds", type=float, default=120, help="per concurrency level")
    ap.add_argument("--key", default=os.environ.get("ENCLIP_API_KEY"), help="the service's API key, if it has one")
    ap.add_argument("--client", choices=["python", "wrk"], default="python",
                    help="wrk: a C load generator for --max-seconds per level (apt-get install wrk)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk needs wrk on PATH (Debian: apt-get install wrk)")
    if not loopback(args.url):
        raise SystemExit("serve_load only measures a service on this machine (127.0.0.1 / localhost / ::1)")
    headers = {"X-API-Key": args.key} if args.key else {}
    httpx.post(f"{args.url}/v1/search", json={"text": "warm up"}, headers=headers, timeout=60).raise_for_status()
    rows = []
    for c in args.concurrency:
        before = httpx.get(f"{args.url}/readyz", timeout=10).json().get("batches", {})
        row = (run_wrk(args.url, c, args.max_seconds, args.key) if args.client == "wrk"
               else run(args.url, c, args.requests, args.max_seconds, headers))
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
