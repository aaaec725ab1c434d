"""Peak memory of `index` on 12-megapixel photos vs 60x80 thumbnails: it must follow the batch, not the photos.

    .venv/bin/python bench/image_memory.py [N] [--workdir DIR] [--bundle DIR] [--batch-size 256]

Writes N 4000x3000 JPEGs (noise tile + shapes, quality 85) and N 60x80 ones into two catalogs, trains a
1-member tiny bundle on the small one (unless --bundle), indexes each catalog in its own subprocess and
reports each child's peak RSS (VmHWM: ru_maxrss would include the parent's pages at fork time).
Target: big within 1.5x of small. `--code DIR` runs the indexing children on another checkout's
`enclip_qdrant` (e.g. the previous commit, via `git archive`) to compare. Existing catalogs and bundle
in --workdir are reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = ("red", "blue", "green", "black", "yellow", "white")
ARTICLES = ("dress", "handbag", "sneakers", "cap")


def make_catalog(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    """`root/images/<id>.jpg` + captions.csv; noise keeps JPEGs realistically large, shapes make them differ."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    tile = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    w, h = size
    reps = (h // 256 + 2, w // 256 + 2, 1)
    base = np.tile(tile, reps)
    rows = []
    for i in range(n):
        dy, dx = rng.integers(0, 256, 2)
        im = Image.fromarray(base[dy:dy + h, dx:dx + w])
        draw = ImageDraw.Draw(im)
        colour, article = COLOURS[i % len(COLOURS)], ARTICLES[i % len(ARTICLES)]
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            draw.rectangle((x0, y0, x0 + w // 3, y0 + h // 3), fill=colour)
        pid = str(10000 + i)
        im.save(root / "images" / f"{pid}.jpg", "JPEG", quality=85)
        rows.append({"id": pid, "image": f"images/{pid}.jpg", "title": f"{colour} {article}"})
    with (root / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "title"])
        writer.writeheader()
        writer.writerows(rows)
    return root


CHILD = """
import sys, json, time
import enclip_qdrant
from enclip_qdrant import api
t = time.perf_counter()
r = api.index(sys.argv[1], bundle=sys.argv[2], collection="bench", batch_size=int(sys.argv[4]),
              conn=api.Connection(home=sys.argv[3]))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"added": r.added, "failed": len(r.failed), "seconds": round(time.perf_counter() - t, 1),
                  "peak_rss_mb": round(hwm / 1024, 1), "code": enclip_qdrant.__path__[0]}))
"""
TRAIN = """
import sys
from enclip_qdrant import TrainConfig, train
train(sys.argv[1], out=sys.argv[2], config=TrainConfig(members=1, preset="tiny", epochs=1, seed=0, clusters=2))
"""


def index_in_child(catalog: Path, bundle: Path, home: Path, batch_size: int, code: Path | None) -> dict[str, float]:
    shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code.resolve()), env.get("PYTHONPATH")) if p)
    # cwd: `python -c` puts the current folder first on sys.path, which would shadow --code
    proc = subprocess.run([sys.executable, "-c", CHILD, str(catalog), str(bundle), str(home), str(batch_size)],
                          stdout=subprocess.PIPE, text=True, env=env, check=False, cwd=home.parent)
    if proc.returncode:
        raise SystemExit(f"indexing {catalog} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", nargs="?", type=int, default=1000, help="images per catalog (default 1000)")
    ap.add_argument("--workdir", type=Path, help="where to write the catalogs (default: a temp folder)")
    ap.add_argument("--bundle", type=Path, help="a trained bundle (default: train a tiny 1-member one)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--code", type=Path, help="folder holding the enclip_qdrant to benchmark (default: installed)")
    args = ap.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="enclip-image-memory-"))).resolve()
    t0 = time.perf_counter()
    small, big = work / "small", work / "big"
    for cat, size, seed in ((small, (60, 80), 1), (big, (4000, 3000), 2)):
        if not (cat / "captions.csv").is_file() or len((cat / "captions.csv").read_text().splitlines()) != args.n + 1:
            make_catalog(cat, args.n, size, seed=seed)
    gen = time.perf_counter() - t0
    disk_mb = sum(p.stat().st_size for p in (big / "images").iterdir()) / 2**20
    bundle = args.bundle
    if bundle is None:  # in a child too: this process stays small
        bundle = work / "bundle"
        if not (bundle / "manifest.json").is_file():
            subprocess.run([sys.executable, "-c", TRAIN, str(small), str(bundle)], check=True)
    results = {}
    for name, cat in (("60x80", small), ("4000x3000", big)):
        results[name] = index_in_child(cat, bundle, work / f"home-{name}", args.batch_size, args.code)
    ratio = results["4000x3000"]["peak_rss_mb"] / results["60x80"]["peak_rss_mb"]
    print(json.dumps({"n": args.n, "batch_size": args.batch_size, "generate_s": round(gen, 1),
                      "big_jpegs_mb": round(disk_mb), "index": results, "ratio": round(ratio, 2),
                      "target": "<= 1.5", "ok": ratio <= 1.5}, indent=1))


if __name__ == "__main__":
    main()
