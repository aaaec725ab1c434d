"""ONNX Runtime vs torch on an indexed collection: cold start, warm query latency, indexing, memory, answers.

    python bench/engines.py --home .enclip --collection fashion-dev --catalog ../shared/data/fashion-dev

Measures, for each engine (each in its own fresh process, so imports and memory are honest):
  * cold `enclip-qdrant query "..."`: wall time of the whole command, and its peak RSS;
  * warm text and image queries end to end (encode + route + fused search), p50/p95 over --queries;
  * the same for a one-member view of the bundle (--single), to compare N members with 1;
  * indexing throughput: --index-images catalog images embedded by all members (encode only, and end to end
    into a scratch collection);
  * answers: on --parity queries, top-10 ids equal (ties aside) and max score difference, ONNX vs torch.
Prints a markdown table; numbers depend on what else runs on the machine (say so when reporting).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r'''
import json, statistics, sys, time
args = json.loads(sys.argv[1])
from PIL import Image
from enclip_qdrant import Connection, SearchOptions, Searcher
from enclip_qdrant.search.query import search
t0 = time.perf_counter()
s = Searcher(args["collection"], conn=Connection(home=args["home"]), engine=args["engine"])
load = time.perf_counter() - t0
b = s.bundle
if args.get("single"):
    ens = b.ensemble
    keep = ens.names[:1]
    if hasattr(ens, "members"):
        ens.members = [m for m in ens.members if m.name in keep]
        if hasattr(ens, "_pool"):
            ens._pool = None
    b.manifest = dict(b.manifest, members=[m for m in b.manifest["members"] if m["vector"] in keep])
texts = args["texts"]
images = [Image.open(p).convert("RGB") for p in args["images"]]
def timed(fn, items, warm=10):
    for it in items[:warm]:
        fn(it)
    out = []
    for it in items:
        t = time.perf_counter(); fn(it); out.append((time.perf_counter() - t) * 1e3)
    return out
opts = dict(options=SearchOptions(top_k=10))
if args.get("single"):  # the members' forward passes alone: one member vs all (routing needs all of them)
    ttext = timed(lambda q: b.ensemble.encode_texts([q]), texts)
    timg = timed(lambda im: b.ensemble.encode_images([im]), images)
    res = {"text_encode_ms": ttext, "image_encode_ms": timg}
else:
    ttext = timed(lambda q: search(b, s.store, s.collection, q, **opts), texts)
    timg = timed(lambda im: search(b, s.store, s.collection, None, image=im, **opts), images)
    etext = timed(lambda q: b.ensemble.encode_texts([q]), texts)
    eimg = timed(lambda im: b.ensemble.encode_images([im]), images)
    answers = {q: [(str(h.id), h.score) for h in search(b, s.store, s.collection, q, **opts).results]
               for q in args["parity"]}
    bulk = [Image.open(p).convert("RGB") for p in args["index_images"]]
    t = time.perf_counter(); b.embed_images(bulk); embed_s = time.perf_counter() - t
    res = {"load_s": load, "text_ms": ttext, "image_ms": timg, "text_encode_ms": etext, "image_encode_ms": eimg,
           "answers": answers, "embed_images_per_s": len(bulk) / embed_s}
res["peak_rss_mb"] = int([x for x in open("/proc/self/status") if x.startswith("VmHWM")][0].split()[1]) / 1024
print("RESULT" + json.dumps(res))
'''


def p(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def worker(args: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], capture_output=True, text=True,
                       timeout=3600)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    if not line:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-4000:])
    return json.loads(line[-1][6:])


def cold_query(home: str, collection: str, engine: str, text: str, runs: int) -> tuple[list[float], float]:
    """Wall time of a whole `enclip-qdrant query` process (the CLI's own entry point, run as the console
    script runs it) and its peak RSS (VmHWM: getrusage would count this parent's memory at fork time)."""
    code = ("import sys\nfrom enclip_qdrant.cli.app import main\n"
            f"sys.argv = ['enclip-qdrant', 'query', {text!r}, '--home', {home!r}, '--collection', {collection!r}, "
            f"'--engine', {engine!r}, '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n"
            "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].split()[1]\n"
            "print('RSS', int(hwm) / 1024, file=sys.stderr)\n")
    times, rss = [], 0.0
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - t)
        if r.returncode:
            raise SystemExit(r.stderr)
        rss = max(rss, float(r.stderr.strip().splitlines()[-1].split()[1]))
    return times, rss


