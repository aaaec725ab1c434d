"""The evaluation report: rows, query sets, markdown and the best-value marks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from enclip_qdrant.evaluation.protocol import TASKS, ProtocolRow

RowKind = Literal["member", "ensemble", "routed", "hybrid"]


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
