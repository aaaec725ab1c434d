"""Peak memory of `train` (tiny preset, one member, one epoch) on N big photos: it must not grow with N.

    nice -n 10 timeout 7200 .venv/bin/python bench/train_memory.py ../shared/data/fashion-dev \\
        --sizes 600 1800 8000 [--workdir DIR] [--code DIR]

Makes N products by upscaling fashion-dev photos (60x80) to 1200x1600 JPEGs (quality 90; a few pixels of each
are set from its number). Encoding is the slow part (a shared 2-core machine makes about 4 a second), so only the
first --unique products are encoded; each later one is a byte copy of one of them with its number in a JPEG
comment segment: other bytes (another sha256, so its own cache entry), the same decoding work. One catalog per N
over one shared image folder, then trains each in its own child process and reports the child's peak RSS (VmHWM of
the training process) and the peak of its whole process tree (data-loader workers included, sampled every
0.2 s; shared pages count once per process, so the tree figure is an upper bound). `--code DIR` runs the
children on another checkout's `enclip_qdrant` (e.g. `git archive <commit> | tar -x -C DIR`) to compare.
Existing images in --workdir are reused.
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
from PIL import Image

SIZE = (1200, 1600)

CHILD = """
import json, resource, sys, time
from enclip_qdrant import api
from enclip_qdrant.training.config import TrainConfig
t = time.perf_counter()
bundle = api.train(sys.argv[1], out=sys.argv[2], config=TrainConfig(members=1, preset="tiny", epochs=1))
print(json.dumps({"seconds": round(time.perf_counter() - t, 1),
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "r10": bundle.manifest["validation"]["ensemble"]["r@10"]}))
"""


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: another file, the same pixels."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def make_images(source: Path, images: Path, n: int, unique: int) -> list[dict[str, str]]:
    """The first n products (reusing files already made), as catalog rows."""
    with (source / "captions.csv").open(newline="", encoding="utf-8") as f:
        src = [r for r in csv.DictReader(f) if r.get("productDisplayName")]
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        r = src[i % len(src)]
        pid = f"p{i:06d}"
        path = images / f"{pid}.jpg"
        if not path.is_file() and i >= unique:
            base = (images / f"p{i % unique:06d}.jpg").read_bytes()
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(_with_comment(base, pid))
            os.replace(tmp, path)
        elif not path.is_file():
            im = Image.open(source / r["image"]).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
            px = np.asarray(im).copy()
            px[:4, :24] = np.frombuffer(i.to_bytes(4, "little") * 18, dtype=np.uint8).reshape(4, 6, 3).repeat(4, 1)
            tmp = path.with_suffix(".tmp")
            Image.fromarray(px).save(tmp, "JPEG", quality=90)
            os.replace(tmp, path)
        if i >= unique:
            r = src[(i % unique) % len(src)]
        rows.append({"id": pid, "image": f"images/{pid}.jpg", "title": r["productDisplayName"]})
    return rows


def make_catalog(workdir: Path, rows: list[dict[str, str]]) -> Path:
    root = workdir / f"catalog-{len(rows)}"
    root.mkdir(exist_ok=True)
    link = root / "images"
    if not link.exists():
        link.symlink_to(workdir / "images", target_is_directory=True)
    with (root / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "title"])
        w.writeheader()
        w.writerows(rows)
    return root


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(catalog: Path, out: Path, code: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(catalog), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=out.parent)
    peak_tree = peak_main = 0
    while proc.poll() is None:
        peak_tree = max(peak_tree, sum(_status_kib(p, "VmRSS") for p in _tree(proc.pid)))
        peak_main = max(peak_main, _status_kib(proc.pid, "VmHWM"))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"training {catalog} failed: {stderr.strip().splitlines()[-1:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_main_mib"] = max(peak_main / 1024, result["maxrss_mib"])
    result["peak_tree_mib"] = peak_tree / 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="fashion-dev (captions.csv + images/)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[600, 1800, 8000])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    ap.add_argument("--code", type=Path, default=None, help="another checkout's root to run the children on")
    ap.add_argument("--unique", type=int, default=2000, help="products encoded; later ones are byte variants")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--make-only", action="store_true", help="make the photos and catalogs, train nothing")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="train-memory-") if args.workdir is None else None
    workdir = Path(tmp.name) if tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    print("| code | products | peak RSS, train process (MiB) | peak RSS, process tree (MiB) | seconds | val R@10 |")
    print("|---|---|---|---|---|---|")
    try:
        for n in sorted(args.sizes):
            t = time.perf_counter()
            rows = make_images(args.source, workdir / "images", n, args.unique)
            catalog = make_catalog(workdir, rows)
            print(f"# {n} photos ready in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            if args.make_only:
                continue
            out = workdir / f"bundle-{n}-{time.time_ns()}"
            r = run_child(catalog, out, args.code)
            shutil.rmtree(out, ignore_errors=True)
            print(f"| {args.label} | {n:,} | {r['peak_main_mib']:.0f} | {r['peak_tree_mib']:.0f} | {r['seconds']:.0f} "
                  f"| {r['r10']:.3f} |", flush=True)
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
