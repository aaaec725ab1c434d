"""How a query searches: its options and their defaults, one value each. Kept apart from `search.py` so the
CLI and `api` can name them without loading the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from enclip_qdrant.errors import QueryError
from enclip_qdrant.store.base import Fusion, SearchParams

ClusterMode = Literal["auto", "all"] | Sequence[int]

# Routing searches the most likely clusters until their (calibrated) probability reaches this. On held-out
# fashion-dev queries (13 clusters), 0.9 searched 2.4 clusters and cost 0.5 points of R@10; 0.8 cost 1.1.
DEFAULT_THRESHOLD = 0.9
DEFAULT_MAX_CLUSTERS = 3
DEFAULT_OVERSAMPLE = 4
# The text list's say against the whole ensemble: its RRF terms weigh this x the number of members
# (search.hybrid_vectors; 0: dense only). Chosen in BENCHMARKS.md, "Fusion".
DEFAULT_TEXT_WEIGHT = 2.0


@dataclass(frozen=True)
class SearchOptions:
    """How one query searches; checked on construction so a bad value fails before any encoding."""

    top_k: int = 10
    clusters: ClusterMode = "auto"  # routing, every cluster, or these cluster ids
    fusion: Fusion = "rrf"
    threshold: float = DEFAULT_THRESHOLD  # routing: probability mass to cover
    max_clusters: int = DEFAULT_MAX_CLUSTERS  # routing cap
    oversample: int = DEFAULT_OVERSAMPLE  # each member's prefetch is top_k x this
    explain: bool = False  # also rank with each member alone
    text_weight: float = DEFAULT_TEXT_WEIGHT  # the text list's say vs all members (x members); 0: off
    hnsw_ef: int | None = None  # HNSW candidates per list (None: Qdrant's default): higher finds more, slower
    exact: bool = False  # score every vector, no HNSW: evaluation, and the reference for recall

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise QueryError("--top-k must be at least 1")
        if self.fusion not in ("rrf", "dbsf"):
            raise QueryError(f"unknown fusion {self.fusion!r}: use rrf or dbsf")
        if not 0.0 <= self.threshold <= 1.0:
            raise QueryError(f"--threshold must be between 0 and 1, not {self.threshold!r}")
        if not 0 <= self.text_weight < float("inf"):
            raise QueryError(f"--text-weight must be a number >= 0, not {self.text_weight!r}")
        if self.fusion == "dbsf" and self.text_weight not in (0.0, 1.0, DEFAULT_TEXT_WEIGHT):  # DBSF: one member
            raise QueryError("--text-weight needs RRF fusion: DBSF cannot weight its sources")
        if self.max_clusters < 1 or self.oversample < 1:
            raise QueryError("--max-clusters and --oversample must be at least 1")
        if self.hnsw_ef is not None and (isinstance(self.hnsw_ef, bool) or not isinstance(self.hnsw_ef, int)
                                         or self.hnsw_ef < 1):
            raise QueryError(f"--hnsw-ef must be a whole number >= 1, not {self.hnsw_ef!r}")

    def search_params(self) -> SearchParams:
        """What the store sends with every list's search."""
        return SearchParams(hnsw_ef=self.hnsw_ef, exact=self.exact)


FILTER_HELP = ("field=value; the value is matched as the type the collection stores for that field (text "
               "stays text: code=001 matches '001'; year=2012 matches the number when year holds numbers). "
               "Repeat a field to match any of its values. Decimal-number fields cannot be filtered.")


def parse_clusters(value: str | ClusterMode) -> ClusterMode:
    """`--clusters`: 'auto', 'all' or ids like '3,7' (',' alone is an error, not 'all')."""
    if not isinstance(value, str):
        return [int(c) for c in value]
    text = value.strip().lower()
    if text in ("auto", "all"):
        return text  # type: ignore[return-value]
    return parse_cluster_list(value)


def parse_filters(specs: Sequence[str] | None) -> dict[str, list[str]]:
    """`--filter field=value` (repeatable) -> {field: [values]}. Values stay strings: `search` gives them
    the type the collection stores, so '001' is never turned into the number 1."""
    parsed: dict[str, list[str]] = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise QueryError(f"--filter takes field=value, not {spec!r}")
        parsed.setdefault(key.strip(), []).append(value.strip())
    return parsed


def parse_cluster_list(text: str, k: int | None = None) -> list[int]:
    """'3,7' -> [3, 7]. An empty list (',' or '') is an error, never a silent "search everything";
    with `k`, ids must be in 0..k-1."""
    items = [t.strip() for t in text.split(",")]
    if not any(items) or not all(items) or not all(t.isdigit() for t in items):
        raise QueryError(f"--clusters must be auto, all or cluster ids like 3,7; not {text!r}")
    ids = list(dict.fromkeys(int(t) for t in items))
    bad = [c for c in ids if k is not None and not 0 <= c < k]
    if bad:
        raise QueryError(f"no cluster {bad[0]}: clusters are 0..{k - 1 if k else 0}")
    return ids
