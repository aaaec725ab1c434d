"""Held-out `eval` of field-aware training against plain training: same split, seed and recipe, one flag apart.

    HF_HUB_OFFLINE=1 nice -n 10 python bench/field_eval.py /work/shared/data/fashion-dev --field-cols auto \
        --members 1 --home /tmp/fields-eval/home-b --out /tmp/fields-eval/b

This is `enclip-qdrant eval CATALOG --members N --text-encoder minilm --seed 0` (20 % held out, titles and keyword
queries, dense and hybrid rows) with `--field-cols`, which `eval` does not take: the same `api.evaluate` call
with the TrainConfig built by the CLI's own `train_config`. Writes OUT.md (eval's markdown) and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from enclip_qdrant import api
from enclip_qdrant.cli.options import train_config
from enclip_qdrant.progress import NullProgress


class Log(NullProgress):
    def log(self, msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)


def _reuse(src: Path, catalog: str, seed: int, config, workdir: Path) -> None:
    """Copy src's plan, text cache and members where `evaluate` will train this config: training resumes them."""
    import dataclasses

    from enclip_qdrant.evaluation.queries import split_test
    from enclip_qdrant.evaluation.run import train_dir

    cat = api.open_catalog(catalog, None, True, NullProgress())
    _, test_ids = split_test(cat.products, 0.2, seed)
    train_cat = dataclasses.replace(cat, products=[p for p in cat.products if p.id not in set(test_ids)])
    dst = train_dir(workdir, train_cat, config)
    if dst.exists():
        return
    (dst / "members").mkdir(parents=True)
    for name in ("training.json", "text_features.safetensors"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    for m in sorted((src / "members").iterdir()):
        shutil.copytree(m, dst / "members" / m.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("catalog")
    ap.add_argument("--field-cols", default="auto")
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reuse", type=Path, default=None, help="an earlier run's bundle folder (same split and "
                    "settings, fewer members): its members are kept and only the missing ones are trained")
    a = ap.parse_args()
    config = train_config(a.members, "small", a.epochs, None, a.seed, "auto", "seed", None, None,
                          text_encoder=a.text_encoder, field_cols=a.field_cols)
    workdir = api.eval_workdir(a.catalog, api.Connection(a.home))
    if a.reuse is not None:
        _reuse(a.reuse, a.catalog, a.seed, config, workdir)
    t0 = time.time()
    report = api.evaluate(a.catalog, config=config, seed=a.seed, workdir=workdir, progress=Log())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=1))
    a.out.with_suffix(".md").write_text(report.to_markdown())
    print(report.to_markdown(), f"\n(evaluated in {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
