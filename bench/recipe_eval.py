"""Train the held-out split of `enclip-qdrant eval` once with N members, then derive smaller ensembles.

    python bench/recipe_eval.py /work/shared/data/fashion-dev --work /tmp/quality-eval --members 5 --subsets 3 \
        --text-encoder minilm

Same split as `eval` (seed 0, 20 % held out). The N-member bundle trains in WORK/b<N>; each subset M < N is a
copy of its first M members (resumed: only clusters and routers are refitted). Then every bundle is evaluated
with `evaluate(bundle=...)` (titles + keyword queries) and the reports are written as JSON and markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from enclip_qdrant.catalog.open import open_catalog
from enclip_qdrant.evaluation.queries import split_test
from enclip_qdrant.evaluation.run import evaluate
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.training.config import TrainConfig
from enclip_qdrant.training.run import train


class Log(NullProgress):
    def log(self, msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("catalog")
    ap.add_argument("--work", required=True)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--subsets", type=int, nargs="*", default=[3])
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--train-only", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cat = open_catalog(a.catalog, None, True, NullProgress())
    _, test_ids = split_test(cat.products, 0.2, a.seed)
    test = set(test_ids)
    train_cat = dataclasses.replace(cat, products=[p for p in cat.products if p.id not in test])
    cfg = dict(members=a.members, text_encoder=a.text_encoder, epochs=a.epochs, seed=a.seed)
    full = work / f"b{a.members}"
    if not a.eval_only:
        t0 = time.time()
        train(train_cat, full, TrainConfig(**cfg), Log())
        print(f"trained {a.members} members in {time.time() - t0:.0f} s", flush=True)
        for m in a.subsets:
            sub = work / f"b{m}"
            if not (sub / "manifest.json").is_file():
                shutil.rmtree(sub, ignore_errors=True)
                (sub / "members").mkdir(parents=True)
                shutil.copy(full / "training.json", sub / "training.json")
                for f in full.glob("text_features.safetensors"):
                    shutil.copy(f, sub / f.name)
                for i in range(m):
                    shutil.copytree(full / "members" / f"m{i}", sub / "members" / f"m{i}")
                train(train_cat, sub, TrainConfig(**(cfg | {"members": m})), Log())
    if a.train_only:
        return
    for m in [a.members, *a.subsets]:
        b = work / f"b{m}"
        t0 = time.time()
        rep = evaluate(a.catalog, bundle=b, seed=a.seed, progress=Log())
        (work / f"eval-b{m}.json").write_text(json.dumps(rep.to_dict(), indent=1))
        (work / f"eval-b{m}.md").write_text(rep.to_markdown())
        print(rep.to_markdown(), f"\n(evaluated in {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
