"""Throughput of each size preset on this machine: training pairs/s and encoding images/s, texts/s.

This is how the presets were sized: `small` must train 5 members over ~10k pairs in about 30 minutes.

    python bench/presets.py ../shared/data/fashion-dev --pairs 1024
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from enclip_qdrant.catalog.images import bound_for
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.engine.torch.members import Ensemble
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.training.config import TrainConfig
from enclip_qdrant.training.jobs import train_member
from enclip_qdrant.training.members import new_member
from enclip_qdrant.training.presets import PRESETS, get_preset
from enclip_qdrant.training.run import load_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("catalog")
    ap.add_argument("--pairs", type=int, default=1024, help="training pairs per measurement")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = ap.parse_args()
    cat = load_catalog(args.catalog, require_text=True)
    products = [p for p in cat.products if p.text][: args.pairs + 256]
    cache = tempfile.TemporaryDirectory(prefix="presets-cache-")
    sizes = [get_preset(n).preprocess_cfg()["size"] for n in args.presets]
    pairs = load_pairs(products, Path(cache.name), bound_for(sizes), NullProgress())
    train_idx, val_idx = np.arange(args.pairs), np.arange(args.pairs, len(products))
    print("| preset | params (M) | train pairs/s | encode images/s | encode texts/s | 5 members x 1 epoch of 10k |")
    print("|---|---|---|---|---|---|")
    for name in args.presets:
        preset = get_preset(name)
        member = new_member("m0", preset, seed=0)
        params = sum(p.numel() for p in member.model.parameters()) / 1e6
        cfg = TrainConfig(preset=name, epochs=1, precision="fp32").resolved()
        report = train_member(member, pairs, train_idx, val_idx, cfg, 0, NullProgress(), name)
        ens = Ensemble([member])
        images = pairs.images[:1024]
        t = time.perf_counter()
        ens.encode_images(images)
        ips = len(images) / (time.perf_counter() - t)
        t = time.perf_counter()
        ens.encode_texts(pairs.texts[:1024])
        tps = min(1024, len(pairs.texts)) / (time.perf_counter() - t)
        per_epoch_min = 5 * 10_000 / report["pairs_per_second"] / 60
        print(f"| {name} | {params:.1f} | {report['pairs_per_second']:.0f} | {ips:.0f} | {tps:.0f} | "
              f"{per_epoch_min:.1f} min |")


if __name__ == "__main__":
    main()
