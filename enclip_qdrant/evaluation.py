"""Held-out evaluation: does the ensemble with cluster routing beat a single CLIP on *this* catalog?

A seeded share of the products is held out, the ensemble is trained on the rest (or a given bundle is
checked never to have seen them), and the held-out products are indexed into a throw-away embedded
collection. Every ranking (each member alone, the fused ensemble, the ensemble with routing) answers
the same queries on the same split; each query is encoded once and its vectors reused for every row,
so the latency column is the store's search time alone.

    from enclip_qdrant.evaluation import evaluate
    print(evaluate("./shop", config=TrainConfig(members=3, preset="tiny")).to_markdown())
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.metrics import ndcg_score

from .bundle import Bundle, load_bundle, seen_product_ids
from .catalog import Catalog, Product
from .clustering import route
from .errors import BundleError, CatalogError, QueryError
from .fields import field_value
from .indexing import index_catalog, point_id
from .lexical import TextRecipe
from .load import open_catalog
from .meta import read_meta
from .progress import NullProgress, Progress
from .protocol import TASKS, ProtocolRow, read_protocol, restrict
from .protocol import score as protocol_score
from .search import (
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_OVERSAMPLE,
    DEFAULT_TEXT_WEIGHT,
    DEFAULT_THRESHOLD,
    EncodedQuery,
    encode_query,
    hybrid_vectors,
    text_filters,
)
from .store import EdgeStore, Hit, SearchFilter, Store
from .training import MIN_PAIRS, TrainConfig, train

MIN_TEST = 20
ATTRIBUTES = ("articleType", "baseColour")  # what "the same kind of product" means for title queries
TITLES, QUERIES, KEYWORDS = "titles", "queries", "keywords"
# Shopper keyword queries are made from these categorical columns when the catalog has them (fashion-dev does):
# "<type>", "<colour> <type>", "<gender> <type>", with the values' own spelling (singular/plural as the data has it).
TYPE_FIELD, KEYWORD_FIELDS = "articleType", ("baseColour", "gender")
MIN_KEYWORD_RELEVANT = 10  # a keyword query needs this many relevant test products, so P@10 can reach 1
COLLECTION = "enclip-eval"

RowKind = Literal["member", "ensemble", "routed", "hybrid"]
# --text-weight values the hybrid rows try (the BM25 list's RRF weight is this x the number of members).
HYBRID_WEIGHTS = (DEFAULT_TEXT_WEIGHT, 1.0, 4.0)


@dataclass(frozen=True)
class EvalQuery:
    text: str
    relevant: frozenset[str]  # test product ids
    target: Product | None  # the title's own product; None for a queries-file line
    attributes: dict[str, Any]  # what the top k should match for attribute precision; empty: not measured


@dataclass(frozen=True)
class _Ranking:
    name: str
    kind: RowKind
    fusion: Literal["rrf", "dbsf"] | None = None  # None: a member's own nearest-neighbour search
    member: str | None = None
    routing: tuple[float, int] | None = None  # (threshold, max_clusters)
    text_weight: float | None = None  # hybrid rows: the BM25 prefetch's RRF weight


@dataclass
class EvalRow:
    query_set: str  # "titles" or "queries" (the --queries file)
    ranking: str
    kind: RowKind
    queries: int
    recall: dict[int, float]  # k -> share of queries with a relevant product in the top k
    mrr: float
    ndcg: float  # at top_k, binary relevance
    attribute_precision: float | None  # None: the catalog has no articleType/baseColour to compare
    routing_accuracy: float | None  # routed rows only
    clusters_searched: float | None  # mean per query, routed rows only
    latency_ms: float  # mean store search time per query (encoding excluded, reported once)
    type_precision: float | None = None  # share of the top k with the query's product type (TYPE_FIELD)

    def metrics(self, top_k: int) -> dict[str, float | None]:
        """The table's columns in display order; shared by the JSON, markdown and terminal outputs."""
        out: dict[str, float | None] = {f"recall@{k}": v for k, v in self.recall.items()}
        out |= {"mrr": self.mrr, f"ndcg@{top_k}": self.ndcg, f"type_precision@{top_k}": self.type_precision,
                f"attribute_precision@{top_k}": self.attribute_precision,
                "routing_accuracy": self.routing_accuracy, "clusters_searched": self.clusters_searched,
                "latency_ms": self.latency_ms}
        return out


