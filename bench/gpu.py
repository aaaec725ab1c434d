"""Throughput per device: training pairs/s, index (image encoding) images/s and query encoding latency.

    nice -n 10 timeout 1800 .venv/bin/python bench/gpu.py [CATALOG] [--preset small] [--pairs 2048]

Runs on every device torch has here (cpu, and cuda / mps when present; says in one line when there is no GPU):
one member of the preset trained for one epoch on `--pairs` products (the run's image cache, data-loader workers
sized to the machine, mixed precision as `train` picks it), the trained member encoding every cached image in
batches of 256 (what `index --engine torch` does per batch), and one-text query encodings (p50 of 50, after
warm-up). Without CATALOG a synthetic one is made in a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from enclip_qdrant.catalog.images import bound_for
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.engine.torch.members import Ensemble
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.training.config import TrainConfig
from enclip_qdrant.training.jobs import Pairs, train_member
from enclip_qdrant.training.members import new_member
from enclip_qdrant.training.presets import get_preset
from enclip_qdrant.training.run import load_pairs


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def measure(device: str, pairs: Pairs, preset: str, n_train: int) -> dict[str, float | str]:
    cfg = TrainConfig(preset=preset, epochs=1, device=device, text_encoder="none", field_cols="none").resolved()
    member = new_member("m0", get_preset(preset), seed=0)
    idx = np.arange(len(pairs.ids))
    report = train_member(member, pairs, idx[:n_train], idx[n_train:], cfg, 0, NullProgress(), device)
    ens = Ensemble([member]).to(torch.device(device))
    ens.encode_images(pairs.images[:256])  # warm-up (CUDA kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    ens.encode_images(pairs.images)
    images_per_s = len(pairs.images) / (time.perf_counter() - t)
    queries = [pairs.texts[i % len(pairs.texts)] for i in range(60)]
    times = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        ens.encode_texts([q])
        if i >= 10:
            times.append((time.perf_counter() - t) * 1000)
    return {"device": device, "precision": report["precision"], "train_pairs_s": report["pairs_per_second"],
            "index_images_s": round(images_per_s), "query_ms_p50": round(statistics.median(times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalog", nargs="?", type=Path, default=None)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--pairs", type=int, default=2048, help="training pairs (the rest of the products, up to 512, "
                                                             "validate)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench-gpu-")
    root = args.catalog or make_catalog(Path(tmp.name) / "catalog", n=args.pairs + 256, seed=0)
    products = [p for p in load_catalog(root, require_text=True).products if p.text][:args.pairs + 512]
    size = get_preset(args.preset).preprocess_cfg()["size"]
    pairs = load_pairs(products, Path(tmp.name) / "run", bound_for([size]), NullProgress())
    n_train = min(args.pairs, len(products) - 16)
    found = devices()
    if len(found) == 1:
        print("no GPU present (torch sees neither CUDA nor MPS): CPU row only")
    rows = [measure(d, pairs, args.preset, n_train) for d in found]
    print(f"| device | precision | train pairs/s ({args.preset}) | index images/s | query encode p50 (ms) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['precision']} | {r['train_pairs_s']} | {r['index_images_s']} | "
              f"{r['query_ms_p50']} |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
