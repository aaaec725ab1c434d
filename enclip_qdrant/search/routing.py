"""Query-time routing: cluster probabilities -> the clusters a query searches."""

from __future__ import annotations

import numpy as np

from enclip_qdrant.bundle.manifest import Bundle
from enclip_qdrant.errors import QueryError
from enclip_qdrant.search.options import (
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_THRESHOLD,
    ClusterMode,
)


def route(probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
          max_clusters: int = DEFAULT_MAX_CLUSTERS) -> list[tuple[int, float]]:
    """The fewest most-likely clusters whose probability mass reaches `threshold`, at most `max_clusters`."""
    order = np.argsort(-probs)
    chosen: list[tuple[int, float]] = []
    mass = 0.0
    for c in order[:max(1, max_clusters)]:
        chosen.append((int(c), float(probs[c])))
        mass += float(probs[c])
        if mass >= threshold:
            break
    return chosen


def choose_clusters(bundle: Bundle, probs: np.ndarray, clusters: ClusterMode = "auto",
                    threshold: float = DEFAULT_THRESHOLD,
                    max_clusters: int = DEFAULT_MAX_CLUSTERS) -> list[tuple[int, float]]:
    """The clusters a query searches, as (id, probability); empty means all. Public so the query service's
    /v1/encode hands an application the same cluster filter that `search` uses."""
    if clusters == "all" or bundle.clusters.k == 1:
        return []
    if clusters == "auto":
        return route(probs, threshold, max_clusters)
    ids = [int(c) for c in clusters]
    bad = [c for c in ids if not 0 <= c < bundle.clusters.k]
    if bad:
        raise QueryError(f"no cluster {bad[0]}: this bundle has clusters 0..{bundle.clusters.k - 1}")
    return [(c, float(probs[c])) for c in ids]