@dataclass
class QuerySetInfo:
    queries: int
    skipped: int  # queries-file lines no test product satisfies: they cannot be scored
    chance: dict[int, float]  # expected recall@k of a random ranking, the floor every row must clear


@dataclass
class EvalReport:
    catalog: str
    bundle_fingerprint: str
    bundle_path: str | None  # None when the bundle was trained in a temporary folder, now deleted
    trained: bool  # False: a given bundle was evaluated
    seed: int
    test_fraction: float
    top_k: int
    train_products: int | None  # products the bundle learnt from; None for a given bundle
    test_products: int
    clusters: int
    query_sets: dict[str, QuerySetInfo]
    encode_ms: float  # mean per distinct query text, all members
    seconds: dict[str, float]
    rows: list[EvalRow]
    test_ids: list[str] = field(default_factory=list, repr=False)
    protocol: list[ProtocolRow] = field(default_factory=list)  # --protocol: the public benchmark's rows
    protocol_dir: str | None = None

    def rows_for(self, query_set: str) -> list[EvalRow]:
        return [r for r in self.rows if r.query_set == query_set]

    def columns(self) -> list[str]:
        """Metric columns with a value in at least one row (attribute precision needs catalog fields)."""
        if not self.rows:
            return []
        names = list(self.rows[0].metrics(self.top_k))
        return [n for n in names if any(r.metrics(self.top_k)[n] is not None for r in self.rows)]

    def to_dict(self) -> dict[str, Any]:
        cols = self.columns()
        return {
            "catalog": self.catalog,
            "bundle": {"fingerprint": self.bundle_fingerprint, "path": self.bundle_path, "trained": self.trained},
            "split": {"seed": self.seed, "test_fraction": self.test_fraction, "train": self.train_products,
                      "test": self.test_products},
            "top_k": self.top_k,
            "clusters": self.clusters,
            "query_sets": {name: dataclasses.asdict(info) for name, info in self.query_sets.items()},
            "encode_ms": self.encode_ms,
            "seconds": self.seconds,
            "rows": [{"query_set": r.query_set, "ranking": r.ranking, "kind": r.kind, "queries": r.queries}
                     | {c: r.metrics(self.top_k)[c] for c in cols} for r in self.rows],
            "protocol": {"folder": self.protocol_dir,
                         "rows": [{"task": r.task, "ranking": r.ranking, "queries": r.queries} | r.metrics
                                  for r in self.protocol]} if self.protocol else None,
        }

    def protocol_tables(self) -> list[tuple[str, list[str], list[ProtocolRow]]]:
        """(title, metric columns, rows) per protocol task, for the markdown and terminal outputs."""
        out = []
        for task in dict.fromkeys(r.task for r in self.protocol):
            rows = [r for r in self.protocol if r.task == task]
            title = (f"{task} ({TASKS.get(task, '')}): {rows[0].queries} queries, relevance restricted to the "
                     f"{self.test_products} held-out products")
            out.append((title, list(rows[0].metrics), rows))
        return out

    def to_markdown(self) -> str:
        """One table per query set, best value per column in bold; ready to paste into an issue."""
        cols = self.columns()
        lines = [f"Held-out evaluation of bundle `{self.bundle_fingerprint}` on {self.test_products} test products "
                 f"({self.train_products or 'unknown'} train, seed {self.seed}); {self.clusters} clusters; "
                 f"encoding a query takes {self.encode_ms:.1f} ms, latency_ms is the search alone. "
                 f"Routed rows are the RRF ensemble searching only the query's predicted clusters."]
        for name, info in self.query_sets.items():
            rows = self.rows_for(name)
            chance = ", ".join(f"R@{k} {v:.3f}" for k, v in info.chance.items())
            lines += ["", f"**{name}**: {_plural(info.queries, 'query', 'queries')}"
                      + (f" ({info.skipped} skipped: no relevant test product)" if info.skipped else "")
                      + f"; a random ranking scores {chance}.", ""]
            lines.append("| ranking | " + " | ".join(cols) + " |")
            lines.append("|---|" + "---:|" * len(cols))
            best = best_values(rows, cols, self.top_k)
            for r in rows:
                m = r.metrics(self.top_k)
                cells = [_cell(c, m[c], bold=m[c] is not None and m[c] == best.get(c)) for c in cols]
                lines.append(f"| {r.ranking} | " + " | ".join(cells) + " |")
        for title, cols, prows in self.protocol_tables():
            lines += ["", f"**protocol {title}**", "", "| ranking | " + " | ".join(cols) + " |",
                      "|---|" + "---:|" * len(cols)]
            best = {c: max(r.metrics[c] for r in prows) for c in cols}
            lines += [f"| {r.ranking} | " + " | ".join(_cell(c, r.metrics[c], r.metrics[c] == best[c]) for c in cols)
                      + " |" for r in prows]
        return "\n".join(lines) + "\n"