def index_throughput(home: str, catalog: str, bundle: str, engine: str, n: int) -> float:
    """End to end `index` of the first n catalog rows into a scratch collection in a scratch home."""
    import csv

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(catalog)
        with open(src / "captions.csv", newline="") as f:
            rows = list(csv.DictReader(f))[:n]
        sub = Path(tmp) / "cat"
        (sub / "images").mkdir(parents=True)
        with open(sub / "captions.csv", "w", newline="") as f:  # a copy: paths out of a catalog are refused
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for row in rows:
                shutil.copyfile(src / row["image"], sub / row["image"])
                w.writerow(row)
        exe = str(Path(sys.executable).with_name("enclip-qdrant"))
        t = time.perf_counter()
        r = subprocess.run([exe, "index", str(sub), "--bundle", bundle, "--home", str(Path(tmp) / "home"),
                            "--collection", "scratch", "--engine", engine, "--json"], capture_output=True, text=True,
                           timeout=3600)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--parity", type=int, default=200)
    ap.add_argument("--index-images", type=int, default=1000)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=["onnx", "torch"])
    a = ap.parse_args()
    import csv

    with open(Path(a.catalog) / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    titles = [r["productDisplayName"] for r in rows]
    shopper = [f"{r['baseColour']} {r['articleType']}".lower() for r in rows]
    texts = (shopper[::7] + titles[::11])[:a.queries]
    parity = (titles[3::13] + shopper[5::17])[:a.parity]
    images = [str(Path(a.catalog) / r["image"]) for r in rows[::53]][:a.queries // 2]
    bulk = [str(Path(a.catalog) / r["image"]) for r in rows[:a.index_images]]
    from enclip_qdrant import Connection, Searcher

    with Searcher(a.collection, conn=Connection(home=a.home), engine="torch") as s:
        bundle = str(s.bundle.path)
        n_members = len(s.bundle.ensemble.names)
    base = {"home": a.home, "collection": a.collection, "texts": texts, "images": images, "parity": parity,
            "index_images": bulk}
    out: dict[str, dict] = {}
    for engine in a.engines:
        res = worker(base | {"engine": engine})
        one = worker(base | {"engine": engine, "single": True, "parity": [], "index_images": []})
        cold, cold_rss = cold_query(a.home, a.collection, engine, "black leather handbag", a.cold_runs)
        idx = index_throughput(a.home, a.catalog, bundle, engine, a.index_images)
        out[engine] = {"res": res, "one": one, "cold": cold, "cold_rss": cold_rss, "index": idx}
        print(f"{engine}: done", file=sys.stderr, flush=True)
    print(f"bundle {bundle}: {n_members} members; {len(texts)} text and {len(images)} image queries; "
          f"{os.cpu_count()} cores\n")
    print(f"| engine | cold query s (median of {a.cold_runs}) | cold query peak RSS MB | warm text p50/p95 ms "
          "| warm image p50/p95 ms | text encode p50 ms: N members / 1 | image encode p50 ms: N / 1 "
          "| embed images/s | index images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for engine, o in out.items():
        r, one = o["res"], o["one"]
        print(f"| {engine} | {statistics.median(o['cold']):.2f} | {o['cold_rss']:.0f} | "
              f"{p(r['text_ms'], .5):.1f} / {p(r['text_ms'], .95):.1f} | {p(r['image_ms'], .5):.1f} / "
              f"{p(r['image_ms'], .95):.1f} | {p(r['text_encode_ms'], .5):.2f} / {p(one['text_encode_ms'], .5):.2f} | "
              f"{p(r['image_encode_ms'], .5):.2f} / {p(one['image_encode_ms'], .5):.2f} | "
              f"{r['embed_images_per_s']:.0f} | {o['index']:.0f} |")
    if {"onnx", "torch"} <= set(out):
        a_, b_ = out["onnx"]["res"]["answers"], out["torch"]["res"]["answers"]
        same = sum([i for i, _ in a_[q]] == [i for i, _ in b_[q]] for q in a_)
        diff = max((abs(x[1] - y[1]) for q in a_ for x, y in zip(a_[q], b_[q], strict=False)), default=0.0)
        print(f"\nanswers: {same}/{len(a_)} queries with identical top-10 ids; max score difference {diff:.2e}")


if __name__ == "__main__":
    main()
