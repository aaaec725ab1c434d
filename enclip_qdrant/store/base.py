"""The one small storage interface. ENCLIP logic talks to this, never to a Qdrant client directly.

Backends translate these typed records into their own models (qdrant-edge or qdrant-client), so
the search code is the same whether Qdrant runs in-process or on a cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from enclip_qdrant.errors import StoreError
from enclip_qdrant.progress import Progress

Fusion = Literal["rrf", "dbsf"]

# Reciprocal rank fusion constant. Every store ranks RRF the same way: a point at 0-based position p of a
# prefetch list with weight w scores w / (k + p), summed over the lists that hold it. At w = 1 that is exactly
# Qdrant's own RRF (1 / (p + k)); Qdrant's `weights` divide the rank instead (1 / ((p + 1) / w + k - 1)), which at
# k = 60 barely moves anything, so weights other than 1 are sent as a formula over per-list RRF prefetches
# (store/common.py, `weighted_formula_terms`). Qdrant's own default k is 2, which hands nearly all the say to each
# list's first ranks; the standard 60 (Cormack et al., 2009) lets agreement between lists decide (BENCHMARKS.md,
# "Fusion").
RRF_K = 60


@dataclass(frozen=True)
class SparseVec:
    """A sparse vector (token ids and weights), backend-neutral: both stores translate it to their own type."""

    indices: Sequence[int]
    values: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.values):
            raise StoreError("a sparse vector needs as many values as indices")


Vector = Sequence[float] | np.ndarray
# What a query searches with: a dense vector for a member, a SparseVec for a sparse (lexical) vector.
QueryVector = Vector | SparseVec
Quantization = Literal["none", "int8"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8")
EXTRA_INDEX_TYPES: tuple[str, ...] = ("keyword", "integer")


@dataclass(frozen=True)
class CollectionOptions:
    """Layout knobs for real deployments; none of them changes which points match, only cost and placement.

    Defaults leave every choice to Qdrant, so a collection made without options is what it always was.
    `shard_number`/`replication_factor` only mean something on a cluster: the embedded store ignores them.
    `payload_indexes` adds keyword/integer indexes on catalog fields people filter by (`--filter`).
    """

    on_disk_vectors: bool = False
    quantization: Quantization = "none"  # "int8": scalar quantization kept in RAM, originals rescore
    hnsw_m: int | None = None
    hnsw_ef_construct: int | None = None
    # Qdrant's query planner: a filter matching vectors of fewer KB than this is searched exactly (through the
    # payload index), a bigger one through the graph, with per-value links built for indexed fields above it.
    hnsw_full_scan_kb: int | None = None
    # Qdrant's optimizer: a segment whose vectors take less than this many KB stays unindexed (searched exactly).
    indexing_threshold: int | None = None
    shard_number: int | None = None
    replication_factor: int | None = None
    payload_indexes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here so a bad CLI flag fails before any training or embedding starts.
        if self.quantization not in QUANTIZATIONS:
            raise StoreError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {self.quantization!r}")
        minimum = {"hnsw_m": 0, "hnsw_ef_construct": 4, "hnsw_full_scan_kb": 1, "indexing_threshold": 0,
                   "shard_number": 1, "replication_factor": 1}
        for key, low in minimum.items():
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise StoreError(f"{key} must be an integer >= {low}, not {value!r}")
        for key, kind in self.payload_indexes.items():
            if not isinstance(key, str) or not key:
                raise StoreError(f"payload index field names must be non-empty strings, not {key!r}")
            if str(kind).lower() not in EXTRA_INDEX_TYPES:
                raise StoreError(
                    f"payload index on {key!r} must be {' or '.join(EXTRA_INDEX_TYPES)}, not {kind!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, recorded with the collection so `enclip.json`/metadata say how it was built."""
        return {
            "on_disk_vectors": self.on_disk_vectors,
            "quantization": self.quantization,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construct": self.hnsw_ef_construct,
            **({} if self.hnsw_full_scan_kb is None else {"hnsw_full_scan_kb": self.hnsw_full_scan_kb}),
            **({} if self.indexing_threshold is None else {"indexing_threshold": self.indexing_threshold}),
            "shard_number": self.shard_number,
            "replication_factor": self.replication_factor,
            "payload_indexes": {str(k): str(v).lower() for k, v in self.payload_indexes.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CollectionOptions:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class ServerOptions:
    """How to talk to a Qdrant server; the embedded store ignores them.

    `grpc_port` is where `prefer_grpc` connects (the URL's port is the REST one; Qdrant's default 6334).
    `https` only matters for a URL without a scheme (the scheme wins otherwise); `timeout` is per request in
    seconds; a request failing transiently is tried `retries` more times, waiting about `backoff`,
    2x`backoff`, 4x`backoff`... (at most `max_backoff`) with jitter.
    """

    prefer_grpc: bool = False
    grpc_port: int = 6334
    https: bool | None = None
    timeout: float | None = 30
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        # Checked here so a bad flag or setting fails before any request (or any training) starts.
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise StoreError(f"retries must be an integer >= 0, not {self.retries!r}")
        if not self.backoff >= 0 or not self.max_backoff >= 0:
            raise StoreError(f"backoff and max_backoff must be >= 0, not {self.backoff!r} and {self.max_backoff!r}")
        if isinstance(self.grpc_port, bool) or not isinstance(self.grpc_port, int) or not 0 < self.grpc_port < 65536:
            raise StoreError(f"grpc_port must be a port number (1-65535), not {self.grpc_port!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise StoreError(f"timeout must be > 0 seconds, not {self.timeout!r}")

    @classmethod
    def of(cls, value: ServerOptions | Mapping[str, Any] | None) -> ServerOptions:
        """Options as given: already typed, a plain mapping of the same names (README's form), or none."""
        if value is None:
            return cls()
        if isinstance(value, ServerOptions):
            return value
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise StoreError(f"unknown server option {unknown[0]!r}: use {', '.join(cls.__dataclass_fields__)}")
        return cls(**value)


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection is made of: one cosine named vector per member, plus indexed payload fields."""

    vectors: Mapping[str, int]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # payload field -> "integer" | "keyword"; "cluster" is always indexed as integer.
    indexed_fields: Mapping[str, str] = field(default_factory=lambda: {"cluster": "integer"})
    options: CollectionOptions | None = None  # None: the backend's defaults
    # Named sparse vectors (lexical), all with Qdrant's IDF modifier so rare words weigh more; empty: none.
    sparse_vectors: Sequence[str] = ()


@dataclass(frozen=True)
class PointRecord:
    id: str  # a UUID string derived from the catalog id (stable across runs)
    vectors: Mapping[str, Vector]
    payload: Mapping[str, Any]
    sparse: Mapping[str, SparseVec] = field(default_factory=dict)  # a point without text has none


@dataclass(frozen=True)
class SearchFilter:
    """Conjunction of: cluster in `clusters` (when given) and, per field, field == one of its values."""

    clusters: Sequence[int] | None = None
    fields: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return self.clusters is None and not self.fields


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchParams:
    """How each nearest-neighbour list is searched: `hnsw_ef` candidates kept while walking an HNSW graph
    (None: Qdrant's default), or `exact` (every vector scored, no graph: what evaluation ranks by, and the
    reference an approximate search is measured against). Both stores send them to Qdrant as they are."""

    hnsw_ef: int | None = None
    exact: bool = False

    def __post_init__(self) -> None:
        ef = self.hnsw_ef
        if ef is not None and (isinstance(ef, bool) or not isinstance(ef, int) or ef < 1):
            raise StoreError(f"hnsw_ef must be an integer >= 1, not {ef!r}")

    def is_default(self) -> bool:
        return self.hnsw_ef is None and not self.exact


@dataclass(frozen=True)
class IndexState:
    """Whether a collection's member vectors are in HNSW graphs or searched exactly, for `info`."""

    hnsw: bool  # on: the embedded store builds HNSW after each `index`; a server's optimizer builds it itself
    indexed_vectors: int  # member (dense) vectors in an HNSW graph; the rest are scanned exactly
    vectors: int  # member vectors stored: points x members
    segments: int | None = None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    points: int | None  # None only from `describe` of an embedded collection this store has not opened
    vectors: dict[str, int]
    payload_schema: dict[str, str]  # indexed payload field -> type name ("integer", "keyword", ...)
    metadata: dict[str, Any]
    sparse_vectors: list[str] = field(default_factory=list)
    index: IndexState | None = None


class Store(ABC):
    """A place that holds ENCLIP collections. Implementations: `EdgeStore` (embedded), `ServerStore`."""

    kind: str  # "embedded" or "server", for messages and `info`
    location: str  # folder or URL, for messages
    # True when `clone()` opens another client to the same place: a multi-threaded caller (the query service)
    # then gives each thread its own instead of serialising every call on one.
    thread_clients: bool = False

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def create(self, name: str, spec: CollectionSpec) -> None:
        """Create an empty collection; StoreError if it exists already."""

    @abstractmethod
    def drop(self, name: str) -> None:
        """Delete a collection and everything in it; CollectionNotFound if absent."""

    @abstractmethod
    def info(self, name: str) -> CollectionInfo: ...

    def describe(self, name: str) -> CollectionInfo:
        """What a listing shows without taking the collection: `info`, where reading it takes nothing."""
        return self.info(name)

    @abstractmethod
    def set_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        """Replace the collection's metadata (JSON-able), e.g. the fingerprint of the bundle that built it."""

    @abstractmethod
    def upsert(self, name: str, points: Sequence[PointRecord]) -> None: ...

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def set_payload(self, name: str, id: str, payload: Mapping[str, Any]) -> None:
        """Overwrite one point's payload without touching its vectors."""

    @abstractmethod
    def set_sparse(self, name: str, id: str, vector_name: str, vector: SparseVec | None) -> None:
        """Replace one point's sparse vector (None removes it), leaving its dense vectors alone: a changed title
        rewrites the text vector without embedding the image again."""

    @abstractmethod
    def scroll(self, name: str, fields: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point as (id, payload restricted to `fields`; all of it when None)."""

    @abstractmethod
    def scroll_points(self, name: str, batch: int = 256) -> Iterator[PointRecord]:
        """Every point with its vectors and payload, for copying a collection elsewhere (`push`)."""

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str]) -> list[Hit]:
        """Points by id with payload (score 0); unknown ids are left out."""

    @abstractmethod
    def query_fused(
        self,
        name: str,
        vectors: Mapping[str, QueryVector],
        *,
        limit: int,
        prefetch_limit: int,
        fusion: Fusion = "rrf",
        filter: SearchFilter | None = None,
        weights: Mapping[str, float] | None = None,
        vector_filters: Mapping[str, SearchFilter | None] | None = None,
        params: SearchParams | None = None,
    ) -> list[Hit]:
        """ONE Query API call: a prefetch per named vector, dense or sparse (each carrying `filter`, or its own
        from `vector_filters`: the text list searches every cluster while the members are routed), fused by
        RRF or DBSF. `weights` (RRF only; missing names weigh 1) multiply each list's RRF terms: a point scores
        sum of w / (RRF_K + p) over the lists that hold it at 0-based position p (see RRF_K). Ties in score are
        broken by point id, so identical queries rank identically. `params` go to every list's search."""

    @abstractmethod
    def query_each(
        self,
        name: str,
        vectors: Mapping[str, QueryVector],
        *,
        limit: int,
        filter: SearchFilter | None = None,
        vector_filters: Mapping[str, SearchFilter | None] | None = None,
        params: SearchParams | None = None,
    ) -> dict[str, list[Hit]]:
        """Each named vector searched on its own (one batch call), with the filters `query_fused` gives it: the
        per-list ranks for `--explain`."""

    @abstractmethod
    def count(self, name: str, filter: SearchFilter | None = None) -> int: ...

    @abstractmethod
    def build_index(self, name: str, *, hnsw: bool = True, progress: Progress | None = None) -> IndexState:
        """Turn HNSW on (or off) for the collection's member vectors and, when on, index what is stored now,
        blocking until done; the sparse text index is kept either way. Called by `index` after each run, so
        the points a later run adds are indexed too."""

    @abstractmethod
    def facet_counts(self, name: str, key: str) -> dict[Any, int]:
        """Points per value of an indexed payload field (cluster sizes for `info`)."""

    # -- aliases: a stable name in front of a physical collection, switched atomically ------------

    @abstractmethod
    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one step: readers see the old target or the new, never nothing."""

    @abstractmethod
    def resolve(self, name: str) -> str:
        """The physical collection behind `name` (itself when it is one); CollectionNotFound otherwise."""

    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """alias -> physical collection, for the collections this store may touch."""

    @abstractmethod
    def delete_alias(self, alias: str) -> None: ...

    def clone(self) -> Store:
        """Another store on the same place, with a client of its own (only where `thread_clients`)."""
        raise NotImplementedError(f"a {self.kind} store cannot open a second client")

    def release(self, name: str) -> None:  # noqa: B027 - optional hook
        """Let go of what this store holds open for collection `name` (the embedded store: its shard and the
        shard's lock, so another process may open it); the next call on it opens it again."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