def best_values(rows: Sequence[EvalRow], cols: Sequence[str], top_k: int) -> dict[str, float]:
    """Per column, the value to highlight: highest, or lowest for latency; none where all rows tie."""
    best: dict[str, float] = {}
    for c in cols:
        vals = [v for r in rows if (v := r.metrics(top_k)[c]) is not None]
        if len(set(vals)) > 1 and c != "clusters_searched":
            best[c] = min(vals) if c == "latency_ms" else max(vals)
    return best


def format_value(col: str, value: float | None) -> str:
    if value is None:
        return ""
    return {"latency_ms": f"{value:.2f}", "clusters_searched": f"{value:.1f}"}.get(col, f"{value:.3f}")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _cell(col: str, value: float | None, bold: bool) -> str:
    text = format_value(col, value)
    return f"**{text}**" if bold and text else text


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


# --------------------------------------------------------------------------- metrics


def ndcg_at(flags: Sequence[bool], n_relevant: int, k: int) -> float:
    """Binary-relevance nDCG@k of one ranking, with the ideal over *all* relevant products, not just the found ones.

    sklearn ranks the given items by score, so the retrieved list is followed by k non-relevant fillers
    (a short list is not credited with items it did not return) and then the relevant items it missed.
    """
    missing = max(0, n_relevant - sum(flags))
    y_true = np.array([[*map(float, flags), *[0.0] * k, *[1.0] * missing]])
    y_score = np.arange(y_true.shape[1], 0, -1, dtype=float)[None, :]
    return float(ndcg_score(y_true, y_score, k=k, ignore_ties=True))


def _row(query_set: str, ranking: _Ranking, queries: Sequence[EvalQuery], results: Sequence[list[str]],
         searched: Sequence[list[int] | None], latencies: Sequence[float], cluster_of: Mapping[str, int],
         by_id: Mapping[str, Product], ks: Sequence[int], top_k: int) -> EvalRow:
    first, ndcg, precision, type_precision, routed_ok = [], [], [], [], []
    for q, ids, clusters in zip(queries, results, searched, strict=True):
        flags = [i in q.relevant for i in ids[:top_k]]
        first.append(flags.index(True) + 1 if any(flags) else math.inf)
        ndcg.append(ndcg_at(flags, len(q.relevant), top_k))
        if q.attributes:
            precision.append(sum(all(_same(by_id[i].fields.get(a), v) for a, v in q.attributes.items())
                                 for i in ids[:top_k]) / top_k)
        if TYPE_FIELD in q.attributes:
            want = q.attributes[TYPE_FIELD]
            type_precision.append(sum(_same(by_id[i].fields.get(TYPE_FIELD), want) for i in ids[:top_k]) / top_k)
        if clusters is not None:
            routed_ok.append(_target_cluster(q, cluster_of) in clusters)
    ranks = np.array(first)
    return EvalRow(
        query_set=query_set, ranking=ranking.name, kind=ranking.kind, queries=len(queries),
        recall={k: float(np.mean(ranks <= k)) for k in ks}, mrr=float(np.mean(1.0 / ranks)),
        ndcg=float(np.mean(ndcg)), attribute_precision=float(np.mean(precision)) if precision else None,
        routing_accuracy=float(np.mean(routed_ok)) if routed_ok else None,
        clusters_searched=float(np.mean([len(c) for c in searched if c is not None]))
        if ranking.routing else None,
        latency_ms=round(float(np.mean(latencies)) * 1e3, 3),
        type_precision=float(np.mean(type_precision)) if type_precision else None)


