"""Cluster labels as the manifest records them, checked on load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enclip_qdrant.bundle.names import MANIFEST
from enclip_qdrant.files import read_json


def check_labels(clusters: Mapping[str, Any]) -> str | None:
    """What is wrong with a manifest's `clusters.labels` (absent is fine: bundles made before labels)."""
    labels = clusters.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return "'clusters.labels' must be a list of strings"
    k = clusters.get("k")
    if isinstance(k, int) and len(labels) != k:
        return f"'clusters.labels' has {len(labels)} labels for {k} clusters"
    return None


def manifest_labels(manifest: Mapping[str, Any]) -> dict[int, str]:
    """{cluster: label} from a manifest; {} when it has none (or they are malformed)."""
    clusters = manifest.get("clusters")
    if not isinstance(clusters, Mapping) or clusters.get("labels") is None or check_labels(clusters):
        return {}
    return {i: label for i, label in enumerate(clusters["labels"]) if label}


def bundle_labels(bundle_path: str | Path | None, fingerprint: str | None = None) -> dict[int, str]:
    """The labels of the bundle at `bundle_path`, read from its manifest without loading any model;
    {} when the bundle is not on this machine, has no labels, or is not the one with `fingerprint`
    (a folder retrained since would label other clusters)."""
    if not bundle_path:
        return {}
    manifest = read_json(Path(bundle_path) / MANIFEST)
    if not isinstance(manifest, dict) or (fingerprint and manifest.get("fingerprint") != fingerprint):
        return {}
    return manifest_labels(manifest)
