"""Hostile load on a running query service (issue 20's take-downs) while a watcher runs normal queries.

    enclip-qdrant serve --collection shop --max-queue 4 --port 8080 &
    python bench/hostile_load.py http://127.0.0.1:8080 --pid $! [--home HOME --other COLLECTION]

Phases, one after another, each bounded in requests and seconds: quiet; listing (GET /v1/collections, then,
with --home/--other, another store opens a collection the service does not serve); half-open (70 sockets
holding an unfinished request line); tiny uploads (40 concurrent 3 KB 1-bit PNGs of 5000x4999); filters
(concurrent 300 KB bodies with 20,000 distinct filter fields). Per phase: the watcher's queries, errors,
p50/p99 (ms), the attack's answers by status, and the service's peak RSS (from /proc/PID/status, --pid).
Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import httpx
from PIL import Image
from serve_load import QUERIES, loopback, percentile


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Watcher:
    """Normal text queries one after another; latencies and errors are read per phase."""

    def __init__(self, url: str, headers: dict[str, str], pid: int | None) -> None:
        self.url, self.headers, self.pid = url, headers, pid
        self.lat: list[float] = []
        self.errors: Counter[str] = Counter()
        self.peak = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.lat, self.errors, self.peak = [], Counter(), rss_mb(self.pid)

    def run(self) -> None:
        with httpx.Client(timeout=30, headers=self.headers) as h:
            i = 0
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = h.get(f"{self.url}/v1/search", params={"text": QUERIES[i % len(QUERIES)], "top_k": 10})
                    code = None if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as e:
                    code = type(e).__name__
                ms = (time.perf_counter() - t0) * 1e3
                with self.lock:
                    if code is None:
                        self.lat.append(ms)
                    else:
                        self.errors[code] += 1
                i += 1
                time.sleep(0.02)

    def sample_rss(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.05)


def together(n: int, fn) -> Counter[str]:
    out: Counter[str] = Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            code = str(fn(i))
        except Exception as e:  # an attack's own failure is counted, never raised
            code = type(e).__name__
        with lock:
            out[code] += 1
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--pid", type=int, help="the service's process id, for its RSS")
    ap.add_argument("--key", help="the service's API key")
    ap.add_argument("--home", help="embedded store home (with --other: the listing phase opens that collection)")
    ap.add_argument("--other", help="a collection in --home that the service does not serve")
    ap.add_argument("--hold", type=float, default=15.0, help="seconds the half-open sockets are held")
    ap.add_argument("--quiet", type=float, default=10.0, help="seconds of the quiet phase")
    args = ap.parse_args()
    if not loopback(args.url):
        raise SystemExit("hostile_load.py only runs against a loopback URL")
    url = args.url.rstrip("/")
    headers = {"X-API-Key": args.key} if args.key else {}
    host, port = urlparse(url).hostname, urlparse(url).port or 80
    watcher = Watcher(url, headers, args.pid)
    threads = [threading.Thread(target=watcher.run, daemon=True), threading.Thread(target=watcher.sample_rss,
                                                                                   daemon=True)]
    for t in threads:
        t.start()

    def listing() -> Counter[str]:
        out = together(20, lambda i: httpx.get(f"{url}/v1/collections", headers=headers, timeout=30).status_code)
        if args.home and args.other:
            # in another process: qdrant-edge holds the GIL while it opens a shard, which would stall this
            # process's watcher thread and show up as the service's latency
            probe = subprocess.run(
                [sys.executable, "-c", "import sys; from enclip_qdrant.store import EdgeStore\n"
                 "with EdgeStore(sys.argv[1]) as s:\n    s.count(sys.argv[2])", args.home, args.other],
                capture_output=True, text=True, timeout=120)
            if probe.returncode == 0:
                out["other collection opened"] += 1
            else:
                out[f"other collection: {(probe.stderr.strip().splitlines() or ['?'])[-1][:60]}"] += 1
        return out

    def half_open() -> Counter[str]:
        socks = []
        for _ in range(70):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"GET /v1/search?text=dre")
            socks.append(s)
        time.sleep(args.hold)
        closed = 0
        for s in socks:
            s.settimeout(0.2)
            with contextlib.suppress(OSError):
                closed += s.recv(1) == b""
            s.close()
        return Counter({"closed by the service": closed, "still open": 70 - closed})

    buf = io.BytesIO()
    Image.new("1", (5000, 4999)).save(buf, "PNG")
    png = buf.getvalue()

    def uploads() -> Counter[str]:
        return together(40, lambda i: httpx.post(f"{url}/v1/search", headers=headers, timeout=60, files={
            "image": ("b.png", png, "image/png")}).status_code)

    body = json.dumps({"text": "dress", "filter": [f"field{i}=x" for i in range(20_000)]})

    def filters() -> Counter[str]:
        return together(8, lambda i: httpx.post(f"{url}/v1/search", timeout=60, content=body, headers={
            **headers, "content-type": "application/json"}).status_code)

    phases = [("quiet", lambda: time.sleep(args.quiet) or Counter()), ("listing", listing),
              ("half-open", half_open), ("tiny uploads", uploads), ("filters", filters)]
    print(f"PNG {len(png):,} bytes, filter body {len(body):,} bytes")
    print("| phase | watcher queries | errors | p50 ms | p99 ms | attack answers | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name, attack in phases:
        watcher.reset()
        answers = attack()
        time.sleep(1.0)  # the watcher's queries right after the attack count too
        with watcher.lock:
            lat, errors, peak = list(watcher.lat), dict(watcher.errors), watcher.peak
        print(f"| {name} | {len(lat) + sum(errors.values())} | {errors or 0} | {percentile(lat, 50):.1f} | "
              f"{percentile(lat, 99):.1f} | {dict(answers) or '-'} | {peak:.0f} |", flush=True)
    watcher.stop.set()


if __name__ == "__main__":
    main()
