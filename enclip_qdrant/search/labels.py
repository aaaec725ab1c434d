"""Cluster labels added to a search response."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def label_response(resp: Any, labels: Mapping[int, str]) -> Any:
    """Name the routed clusters and each result's cluster in a `SearchResponse` (in place; returned)."""
    if labels:
        for c in resp.clusters:
            if c.get("id") in labels:
                c["label"] = labels[c["id"]]
        for r in resp.results:
            r.cluster_label = labels.get(r.cluster) if isinstance(r.cluster, int) else None
    return resp
