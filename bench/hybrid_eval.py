"""Hybrid (dense + BM25) vs dense on the held-out keyword queries, with a given bundle (no training).

    python bench/hybrid_eval.py CATALOG --bundle B [--recipe full|title] [--titles N] --out OUT.md

Runs `enclip_qdrant.evaluation.run.evaluate` unchanged except for two knobs a benchmark needs:
`--titles N` scores only the first N title queries (title rows are dense-only and unchanged by hybrid; all
2,025 of them cost ~25 min of query encoding on a shared machine), and `--recipe title` indexes the text vector
from the title alone instead of title + categorical fields (the keyword queries are built from those fields,
so the full recipe partly reads the answer: the title-only recipe is the conservative figure).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from enclip_qdrant.collection.text import TextRecipe
from enclip_qdrant.evaluation import run as evaluation
from enclip_qdrant.indexing import run as indexing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("catalog")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--recipe", choices=("full", "title"), default="full")
    ap.add_argument("--titles", type=int, default=50)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    real_titles = evaluation.title_queries
    evaluation.title_queries = lambda test: real_titles(test)[: a.titles]  # type: ignore[assignment]
    if a.recipe == "title":
        indexing.text_recipe = lambda catalog: TextRecipe(fields=())  # type: ignore[assignment]
    report = evaluation.evaluate(a.catalog, bundle=a.bundle, seed=0, test_fraction=0.2)
    Path(a.out).write_text(report.to_markdown())
    Path(a.out).with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=1))
    print(report.to_markdown())


if __name__ == "__main__":
    main()
