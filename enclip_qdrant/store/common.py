"""Backend-neutral helpers both stores share: names, the ownership marker, payload indexes, metadata copies,
hits and fusion checks. No qdrant-edge or qdrant-client import here, so either backend loads alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from enclip_qdrant.errors import InvalidName, QueryError, StoreError
from enclip_qdrant.files import json_copy
from enclip_qdrant.store.base import (
    RRF_K,
    CollectionSpec,
    Fusion,
    Hit,
    QueryVector,
    SearchFilter,
    SparseVec,
    Vector,
)

FORMAT = 1  # value of the "enclip_format" marker both backends write
MARKER = "enclip_format"
FUSIONS: tuple[str, ...] = ("rrf", "dbsf")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SCHEMA_TYPES = {t.lower(): t for t in ("Keyword", "Integer", "Float", "Bool", "Datetime", "Uuid", "Text")}


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def json_path(key: str) -> str:
    """A payload key as Qdrant's JSON path: quoted unless plain (a space, `.`, `[`, `$`... would be path syntax),
    so a catalog column like "base colour" is filtered, indexed and faceted as itself on both stores. Plain keys
    stay unquoted, so existing collections' indexes keep their names."""
    if _PLAIN_KEY.fullmatch(key):
        return key
    if '"' in key or not key:
        raise QueryError(f"field {key!r} cannot be filtered on: Qdrant's paths cannot hold a double quote")
    return f'"{key}"'


def payload_key(path: str) -> str:
    """The payload key a (possibly quoted) path of a store's schema names: json_path's inverse."""
    return path[1:-1] if len(path) >= 2 and path[0] == path[-1] == '"' else path


def check_name(name: str) -> str:
    """Names become folder names (and server collection names), so keep them path-safe everywhere."""
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidName(
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


def filter_for(name: str, filter: SearchFilter | None,
               vector_filters: Mapping[str, SearchFilter | None] | None) -> SearchFilter | None:
    """The filter one named vector's prefetch carries: its own when `vector_filters` names it, else the shared one."""
    return vector_filters[name] if vector_filters and name in vector_filters else filter


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
    if any(not (w > 0 and math.isfinite(w)) for w in out):
        raise QueryError(f"RRF weights must be finite numbers > 0, not {out}")
    return out


def rrf_score(position: int, weight: float = 1.0, k: int = RRF_K) -> float:
    """One list's RRF term for a point at 0-based `position` (base.RRF_K says why this form), for `--explain`'s
    shares; the stores ask Qdrant to compute the same (the contract test checks it with its own reference)."""
    return weight / (k + position)


def dbsf_normalise(scores: list[float]) -> list[float]:
    """Qdrant's DBSF normalisation of one list: (s - (mean - 3 sd)) / (6 sd), sample sd; one point (or sd 0): 0.5."""
    if len(scores) < 2:
        return [0.5] * len(scores)
    arr = np.asarray(scores, dtype=np.float64)
    mean, sd = float(arr.mean()), float(arr.std(ddof=1))
    return [0.5] * len(scores) if sd == 0 else [float(v) for v in (arr - (mean - 3 * sd)) / (6 * sd)]


def weighted_formula_terms(weights: list[float]) -> list[tuple[float, str]]:
    """Weighted RRF as a Qdrant formula: prefetch i is itself an RRF over the one list i (score 1 / (k + p)),
    and the root sums w_i x `$score[i]` (0 where list i lacks the point). Exact on one shard (the embedded
    store, a single-shard server collection); on several shards each shard ranks its own points."""
    return [(w, f"$score[{i}]") for i, w in enumerate(weights)]


def tie_margin(lists: int) -> int:
    """Extra hits asked of the engine so that `stable_order` sees the points tied at the cut: only a tie among more
    than this many points straddling the limit is still left to the engine's order."""
    return max(8, 2 * lists)


def stable_order(hits: list[Hit], limit: int) -> list[Hit]:
    """Highest score first, ties by point id: fusion scores tie often (one list's rank 3 vs another's), and
    the engines leave ties in whatever order their hash maps give."""
    return sorted(hits, key=lambda h: (-h.score, h.id))[:limit]


def metadata_copy(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A detached, JSON-checked copy: metadata must survive a trip through a file or a server."""
    try:
        return json_copy(dict(metadata))
    except (TypeError, ValueError) as e:
        raise StoreError(f"collection metadata must be JSON-able: {e}") from e


def hit(point: Any) -> Hit:
    """A backend's scored or retrieved point (both clients name the fields alike) as our Hit."""
    return Hit(id=str(point.id), score=float(getattr(point, "score", 0.0)), payload=dict(point.payload or {}))


def refuse_drop(aliases: Mapping[str, str], name: str, location: str) -> None:
    """Dropping what an alias serves would leave the alias pointing at nothing."""
    if name in aliases:
        raise StoreError(f"{name!r} is an alias (of {aliases[name]!r}) in {location}, not a collection: "
                         "delete the alias instead")
    users = sorted(a for a, target in aliases.items() if target == name)
    if users:
        raise StoreError(f"collection {name!r} is in use by alias {', '.join(map(repr, users))} in {location}: "
                         "point the alias elsewhere (or delete it) first")