def _target_cluster(q: EvalQuery, cluster_of: Mapping[str, int]) -> int:
    """The cluster the answer lives in: the title's own product's, else where most relevant products are."""
    if q.target is not None:
        return cluster_of[q.target.id]
    counts = Counter(cluster_of[i] for i in q.relevant)
    return min(counts, key=lambda c: (-counts[c], c))


# --------------------------------------------------------------------------- the run


def rankings(bundle: Bundle) -> list[_Ranking]:
    """Every member alone, the fused ensemble over all clusters, and the RRF ensemble restricted to the
    query's most likely cluster (top-1) or to the clusters `search` picks by default (p>=0.8, at most 3)."""
    out = [_Ranking(f"member {name}", "member", member=name) for name in bundle.vectors]
    out += [_Ranking("ensemble RRF", "ensemble", "rrf"), _Ranking("ensemble DBSF", "ensemble", "dbsf"),
            _Ranking("routed top-1", "routed", "rrf", routing=(0.0, 1)),
            _Ranking(f"routed p>={DEFAULT_THRESHOLD:g}", "routed", "rrf",
                     routing=(DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS))]
    return out


def hybrid_rankings(recipe: TextRecipe | None) -> list[_Ranking]:
    """The RRF ensemble plus the BM25 text prefetch (same single query), unrouted and routed, at a few weights;
    none when the collection has no text vector. Only for query sets whose words are not a product's own title."""
    if recipe is None:
        return []
    out = []
    for w in HYBRID_WEIGHTS:
        tag = "" if w == DEFAULT_TEXT_WEIGHT else f" w={w:g}"
        out += [_Ranking(f"hybrid RRF{tag}", "hybrid", "rrf", text_weight=w),
                _Ranking(f"hybrid routed p>={DEFAULT_THRESHOLD:g}{tag}", "hybrid", "rrf",
                         routing=(DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS), text_weight=w)]
    return out


DEFAULT_QUERY = "default query"


def protocol_rankings(bundle: Bundle, recipe: TextRecipe | None) -> list[_Ranking]:
    """What the public protocol scores: each member alone, the ensemble dense-only (RRF, DBSF), and the default
    query (`query TEXT` as shipped: hybrid when the collection has a text vector, routed)."""
    out = [_Ranking(f"member {name}", "member", member=name) for name in bundle.vectors]
    out += [_Ranking("ensemble RRF", "ensemble", "rrf"), _Ranking("ensemble DBSF", "ensemble", "dbsf")]
    if recipe is not None:
        out.append(_Ranking("hybrid RRF (all clusters)", "hybrid", "rrf", text_weight=DEFAULT_TEXT_WEIGHT))
    out.append(_Ranking(DEFAULT_QUERY, "hybrid" if recipe is not None else "routed", "rrf",
                        routing=(DEFAULT_THRESHOLD, DEFAULT_MAX_CLUSTERS),
                        text_weight=DEFAULT_TEXT_WEIGHT if recipe is not None else None))
    return out


def _run(store: Store, bundle: Bundle, ranking: _Ranking, q: EncodedQuery, top_k: int, text: str = "",
         recipe: TextRecipe | None = None) -> tuple[list[Hit], list[int] | None, float]:
    """One ranking for one encoded query: (hits, clusters searched or None when unrouted, search seconds)."""
    clusters: list[int] | None = None
    if ranking.routing is not None:
        threshold, max_clusters = ranking.routing
        clusters = [c for c, _ in route(q.cluster_probs, threshold, max_clusters)]
    flt = SearchFilter(clusters=clusters) if clusters is not None else None
    t0 = time.perf_counter()
    if ranking.member is not None:
        hits = store.query_each(COLLECTION, {ranking.member: q.vectors[ranking.member]}, limit=top_k)[ranking.member]
    else:
        vectors, weights = hybrid_vectors(q.vectors, text, recipe, ranking.text_weight or 0.0, ranking.fusion or "rrf")
        hits = store.query_fused(COLLECTION, vectors, limit=top_k, prefetch_limit=top_k * DEFAULT_OVERSAMPLE,
                                 fusion=ranking.fusion or "rrf", filter=flt, weights=weights,
                                 vector_filters=text_filters(vectors, q.vectors, flt))
    return hits, clusters, time.perf_counter() - t0


