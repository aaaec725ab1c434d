"""How a query searches: its options and their defaults, one value each. Kept apart from `search.py` so the
CLI and `api` can name them without loading the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import QueryError
from .store.base import Fusion

ClusterMode = Literal["auto", "all"] | Sequence[int]

# Routing searches the most likely clusters until their (calibrated) probability reaches this. On held-out
# fashion-dev queries (13 clusters), 0.9 searched 2.4 clusters and cost 0.5 points of R@10; 0.8 cost 1.1.
DEFAULT_THRESHOLD = 0.9
DEFAULT_MAX_CLUSTERS = 3
DEFAULT_OVERSAMPLE = 4


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

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise QueryError("--top-k must be at least 1")
        if self.fusion not in ("rrf", "dbsf"):
            raise QueryError(f"unknown fusion {self.fusion!r}: use rrf or dbsf")
        if not 0.0 <= self.threshold <= 1.0:
            raise QueryError(f"--threshold must be between 0 and 1, not {self.threshold!r}")
        if self.max_clusters < 1 or self.oversample < 1:
            raise QueryError("--max-clusters and --oversample must be at least 1")
