"""Backend-neutral helpers both stores share: names, the ownership marker, payload indexes, metadata copies,
hits and fusion checks. No qdrant-edge or qdrant-client import here, so either backend loads alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from enclip_qdrant.errors import QueryError, StoreError
from enclip_qdrant.store.base import CollectionSpec, Fusion, Hit, QueryVector, SparseVec, Vector

FORMAT = 1  # value of the "enclip_format" marker both backends write
MARKER = "enclip_format"
FUSIONS: tuple[str, ...] = ("rrf", "dbsf")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SCHEMA_TYPES = {t.lower(): t for t in ("Keyword", "Integer", "Float", "Bool", "Datetime", "Uuid", "Text")}


def check_name(name: str) -> str:
    """Names become folder names (and server collection names), so keep them path-safe everywhere."""
    if not isinstance(name, str) or not NAME.match(name):
        raise StoreError(
            f"invalid collection name {name!r}: use 1-128 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


def indexed_fields(spec: CollectionSpec) -> dict[str, str]:
    """The payload indexes a spec asks for, its options' extra ones included; `cluster` is always an
    integer index (routing needs it)."""
    fields = {str(k): str(v).lower() for k, v in spec.indexed_fields.items()}
    extra = spec.options.payload_indexes if spec.options else {}
    for key, kind in extra.items():
        key, kind = str(key), str(kind).lower()
        known = "integer" if key == "cluster" else fields.get(key, kind)
        if known != kind:
            raise StoreError(f"payload field {key!r} cannot be indexed both as {known} and as {kind}")
        fields[key] = kind
    fields["cluster"] = "integer"
    for key, kind in fields.items():
        if kind not in SCHEMA_TYPES:
            raise StoreError(f"unsupported index type {kind!r} for payload field {key!r}")
    return fields


def as_list(vector: Vector) -> list[float]:
    return np.asarray(vector, dtype=np.float32).reshape(-1).tolist()


def nonempty(vectors: Mapping[str, QueryVector]) -> dict[str, list[float] | SparseVec]:
    """The query's named vectors, dense ones as plain lists (sparse ones kept); none is the caller's mistake."""
    if not vectors:
        raise QueryError("a query needs at least one named vector")
    return {k: v if isinstance(v, SparseVec) else as_list(v) for k, v in vectors.items()}


def check_fusion(fusion: Fusion) -> Fusion:
    if fusion not in FUSIONS:
        raise QueryError(f"unknown fusion {fusion!r}: use 'rrf' or 'dbsf'")
    return fusion


def rrf_weights(names: list[str], fusion: Fusion, weights: Mapping[str, float] | None) -> list[float] | None:
    """Per-prefetch RRF weights in prefetch order, or None when all weigh 1 (plain RRF, the unchanged body).
    DBSF has no weights in Qdrant, so asking for any with it is an error rather than silently ignored."""
    if not weights or all(float(weights.get(n, 1.0)) == 1.0 for n in names):
        return None
    if fusion != "rrf":
        raise QueryError("prefetch weights need RRF fusion: DBSF cannot weight its sources")
    out = [float(weights.get(n, 1.0)) for n in names]
    if any(not w > 0 for w in out):
        raise QueryError(f"RRF weights must be > 0, not {out}")
    return out


def json_copy(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A detached, JSON-checked copy: metadata must survive a trip through a file or a server."""
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as e:
        raise StoreError(f"collection metadata must be JSON-able: {e}") from e


def hit(point: Any) -> Hit:
    """A backend's scored or retrieved point (both clients name the fields alike) as our Hit."""
    return Hit(id=str(point.id), score=float(getattr(point, "score", 0.0)), payload=dict(point.payload or {}))


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def refuse_drop(aliases: Mapping[str, str], name: str, location: str) -> None:
    """Dropping what an alias serves would leave the alias pointing at nothing."""
    if name in aliases:
        raise StoreError(f"{name!r} is an alias (of {aliases[name]!r}) in {location}, not a collection: "
                         "delete the alias instead")
    users = sorted(a for a, target in aliases.items() if target == name)
    if users:
        raise StoreError(f"collection {name!r} is in use by alias {', '.join(map(repr, users))} in {location}: "
                         "point the alias elsewhere (or delete it) first")
