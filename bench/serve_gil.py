"""Why concurrency 8 tops out near 1.5x on the embedded store: the search holds the GIL.

Runs the query service's own search path (`Service.search`: micro-batched encoding, routing, one fused query,
the JSON rows) in process, from 1 and then 8 threads, in three modes that alternate for `--rounds` rounds:

- `embedded`: the collection's qdrant-edge shard, as `enclip-qdrant serve` runs it;
- `gil-free stand-in`: the same, except that each fused query returns the hits the embedded store returned for
  that query text beforehand, after sleeping for as long as that query took there (its median), under the
  lock the service puts around every call to the embedded store. A sleep releases the GIL the way a network
  call to a Qdrant server (`--url`) does; the results and the search's wall time are the embedded store's
  own. It measures what the service would do if the search did not hold the GIL. It is a stand-in, not a
  server: no server binary can run on the machine this was written on.
- `gil-free, no lock`: the stand-in without the store lock, so searches overlap as they would on a server with
  cores of its own. The service does not do this today on the embedded store (it serialises every store
  call there); with a server behind `--url` it gives each thread a client of its own. It shows the ceiling.

    python bench/serve_gil.py --home /tmp/new/.enclip --collection fashion-dev --seconds 6 --rounds 2

No HTTP: the same requests without the HTTP stack and the load generator sharing the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from typing import Any

from enclip_qdrant.api import Connection, Searcher
from enclip_qdrant.service.app import SearchRequest, ServeOptions, Service

QUERIES = ["red dress", "blue denim jeans", "black leather handbag", "white sneakers", "green cap", "yellow tshirt",
           "striped shirt", "floral summer dress", "brown watch", "pink sandals", "grey hoodie", "navy shorts"]


class StandIn:
    """The service's store, except `query_fused`: the embedded store's answer for the current thread's query
    text, after sleeping for that query's measured median time (the GIL is free meanwhile)."""

    def __init__(self, store: Any, answers: dict[str, tuple[list[Any], float]], current: threading.local,
                 lock: bool = True) -> None:
        self._store, self._answers, self._current = store, answers, current
        self._lock = store.lock if lock else contextlib.nullcontext()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def query_fused(self, *args: Any, **kwargs: Any) -> list[Any]:
        hits, seconds = self._answers[self._current.text]
        with self._lock:  # the service serialises store calls (LockedStore); a server call waits the same
            time.sleep(seconds)
        return list(hits)


def measure(svc: Service, threads: int, seconds: float, current: threading.local) -> float:
    done = [0] * threads
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            current.text = QUERIES[i % len(QUERIES)]
            svc.search(SearchRequest(text=current.text), None)
            done[k] += 1
            i += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=None, help="the workspace (default: ./.enclip or $ENCLIP_HOME)")
    ap.add_argument("--collection", default=None)
    ap.add_argument("--seconds", type=float, default=6.0, help="per concurrency and mode")
    ap.add_argument("--rounds", type=int, default=2, help="the modes alternate this many times (the machine drifts)")
    args = ap.parse_args()

    svc = Service(Searcher(args.collection, conn=Connection(home=args.home)), ServeOptions())
    current = threading.local()
    embedded = svc.store
    # each query's embedded answer and its median time there, one thread, after a warm-up
    answers: dict[str, tuple[list[Any], float]] = {}

    class Recorder(StandIn):
        def query_fused(self, *a: Any, **kw: Any) -> list[Any]:
            t0 = time.perf_counter()
            hits = self._store.query_fused(*a, **kw)
            times.append(time.perf_counter() - t0)
            answers[current.text] = (hits, 0.0)
            return hits

    svc.store = Recorder(embedded, answers, current)
    for q in QUERIES:
        times: list[float] = []
        current.text = q
        for _ in range(7):
            svc.search(SearchRequest(text=q), None)
        answers[q] = (answers[q][0], statistics.median(times[2:]))
    median_ms = statistics.median(s for _, s in answers.values()) * 1e3
    print(f"embedded fused query, median over the {len(QUERIES)} queries: {median_ms:.2f} ms")

    stores = {"embedded": embedded, "gil-free stand-in": StandIn(embedded, answers, current),
              "gil-free, no lock": StandIn(embedded, answers, current, lock=False)}
    rows: dict[str, list[tuple[float, float]]] = {mode: [] for mode in stores}
    for _ in range(args.rounds):
        for mode, store in stores.items():
            svc.store = store
            one = measure(svc, 1, args.seconds, current)
            eight = measure(svc, 8, args.seconds, current)
            rows[mode].append((one, eight))
            print(f"{mode:18s} c=1 {one:6.1f}/s  c=8 {eight:6.1f}/s  ratio {eight / one:.2f}", flush=True)
    print("\n| search | c=1 req/s | c=8 req/s | c=8 / c=1 |\n|---|---:|---:|---:|")
    for mode, runs in rows.items():
        ones, eights = [a for a, _ in runs], [b for _, b in runs]
        ratios = ", ".join(f"{b / a:.2f}" for a, b in runs)
        print(f"| {mode} | {statistics.mean(ones):.1f} | {statistics.mean(eights):.1f} | {ratios} |")
    svc.close()


if __name__ == "__main__":
    main()