def _train_dir(workdir: Path, train_catalog: Catalog, config: TrainConfig) -> Path:
    """One folder per (training products, settings): re-running an interrupted evaluation resumes its training."""
    key = json.dumps([train_catalog.fingerprint(), config.resolved().to_dict()], sort_keys=True, default=str)
    return workdir / f"bundle-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def evaluate(catalog: str | Path | Catalog, *, bundle: str | Path | Bundle | None = None,
             config: TrainConfig | None = None, test_fraction: float | None = None, seed: int = 0,
             queries_file: str | Path | None = None, top_k: int = 10, workdir: str | Path | None = None,
             columns: Mapping[str, str | None] | None = None, progress: Progress | None = None,
             protocol: str | Path | None = None) -> EvalReport:
    """Train on a seeded split (or check `bundle` never saw it), then score every ranking on the held-out rest.

    `test_fraction`: share held out; None: 0.2 when training, the whole catalog (1) with a given `bundle`
    (a new catalog the bundle never saw). `workdir` keeps the trained bundle (re-running resumes it); without
    one it lives in a temporary folder. `protocol`: a folder of public ground truth (protocol.py) scored too.
    """
    if test_fraction is None:
        test_fraction = 1.0 if bundle is not None else 0.2
    progress = progress or NullProgress()
    if top_k < 1:
        raise QueryError("--top-k must be at least 1")
    t_start = time.perf_counter()
    cat = open_catalog(catalog, columns, True, progress)
    train_ids, test_ids = split_test(cat.products, test_fraction, seed, whole=bundle is not None)
    test_set = set(test_ids)
    by_id = {p.id: p for p in cat.products}
    test = [by_id[i] for i in sorted(test_ids)]
    spec = read_queries(queries_file, cat) if queries_file is not None else None
    tasks = read_protocol(protocol) if protocol is not None else []

    tmp = Path(tempfile.mkdtemp(prefix="enclip-eval-"))
    try:
        seconds: dict[str, float] = {}
        n_train: int | None = None
        t0 = time.perf_counter()
        if bundle is not None:
            b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
            seen = seen_product_ids(b.path) & test_set
            if seen:
                raise BundleError(
                    f"bundle {b.fingerprint} ({b.path}) was trained on {len(seen)} of the {len(test_ids)} test "
                    f"products, so it would be graded on answers it has seen. Evaluate without a bundle (one is "
                    f"trained on the rest of the catalog), or pass the bundle an earlier evaluation trained with "
                    f"its --seed and --test-fraction (given explicitly: with --bundle the default is the whole "
                    f"catalog)")
            trained, kept = False, str(b.path)
        else:
            config = config or TrainConfig()
            train_cat = dataclasses.replace(cat, products=[p for p in cat.products if p.id not in test_set])
            out = _train_dir(Path(workdir) if workdir else tmp, train_cat, config)
            progress.log(f"training on {len(train_ids)} products, holding out {len(test_ids)} for the test")
            b = load_bundle(out) if (out / "manifest.json").is_file() else train(train_cat, out, config, progress)
            trained, kept = True, str(out) if workdir else None
            n_train = len(train_ids)
        seconds["train"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        store = EdgeStore(tmp / "store")
        try:
            test_cat = dataclasses.replace(cat, products=test, skipped=[])
            indexed = index_catalog(test_cat, b, store, COLLECTION, progress=progress)
            if indexed.failed:
                raise CatalogError(f"{len(indexed.failed)} test images could not be read while indexing "
                                   f"(first: {indexed.failed[0][0]}: {indexed.failed[0][1]})")
            pid_of = {point_id(p.id): p.id for p in test}
            cluster_of = {pid_of[pid]: int(p["cluster"]) for pid, p in store.scroll(COLLECTION, ["cluster"])}
            seconds["index"] = round(time.perf_counter() - t0, 2)

            sets = {TITLES: title_queries(test)}
            skipped = {TITLES: 0}
            keywords = keyword_queries(test)
            if keywords:
                sets[KEYWORDS], skipped[KEYWORDS] = keywords, 0
            if spec is not None:
                sets[QUERIES], skipped[QUERIES] = file_queries(spec, test)
                if not sets[QUERIES]:
                    raise QueryError(f"no query in {queries_file} has a relevant product among the "
                                     f"{len(test)} test products")
            ks = [k for k in (1, 5, 10) if k < top_k] + [top_k]
            gt = {t.name: restrict(t, test_ids) for t in tasks}

            t0 = time.perf_counter()
            texts = list(dict.fromkeys([q.text for qs in sets.values() for q in qs]
                                       + [q for queries in gt.values() for q in queries]))
            encoded: dict[str, EncodedQuery] = {}
            task = progress.task("encoding queries", total=len(texts))
            for text in texts:
                encoded[text] = encode_query(b, text)
                task.advance()
            task.close()
            encode_ms = round((time.perf_counter() - t0) * 1e3 / max(1, len(texts)), 3)

            rows: list[EvalRow] = []
            recipe = read_meta(store, COLLECTION).text_recipe()
            # Title queries stay dense-only: a title found by its own words proves nothing.
            plans = {name: rankings(b) + (hybrid_rankings(recipe) if name != TITLES else []) for name in sets}
            task = progress.task("searching", total=sum(len(plans[n]) * len(qs) for n, qs in sets.items()))
            for name, qs in sets.items():
                for ranking in plans[name]:
                    results, searched, lat = [], [], []
                    for q in qs:
                        hits, clusters, s = _run(store, b, ranking, encoded[q.text], top_k, q.text, recipe)
                        results.append([str(h.payload.get("product_id")) for h in hits])
                        searched.append(clusters)
                        lat.append(s)
                        task.advance()
                    rows.append(_row(name, ranking, qs, results, searched, lat, cluster_of, by_id, ks, top_k))
            task.close()
            protocol_rows = _protocol_rows(store, b, gt, encoded, recipe, top_k, progress)
            seconds["queries"] = round(time.perf_counter() - t0, 2)
            store.delete_alias(COLLECTION)  # the name is an alias: drop refuses what one serves
            store.drop(indexed.physical)
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds["total"] = round(time.perf_counter() - t_start, 2)

    return EvalReport(
        catalog=str(cat.root), bundle_fingerprint=b.fingerprint, bundle_path=kept, trained=trained, seed=seed,
        test_fraction=test_fraction, top_k=top_k, train_products=n_train, test_products=len(test),
        clusters=b.clusters.k,
        query_sets={name: QuerySetInfo(len(qs), skipped[name], chance_recall(qs, len(test), ks))
                    for name, qs in sets.items()},
        encode_ms=encode_ms, seconds=seconds, rows=rows, test_ids=sorted(test_ids), protocol=protocol_rows,
        protocol_dir=str(protocol) if protocol is not None else None)


def _protocol_rows(store: Store, bundle: Bundle, gt: Mapping[str, Mapping[str, frozenset[str]]],
                   encoded: Mapping[str, EncodedQuery], recipe: TextRecipe | None, top_k: int,
                   progress: Progress) -> list[ProtocolRow]:
    plan = protocol_rankings(bundle, recipe)
    task = progress.task("protocol", total=len(plan) * sum(len(q) for q in gt.values()))
    rows = []
    for name, queries in gt.items():
        if not queries:
            continue
        for ranking in plan:
            results = []
            for text in queries:
                hits, _, _ = _run(store, bundle, ranking, encoded[text], top_k, text, recipe)
                results.append([str(h.payload.get("product_id")) for h in hits])
                task.advance()
            rows.append(ProtocolRow(name, ranking.name, len(queries),
                                    protocol_score(results, list(queries.values()), top_k)))
    task.close()
    return rows

