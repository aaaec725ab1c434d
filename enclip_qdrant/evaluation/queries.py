"""The held-out split and its query sets: titles, shopper keywords, a user's query file."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enclip_qdrant.catalog.fields import field_value
from enclip_qdrant.catalog.model import Catalog, Product
from enclip_qdrant.errors import CatalogError, QueryError
from enclip_qdrant.training.config import MIN_PAIRS

MIN_TEST = 20
ATTRIBUTES = ("articleType", "baseColour")  # what "the same kind of product" means for title queries
TITLES, QUERIES, KEYWORDS = "titles", "queries", "keywords"
# Shopper keyword queries are made from these categorical columns when the catalog has them (fashion-dev does):
# "<type>", "<colour> <type>", "<gender> <type>", with the values' own spelling (singular/plural as the data has it).
TYPE_FIELD, KEYWORD_FIELDS = "articleType", ("baseColour", "gender")
MIN_KEYWORD_RELEVANT = 10  # a keyword query needs this many relevant test products, so P@10 can reach 1


@dataclass(frozen=True)
class EvalQuery:
    text: str
    relevant: frozenset[str]  # test product ids
    target: Product | None  # the title's own product; None for a queries-file line
    attributes: dict[str, Any]  # what the top k should match for attribute precision; empty: not measured


# --------------------------------------------------------------------------- split and queries


def split_test(products: Sequence[Product], test_fraction: float, seed: int,
               whole: bool = False) -> tuple[list[str], list[str]]:
    """(train ids, test ids) over products with text: sorted ids shuffled by `seed`, so a split is reproducible.

    `whole`: a given bundle may be tested on every product (`test_fraction` 1: nothing to train on)."""
    if not (0 < test_fraction < 1 or (whole and test_fraction == 1)):
        raise CatalogError(f"--test-fraction must be between 0 and 1{' (1: the whole catalog)' if whole else ''}, "
                           f"not {test_fraction}")
    ids = sorted(p.id for p in products if p.text)
    random.Random(seed).shuffle(ids)
    if test_fraction == 1:
        if len(ids) < MIN_TEST:
            raise CatalogError(f"an evaluation needs at least {MIN_TEST} products with text; this catalog has "
                               f"{len(ids)}")
        return [], ids
    n_test = max(MIN_TEST, int(round(len(ids) * test_fraction)))
    if len(ids) - n_test < MIN_PAIRS:
        raise CatalogError(f"an evaluation needs at least {MIN_TEST + MIN_PAIRS} products with text "
                           f"({MIN_TEST} to test, {MIN_PAIRS} to train); this catalog has {len(ids)}")
    return ids[n_test:], ids[:n_test]


def _same(a: Any, b: Any) -> bool:
    """Queries-file values match catalog fields loosely ("black" == "Black", "2012" == 2012)."""
    if isinstance(b, list):
        return any(_same(a, v) for v in b)
    return a is not None and str(a).strip().casefold() == str(b).strip().casefold()


def title_queries(test: Sequence[Product]) -> list[EvalQuery]:
    by_title: dict[str, set[str]] = {}
    for p in test:
        by_title.setdefault(p.text or "", set()).add(p.id)
    return [EvalQuery(p.text or "", frozenset(by_title[p.text or ""]), p,
                      {a: p.fields[a] for a in ATTRIBUTES} if all(p.fields.get(a) is not None for a in ATTRIBUTES)
                      else {})
            for p in test]


def keyword_queries(test: Sequence[Product], min_relevant: int = MIN_KEYWORD_RELEVANT) -> list[EvalQuery]:
    """Short shopper queries from the catalog's categorical fields: every product type, and every (colour, type)
    and (gender, type) pair, with at least `min_relevant` test products; relevant = all the query's fields match.

    Generated from the held-out products' field values only (never from titles), lower-cased as people type them.
    Empty when the catalog has no TYPE_FIELD column.
    """
    groups: dict[tuple[tuple[str, str], ...], set[str]] = {}
    for p in test:
        kind = p.fields.get(TYPE_FIELD)
        if kind is None or not str(kind).strip():
            continue
        keys = [((TYPE_FIELD, str(kind).strip()),)]
        for f in KEYWORD_FIELDS:
            v = p.fields.get(f)
            if field_value(v) is not None:
                keys.append(((f, str(v).strip()), (TYPE_FIELD, str(kind).strip())))
        for k in keys:
            groups.setdefault(k, set()).add(p.id)
    out = []
    for key, ids in sorted(groups.items()):
        if len(ids) >= min_relevant:
            text = " ".join(v for _, v in key).lower()
            out.append(EvalQuery(text, frozenset(ids), None, dict(key)))
    return out


def read_queries(path: str | Path, catalog: Catalog) -> list[dict[str, Any]]:
    """JSONL lines `{"query": "...", "relevant": {"field": value or [values]}}`; mistakes name their line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise QueryError(f"cannot read the queries file {path}: {e}") from e
    known = {k for p in catalog.products for k in p.fields}
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise QueryError(f"{path.name} line {n}: not JSON") from None
        text, rel = (obj.get("query"), obj.get("relevant")) if isinstance(obj, dict) else (None, None)
        if not isinstance(text, str) or not text.strip() or not isinstance(rel, dict) or not rel:
            raise QueryError(f'{path.name} line {n}: expected {{"query": "...", "relevant": {{"field": value}}}}')
        unknown = sorted(set(rel) - known)
        if unknown:
            raise QueryError(f"{path.name} line {n}: no catalog column {unknown[0]!r} "
                             f"(columns: {', '.join(sorted(known))})")
        out.append({"query": text.strip(), "relevant": rel})
    if not out:
        raise QueryError(f"{path.name} holds no queries")
    return out


def file_queries(spec: Sequence[Mapping[str, Any]], test: Sequence[Product]) -> tuple[list[EvalQuery], int]:
    """The queries with at least one relevant test product, and how many had none (they cannot be scored)."""
    out = []
    for q in spec:
        rel = frozenset(p.id for p in test if all(_same(p.fields.get(k), v) for k, v in q["relevant"].items()))
        if rel:
            out.append(EvalQuery(q["query"], rel, None, dict(q["relevant"])))
    return out, len(spec) - len(out)


def chance_recall(queries: Sequence[EvalQuery], n: int, ks: Sequence[int]) -> dict[int, float]:
    """Expected recall@k of a uniformly random ranking of the n test products (hypergeometric)."""
    return {k: float(np.mean([1 - math.comb(n - len(q.relevant), min(k, n)) / math.comb(n, min(k, n))
                              for q in queries])) for k in ks}
