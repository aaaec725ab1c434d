"""Speed of the ENCLIP pipeline with real models, side by side, as ratios.

- training: pairs/s of members trained one after another (`--parallel 1`) vs side by side, each in its
  own process on its share of the cores, in fp32 and in bf16 autocast;
- indexing: images/s and its split into decode, encode (all members) and upsert, and the peak RSS;
- warm queries (encode + search, one process): one member with a plain single-vector query vs the
  N-member ENCLIP query (every member encodes, the router picks clusters, one fused filtered query),
  for text and image queries; the peak RSS of the query process.

Each part runs in a fresh process, so peak RSS belongs to that part alone.

    python bench/pipeline.py /work/shared/data/fashion-dev --bundle /tmp/fd2/.enclip/bundles/fashion-dev

The bundle is any trained bundle (`enclip-qdrant train`); training is measured on fresh members of the
bundle's preset, over `--train-pairs` catalog products.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import random
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def part_train(catalog: Any, preset: str, members: int, pairs: int, epochs: int, parallel: int,
               precision: str) -> dict[str, Any]:
    from enclip_qdrant import TrainConfig, train

    sub = dataclasses.replace(catalog, products=catalog.with_text()[:pairs], skipped=[])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(sub, Path(tmp) / "b", TrainConfig(members=members, preset=preset, epochs=epochs, parallel=parallel,
                                               precision=precision, clusters=2))
        wall = time.perf_counter() - t0
        reports = [json.loads(p.read_text()) for p in sorted(Path(tmp, "b", "members").glob("*/report.json"))]
    phase = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    workers = [r["peak_rss_mib"] for r in reports] if parallel > 1 else []
    trained = sum(r["pairs_per_second"] * r["seconds"] for r in reports)
    return {"parallel": parallel, "precision": precision, "members": members, "phase_s": round(phase, 1),
            "wall_s": round(wall, 1), "pairs_per_s": round(trained / phase, 1),
            "member_pairs_per_s": [r["pairs_per_second"] for r in reports],
            "val_r10": [round(r["val"]["r@10"], 3) for r in reports], "peak_rss_mib": round(peak_rss_mib()),
            "peak_worker_rss_mib": max(workers, default=None)}


def part_index(catalog: Any, bundle: str, images: int, home: str) -> dict[str, Any]:
    from enclip_qdrant.api import Connection, index

    sub = dataclasses.replace(catalog, products=catalog.products[:images] if images else catalog.products)
    report = index(sub, bundle=bundle, collection="bench", conn=Connection(home=home))
    n = report.embedded
    tm = report.timings
    return {"images": n, "seconds": report.seconds, "timings_s": tm, "images_per_s": round(n / report.seconds, 1),
            "split_images_per_s": {k: round(n / v, 1) if v else None for k, v in tm.items()},
            "peak_rss_mib": round(peak_rss_mib())}


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2)}


def part_query(catalog: Any, home: str, n_text: int, n_image: int, seed: int) -> dict[str, Any]:
    from PIL import Image

    from enclip_qdrant.api import Connection, Searcher

    rng = random.Random(seed)
    texts = [p.text for p in rng.sample(catalog.with_text(), min(n_text, len(catalog.with_text())))]
    photos = []
    for p in rng.sample(catalog.products, min(n_image, len(catalog.products))):
        with Image.open(p.image) as im:
            photos.append(im.convert("RGB"))
    out: dict[str, Any] = {"text_queries": len(texts), "image_queries": len(photos)}
    with Searcher("bench", conn=Connection(home=home), engine="torch") as s:  # single_* use a torch member
        member = s.bundle.ensemble.members[0]
        physical = s.store.resolve("bench")
        out["members"] = len(s.bundle.ensemble.members)
        out["points"] = s.store.info(physical).points

        def single_text(q: str) -> None:
            s.store.query_each(physical, {member.name: member.encode_texts([q])[0]}, limit=10)

        def single_image(im: Image.Image) -> None:
            pixels = member.preprocess(im).unsqueeze(0)
            s.store.query_each(physical, {member.name: member.encode_pixels(pixels)[0]}, limit=10)

        shapes = {
            ("text", "1 member, single-vector query"): (single_text, texts),
            ("text", "N members, routed fused query"): (lambda q: s.search(q), texts),
            ("image", "1 member, single-vector query"): (single_image, photos),
            ("image", "N members, routed fused query"): (lambda im: s.search(image=im), photos),
        }
        for fn, items in shapes.values():  # warm-up: first calls allocate and fill caches
            for item in items[:5]:
                fn(item)
        rows = []
        for (kind, shape), (fn, items) in shapes.items():
            samples = []
            for item in items:
                t0 = time.perf_counter()
                fn(item)
                samples.append(time.perf_counter() - t0)
            rows.append({"query": kind, "shape": shape, **_percentiles(samples)})
        encode, search = [], []
        for q in texts:
            r = s.search(q)
            encode.append(r.timings_ms["encode"] / 1e3)
            search.append(r.timings_ms["search"] / 1e3)
        out["enclip_text_split_ms"] = {"encode": _percentiles(encode), "search": _percentiles(search)}
    out["rows"] = rows
    out["peak_rss_mib"] = round(peak_rss_mib())
    return out


def run(fn: Any, *args: Any) -> Any:
    """One part in a fresh interpreter, so its peak memory and warm-up are its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("catalog")
    ap.add_argument("--bundle", required=True, help="a trained bundle folder")
    ap.add_argument("--parts", nargs="+", default=["train", "index", "query"], choices=["train", "index", "query"])
    ap.add_argument("--train-members", type=int, default=5)
    ap.add_argument("--train-pairs", type=int, default=1536)
    ap.add_argument("--train-epochs", type=int, default=1)
    ap.add_argument("--train-runs", nargs="+", default=["1:fp32", "1:bf16", "2:fp32", "2:bf16"],
                    help="MEMBERS_AT_ONCE:PRECISION per run; repeat one to see the machine's noise")
    ap.add_argument("--index-images", type=int, default=0, help="0: the whole catalog")
    ap.add_argument("--text-queries", type=int, default=200)
    ap.add_argument("--image-queries", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from enclip_qdrant.bundle.manifest import read_manifest
    from enclip_qdrant.catalog.load import load_catalog
    from enclip_qdrant.system import available_cores
    from enclip_qdrant.training.config import native_bf16

    catalog = load_catalog(args.catalog)
    preset = read_manifest(Path(args.bundle)).get("preset") or "small"
    result: dict[str, Any] = {"cores": available_cores(), "torch": torch.__version__, "native_bf16": native_bf16(),
                              "catalog": args.catalog, "bundle": args.bundle, "preset": preset}
    print(f"machine: {result['cores']} cores, torch {torch.__version__}, native bf16: {native_bf16()}; "
          f"catalog {args.catalog} ({len(catalog)} products); bundle {args.bundle} (preset {preset})")

    if "train" in args.parts:
        rows = []
        for spec in args.train_runs:
            parallel, precision = spec.split(":")
            rows.append(run(part_train, catalog, preset, args.train_members, args.train_pairs, args.train_epochs,
                            int(parallel), precision))
            print(f"  trained: {rows[-1]}", flush=True)
        base = rows[0]["pairs_per_s"]
        print(f"\n### Training ({args.train_members} `{preset}` members x {args.train_pairs} pairs x "
              f"{args.train_epochs} epoch)\n")
        print("| members at once | precision | pairs/s (all members) | x vs first run | per member pairs/s "
              "| val R@10 | peak RSS MiB (main / largest worker) |\n|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['parallel']} | {r['precision']} | {r['pairs_per_s']} | {r['pairs_per_s'] / base:.2f} | "
                  f"{', '.join(map(str, r['member_pairs_per_s']))} | {', '.join(map(str, r['val_r10']))} | "
                  f"{r['peak_rss_mib']} / {r['peak_worker_rss_mib'] or '-'} |")
        result["train"] = rows

    with tempfile.TemporaryDirectory() as home:
        if "index" in args.parts or "query" in args.parts:
            ix = run(part_index, catalog, args.bundle, args.index_images, home)
            result["index"] = ix
            tm = ix["timings_s"]
            total = sum(tm.values())
            print(f"\n### Indexing ({ix['images']} images, every member)\n")
            print("| step | seconds | share | images/s |\n|---|---|---|---|")
            for k in ("decode", "encode", "upsert"):
                print(f"| {k} | {tm[k]:.1f} | {tm[k] / total:.0%} | {ix['split_images_per_s'][k]} |")
            print(f"| **whole run** | {ix['seconds']:.1f} | | **{ix['images_per_s']}** |")
            print(f"\npeak RSS of the indexing process: {ix['peak_rss_mib']} MiB")
        if "query" in args.parts:
            q = run(part_query, catalog, home, args.text_queries, args.image_queries, args.seed)
            result["query"] = q
            print(f"\n### Warm queries ({q['points']} points, {q['members']} members; {q['text_queries']} text and "
                  f"{q['image_queries']} image queries from the catalog)\n")
            print("| query | shape | p50 ms | p95 ms | N ÷ 1 (p50) |\n|---|---|---|---|---|")
            single = {r["query"]: r["p50"] for r in q["rows"] if r["shape"].startswith("1 member")}
            for r in q["rows"]:
                ratio = "" if r["shape"].startswith("1 member") else f"{r['p50'] / single[r['query']]:.2f}"
                print(f"| {r['query']} | {r['shape']} | {r['p50']} | {r['p95']} | {ratio} |")
            sp = q["enclip_text_split_ms"]
            print(f"\nN-member text query split, p50: encode {sp['encode']['p50']} ms, "
                  f"search {sp['search']['p50']} ms; peak RSS of the query process: {q['peak_rss_mib']} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
