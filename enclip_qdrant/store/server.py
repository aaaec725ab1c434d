"""Server backend on qdrant-client: a Qdrant server or cluster, or `QdrantClient(":memory:")` in tests.

A server is shared, so this store only ever touches collections whose metadata carries the
`enclip_format` marker: others are not listed, and every operation on them is refused.

Networks and clusters blip (a restarting node, a proxy's 503, a timeout under load), so every request
is retried a few times with exponential backoff and jitter when its failure is transient. That is safe
because every write here is idempotent: points are upserted and deleted by id, payloads overwritten,
metadata patched with whole values; `create` and `drop` check what a lost first attempt did.
"""

from __future__ import annotations

import random
import ssl
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import grpc
import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from enclip_qdrant.errors import CollectionNotFound, EnclipError, StoreError, first_line, redact_url
from enclip_qdrant.progress import NullProgress, Progress
from enclip_qdrant.store.base import (
    RRF_K,
    CollectionInfo,
    CollectionOptions,
    CollectionSpec,
    Fusion,
    Hit,
    IndexState,
    PointRecord,
    QueryVector,
    SearchFilter,
    SearchParams,
    ServerOptions,
    SparseVec,
    Store,
    batched,
)
from enclip_qdrant.store.common import (
    FORMAT,
    MARKER,
    as_list,
    check_fusion,
    check_name,
    filter_for,
    hit,
    indexed_fields,
    json_path,
    metadata_copy,
    nonempty,
    payload_key,
    refuse_drop,
    rrf_weights,
    stable_order,
    tie_margin,
    weighted_formula_terms,
)

# Declared indexes, kept in metadata because local mode (":memory:") ignores payload indexes and so
# reports no payload_schema; a real server's own schema always wins.
INDEXED_KEY = "enclip_indexed_fields"
# The options a collection was created with; local mode drops most of them from its config.
OPTIONS_KEY = "enclip_options"
_RESERVED = (MARKER, INDEXED_KEY, OPTIONS_KEY)
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_AUTH = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Gateway errors and overload: the request did not (or may not) happen and can be sent again.
_TRANSIENT_HTTP = (429, 502, 503, 504)
_TRANSIENT_NETWORK = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    ConnectionError,
    TimeoutError,
)
T = TypeVar("T")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """True when the same request may well succeed in a moment; auth, 4xx and bad input never will."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _TRANSIENT_HTTP
    if isinstance(exc, ResourceExhaustedResponse):
        return True
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() in _UNREACHABLE
    if isinstance(exc, ResponseHandlingException):
        exc = exc.source  # httpx's failure; a response that did not parse is not transient
    if any(isinstance(e, ssl.SSLError) for e in _causes(exc)):
        return False  # a certificate or TLS mismatch does not heal by waiting
    return isinstance(exc, _TRANSIENT_NETWORK)


def _create_kwargs(options: CollectionOptions | None) -> dict[str, Any]:
    """qdrant-client arguments for the options; unset ones are left out so the server's defaults apply."""
    if options is None:
        return {}
    kw: dict[str, Any] = {}
    if options.hnsw_m is not None or options.hnsw_ef_construct is not None or options.hnsw_full_scan_kb is not None:
        kw["hnsw_config"] = models.HnswConfigDiff(m=options.hnsw_m, ef_construct=options.hnsw_ef_construct,
                                                  full_scan_threshold=options.hnsw_full_scan_kb)
    if options.indexing_threshold is not None:
        kw["optimizers_config"] = models.OptimizersConfigDiff(indexing_threshold=options.indexing_threshold)
    if options.quantization == "int8":
        kw["quantization_config"] = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
        )
    if options.shard_number is not None:
        kw["shard_number"] = options.shard_number
    if options.replication_factor is not None:
        kw["replication_factor"] = options.replication_factor
    return kw


def _filter(flt: SearchFilter | None) -> models.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    if flt.clusters is not None:
        must.append(models.FieldCondition(key="cluster", match=models.MatchAny(any=[int(c) for c in flt.clusters])))
    for key, values in flt.fields.items():
        vals = list(values)
        match = models.MatchValue(value=vals[0]) if len(vals) == 1 else models.MatchAny(any=vals)
        must.append(models.FieldCondition(key=json_path(key), match=match))
    return models.Filter(must=must)


def _response_error(e: UnexpectedResponse) -> str:
    try:
        return str(e.structured()["status"]["error"])
    except (ValueError, KeyError, TypeError):
        return first_line(e.content.decode("utf-8", "replace")) or e.reason_phrase


def _vector(v: list[float] | SparseVec) -> Any:
    if isinstance(v, SparseVec):
        return models.SparseVector(indices=list(v.indices), values=list(v.values))
    return v


def _split(vectors: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, SparseVec]]:
    """A stored point's vectors as (dense by name, sparse by name), so `push` copies both kinds."""
    dense: dict[str, Any] = {}
    sparse: dict[str, SparseVec] = {}
    for k, v in vectors.items():
        if isinstance(v, models.SparseVector):
            sparse[k] = SparseVec(list(v.indices), list(v.values))
        else:
            dense[k] = v
    return dense, sparse


def search_params(params: SearchParams | None) -> models.SearchParams | None:
    """`hnsw_ef` and `exact` as Qdrant's own search params (None: the server's defaults)."""
    if params is None or params.is_default():
        return None
    return models.SearchParams(hnsw_ef=params.hnsw_ef, exact=params.exact)


def fused_query_request(vectors: Mapping[str, QueryVector], *, limit: int, prefetch_limit: int,
                        fusion: Fusion = "rrf", filter: SearchFilter | None = None,
                        weights: Mapping[str, float] | None = None,
                        vector_filters: Mapping[str, SearchFilter | None] | None = None,
                        params: SearchParams | None = None) -> models.QueryRequest:
    """The one fused Query API request `query_fused` sends: a prefetch per named vector, dense or sparse (each
    filtered), then RRF (k=RRF_K) or DBSF; with weights other than 1, each list is its own RRF prefetch and a
    formula sums w x its score (store/common.py, `weighted_formula_terms`). Public so the query service hands
    applications exactly this body
    (`.model_dump(mode="json", exclude_none=True)` is the REST JSON for POST /collections/NAME/points/query)."""
    named = nonempty(vectors)
    how = search_params(params)
    lists = [models.Prefetch(query=_vector(v), using=k, limit=prefetch_limit, params=how,
                             filter=_filter(filter_for(k, filter, vector_filters))) for k, v in named.items()]
    w = rrf_weights(list(named), check_fusion(fusion), weights)
    if w is not None:
        prefetch = [models.Prefetch(prefetch=p, query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)), limit=prefetch_limit)
                    for p in lists]
        query: Any = models.FormulaQuery(formula=models.SumExpression(sum=[
            models.MultExpression(mult=[wi, var]) for wi, var in weighted_formula_terms(w)]))
        return models.QueryRequest(prefetch=prefetch, query=query, limit=limit, with_payload=True, with_vector=False)
    query = models.RrfQuery(rrf=models.Rrf(k=RRF_K)) if fusion == "rrf" else (
        models.FusionQuery(fusion=models.Fusion.DBSF))
    return models.QueryRequest(prefetch=lists, query=query, limit=limit, with_payload=True, with_vector=False)


class ServerStore(Store):
    """Collections on a Qdrant server; `url=":memory:"` gives qdrant-client's in-process stand-in.

    `options` (gRPC, https, timeout, retries and backoff) are a checked `ServerOptions`; `retried` counts
    the retries this store has made.
    """

    kind = "server"

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        client: QdrantClient | None = None,
        options: ServerOptions | None = None,
    ) -> None:
        self.options = options = options or ServerOptions()
        self.prefer_grpc, self.https, self.timeout = options.prefer_grpc, options.https, options.timeout
        self.retries, self.backoff, self.max_backoff = options.retries, float(options.backoff), float(
            options.max_backoff)
        self.retried = 0
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif url == ":memory:":
            self.client = QdrantClient(":memory:")
        elif url:
            # check_compatibility=False: no request at construction, so a bad URL fails on first use
            # with our one-line error instead of a warning here.
            try:
                self.client = QdrantClient(
                    url=url,
                    api_key=api_key,
                    prefer_grpc=options.prefer_grpc,
                    grpc_port=options.grpc_port,
                    https=options.https,
                    timeout=options.timeout,  # type: ignore[arg-type]  # qdrant-client rounds it up to whole seconds
                    check_compatibility=False,
                )
            except ValueError as e:
                raise StoreError(f"invalid Qdrant URL {redact_url(url)!r}: {first_line(str(e))}") from None
        else:
            raise StoreError("ServerStore needs a Qdrant URL (or a client)")
        self.location = redact_url(url) or "qdrant-client"  # printed in errors: never the password
        self._local = type(getattr(self.client, "_client", None)).__name__ == "QdrantLocal"
        self._url, self._api_key = url, api_key  # for clone(); never printed
        # a server we opened ourselves can have more clients; local mode and a caller's client cannot
        self.thread_clients = self._own_client and not self._local and url != ":memory:"
        self._owned: set[str] = set()

    # -- collections ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        names = [c.name for c in self._call("list", None, self.client.get_collections).collections]
        mine = []
        for name in names:
            try:
                self._describe(name)
            except StoreError:  # foreign, vanished or unreadable: not ours to list
                continue
            mine.append(name)
        return sorted(mine)

    def exists(self, name: str) -> bool:
        """True when the name is taken, even by a foreign collection, since `create` would collide."""
        check_name(name)
        return bool(self._call("exists", name, self.client.collection_exists, name)) or name in self._raw_aliases()

    def create(self, name: str, spec: CollectionSpec) -> None:
        if check_name(name) in self._raw_aliases():
            raise StoreError(f"{name!r} is an alias at {self.location}: a collection cannot take its name")
        if self._call("exists", name, self.client.collection_exists, name):
            raise StoreError(f"collection {name!r} already exists at {self.location}")
        if not spec.vectors:
            raise StoreError("a collection needs at least one named vector")
        fields = indexed_fields(spec)
        metadata = {**metadata_copy(spec.metadata), MARKER: FORMAT, INDEXED_KEY: fields}
        if spec.options is not None:
            metadata[OPTIONS_KEY] = spec.options.to_dict()
        on_disk = True if spec.options is not None and spec.options.on_disk_vectors else None
        vectors = {
            str(k): models.VectorParams(size=int(d), distance=models.Distance.COSINE, on_disk=on_disk)
            for k, d in spec.vectors.items()
        }
        kwargs = _create_kwargs(spec.options)
        if spec.sparse_vectors:  # only sent when asked for: a dense-only create is the request it always was
            kwargs["sparse_vectors_config"] = {
                str(k): models.SparseVectorParams(modifier=models.Modifier.IDF) for k in spec.sparse_vectors}
        before = self.retried
        try:
            self._call(
                "create",
                name,
                self.client.create_collection,
                name,
                vectors_config=vectors,
                metadata=metadata,
                **kwargs,
            )
        except StoreError as e:
            # A retried create can find the collection its lost first attempt made: ours when it holds
            # exactly the metadata we sent (which carries the creation time); anyone else's is an error.
            if self.retried == before or "already exists" not in str(e).lower() or not self._holds(name, metadata):
                raise
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # local mode warns that payload indexes do nothing there
                for key, kind in fields.items():
                    self._call(
                        "create",
                        name,
                        self.client.create_payload_index,
                        name,
                        json_path(key),
                        models.PayloadSchemaType(kind),
                        wait=True,
                    )
        except BaseException:
            # Never leave a marked collection without its indexes; best effort, the first error wins.
            with suppress(Exception):
                self.client.delete_collection(name)
            raise
        self._owned.add(name)

    def drop(self, name: str) -> None:
        refuse_drop(self._raw_aliases(), check_name(name), self.location)
        self._describe(name)
        before = self.retried
        try:
            self._call("drop", name, self.client.delete_collection, name)
        except CollectionNotFound:
            if self.retried == before:  # gone only after a retry: the lost first attempt deleted it
                raise
        self._owned.discard(name)

    def info(self, name: str) -> CollectionInfo:
        name = self.resolve(name)
        desc = self._describe(name)
        meta = desc.config.metadata or {}
        vectors = desc.config.params.vectors
        dims = {k: int(v.size) for k, v in vectors.items()} if isinstance(vectors, Mapping) else {}
        schema = {payload_key(k): str(getattr(v.data_type, "value", v.data_type))
                  for k, v in (desc.payload_schema or {}).items()}
        if self._local and not schema:
            schema = dict(meta.get(INDEXED_KEY) or {})
        return CollectionInfo(
            name=name,
            points=self.count(name),
            vectors=dims,
            payload_schema=schema,
            metadata={k: v for k, v in meta.items() if k not in _RESERVED},
            sparse_vectors=sorted(desc.config.params.sparse_vectors or {}),
            index=self._index_state(name, desc, len(dims)),
        )

    def _index_state(self, name: str, desc: models.CollectionInfo, members: int) -> IndexState:
        """The server's own count (approximate, and counting the sparse vectors of the text index too, which
        are taken off); its optimizer indexes unless its indexing threshold is 0."""
        points = self.count(name)
        sparse = sum(self._call("count", name, self.client.count, name, exact=True, count_filter=models.Filter(
            must=[models.HasVectorCondition(has_vector=k)])).count for k in desc.config.params.sparse_vectors or {})
        threshold = getattr(desc.config.optimizer_config, "indexing_threshold", None)
        return IndexState(hnsw=threshold != 0 and not self._local, vectors=points * members,
                          indexed_vectors=max(0, int(desc.indexed_vectors_count or 0) - int(sparse)),
                          segments=desc.segments_count)

    def build_index(self, name: str, *, hnsw: bool = True, progress: Progress | None = None) -> IndexState:
        """Nothing to run: a server's optimizer builds HNSW itself, in the background, for segments above its
        indexing threshold (`CollectionOptions.indexing_threshold`); this reports where it stands."""
        state = self.info(name).index
        assert state is not None
        if hnsw != state.hnsw and not self._local:
            (progress or NullProgress()).log(f"{self.location} builds HNSW by its own optimizer: --hnsw/--no-hnsw "
                                             "only steer the embedded store")
        return state

    def set_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        name = self.resolve(name)
        old = self._describe(name).config.metadata or {}
        new = {**metadata_copy(metadata), MARKER: FORMAT, INDEXED_KEY: old.get(INDEXED_KEY, {})}
        if OPTIONS_KEY in old:
            new[OPTIONS_KEY] = old[OPTIONS_KEY]
        # Qdrant merges metadata updates; a null value deletes a key, which turns the merge into a replace.
        patch = {**{k: None for k in old if k not in new}, **new}
        self._call("set_metadata", name, self.client.update_collection, name, metadata=patch)

    # -- points --------------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        self._check(name)
        for chunk in batched(points, 256):
            structs = [
                models.PointStruct(
                    id=p.id, payload=dict(p.payload),
                    vector={**{k: as_list(v) for k, v in p.vectors.items()},
                            **{k: _vector(v) for k, v in p.sparse.items()}},
                )
                for p in chunk
            ]
            self._call("upsert", name, self.client.upsert, name, points=structs, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self._check(name)
        selector = models.PointIdsList(points=list(ids))
        self._call("delete", name, self.client.delete, name, points_selector=selector, wait=True)

    def set_payload(self, name: str, id: str, payload: Mapping[str, Any]) -> None:
        self._check(name)
        self._call(
            "set_payload", name, self.client.overwrite_payload, name, payload=dict(payload), points=[id], wait=True
        )

    def set_sparse(self, name: str, id: str, vector_name: str, vector: SparseVec | None) -> None:
        self._check(name)
        if vector is None:
            self._call("set_sparse", name, self.client.delete_vectors, name, vectors=[vector_name],
                       points=[id], wait=True)
        else:
            point = models.PointVectors(id=id, vector={vector_name: _vector(vector)})
            self._call("set_sparse", name, self.client.update_vectors, name, points=[point], wait=True)

    def scroll(self, name: str, fields: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        self._check(name)
        with_payload: Any = True if fields is None else ([json_path(f) for f in fields] or False)
        offset: Any = None
        while True:
            records, offset = self._call(
                "scroll", name, self.client.scroll,
                name, limit=512, offset=offset, with_payload=with_payload, with_vectors=False,
            )
            for rec in records:
                yield str(rec.id), dict(rec.payload or {})
            if offset is None:
                return

    def scroll_points(self, name: str, batch: int = 256) -> Iterator[PointRecord]:
        self._check(name)
        offset: Any = None
        while True:
            records, offset = self._call(
                "scroll", name, self.client.scroll,
                name, limit=batch, offset=offset, with_payload=True, with_vectors=True,
            )
            for rec in records:
                dense, sparse = _split(rec.vector if isinstance(rec.vector, Mapping) else {})
                yield PointRecord(str(rec.id), dense, dict(rec.payload or {}), sparse)
            if offset is None:
                return

    def retrieve(self, name: str, ids: Sequence[str]) -> list[Hit]:
        self._check(name)
        records = self._call(
            "retrieve", name, self.client.retrieve, name, ids=list(ids), with_payload=True, with_vectors=False
        )
        found = {str(r.id): hit(r) for r in records}
        return [found[str(i)] for i in ids if str(i) in found]

    # -- search --------------------------------------------------------------------------------

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
        self._check(name)
        asked = limit + tie_margin(len(vectors))
        req = fused_query_request(vectors, limit=asked, prefetch_limit=prefetch_limit, fusion=fusion, filter=filter,
                                  weights=weights, vector_filters=vector_filters,
                                  params=None if self._local else params)  # local mode is always exact
        result = self._call(
            "query", name, self.client.query_points,
            name, prefetch=req.prefetch, query=req.query, limit=asked, with_payload=True, with_vectors=False,
        )
        return stable_order([hit(p) for p in result.points], limit)

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
        self._check(name)
        named = nonempty(vectors)
        how = None if self._local else search_params(params)
        requests = [
            models.QueryRequest(query=_vector(v), using=k, limit=limit, with_payload=True, params=how,
                                filter=_filter(filter_for(k, filter, vector_filters)))
            for k, v in named.items()
        ]
        responses = self._call("query", name, self.client.query_batch_points, name, requests=requests)
        return {k: [hit(p) for p in r.points] for k, r in zip(named, responses, strict=True)}

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        self._check(name)
        return int(self._call("count", name, self.client.count, name, count_filter=_filter(filter), exact=True).count)

    def facet_counts(self, name: str, key: str) -> dict[Any, int]:
        limit = max(1, self.count(name))  # distinct values <= points: never truncated
        response = self._call("facet", name, self.client.facet, name, key=json_path(key), limit=limit, exact=True)
        return {h.value: int(h.count) for h in response.hits}

    # -- aliases -------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """Only aliases of our own collections: a shared server's other aliases are not ours to show."""
        raw = self._raw_aliases()
        mine = set(self.list_collections()) if raw else set()
        return {a: c for a, c in raw.items() if c in mine}

    def resolve(self, name: str) -> str:
        target = self._raw_aliases().get(check_name(name))
        self._describe(target or name)  # exists and is ours, or a clear error
        return target or name

    def set_alias(self, alias: str, collection: str) -> None:
        raw = self._raw_aliases()
        if check_name(alias) not in raw and self._call("alias", alias, self.client.collection_exists, alias):
            raise StoreError(f"{alias!r} is a collection at {self.location}: an alias cannot take its name")
        if collection in raw:
            raise StoreError(f"{collection!r} is an alias, not a collection: point {alias!r} at a collection")
        self._describe(collection)
        ops: list[Any] = []
        if alias in raw:  # Qdrant applies the whole list at once: no moment without the alias
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
        self._call("alias", alias, self.client.update_collection_aliases, change_aliases_operations=ops)

    def delete_alias(self, alias: str) -> None:
        if check_name(alias) not in self._raw_aliases():
            raise CollectionNotFound(f"no alias {alias!r} at {self.location}")
        op = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
        self._call("alias", alias, self.client.update_collection_aliases, change_aliases_operations=[op])

    def _raw_aliases(self) -> dict[str, str]:
        response = self._call("aliases", None, self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in response.aliases}

    def clone(self) -> ServerStore:
        if not self.thread_clients:
            return super().clone()  # type: ignore[return-value]  # raises
        return ServerStore(self._url, self._api_key, options=self.options)

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    # -- internals -----------------------------------------------------------------------------

    def _describe(self, name: str) -> models.CollectionInfo:
        """Fetch a collection's description, refusing it unless it carries our marker."""
        check_name(name)
        desc = self._call("open", name, self.client.get_collection, name)
        marker = (desc.config.metadata or {}).get(MARKER)
        if marker is None:
            raise StoreError(
                f"collection {name!r} at {self.location} was not made by enclip-qdrant; refusing to touch it"
            )
        if marker != FORMAT:
            raise StoreError(f"collection {name!r} has unknown enclip format {marker!r} (expected {FORMAT})")
        self._owned.add(name)
        return desc

    def _check(self, name: str) -> None:
        """Ownership is checked once per name and store, so queries cost no extra round trip."""
        if name not in self._owned:
            self._describe(name)

    def _holds(self, name: str, metadata: Mapping[str, Any]) -> bool:
        try:
            desc = self._call("create", name, self.client.get_collection, name)
        except StoreError:
            return False
        return (desc.config.metadata or {}) == dict(metadata)

    def _call(self, op: str, name: str | None, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """One client request, sent again while it fails transiently; its final failure becomes one line."""
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except EnclipError:
                raise
            except Exception as e:
                if attempt < self.retries and is_transient(e):
                    attempt += 1
                    self.retried += 1
                    time.sleep(self._delay(attempt, e))
                    continue
                err = self._translate(e, name, op)
                if attempt:
                    err = type(err)(f"{err} (gave up after {attempt + 1} attempts)")
                raise err from e

    def _delay(self, attempt: int, exc: BaseException) -> float:
        """Exponential, capped, with jitter so clients that failed together do not retry together."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        retry_after = getattr(exc, "retry_after_s", None)  # a 429's Retry-After, when the server sent one
        if isinstance(retry_after, (int, float)) and retry_after > 0:
            delay = max(delay, min(float(retry_after), self.max_backoff))
        return delay

    def _translate(self, e: Exception, name: str | None, op: str) -> StoreError:
        """Turn qdrant-client's many failure types into one-line StoreErrors the CLI can print."""
        where = f" on collection {name!r}" if name else ""
        if isinstance(e, UnexpectedResponse):
            detail = first_line(_response_error(e))
            if e.status_code in (401, 403):
                return self._auth_error(f"HTTP {e.status_code}")
            if e.status_code == 404 and name and "collection" in detail.lower():
                return self._not_found(name)
            return StoreError(f"{op}{where} failed: HTTP {e.status_code}: {detail}")
        if isinstance(e, ResponseHandlingException):
            return StoreError(f"cannot reach Qdrant at {self.location}: {first_line(str(e.source)) or e}")
        if isinstance(e, grpc.RpcError):
            code, detail = e.code(), first_line(e.details() or "")  # type: ignore[attr-defined]
            if code in _UNREACHABLE:
                return StoreError(f"cannot reach Qdrant at {self.location}: {detail}")
            if code in _AUTH:
                return self._auth_error(code.name)
            if code == grpc.StatusCode.NOT_FOUND and name and "collection" in detail.lower():
                return self._not_found(name)
            return StoreError(f"{op}{where} failed: {code.name}: {detail}")
        if isinstance(e, ValueError):  # local mode
            detail = first_line(str(e))
            if name and detail.startswith("Collection") and detail.endswith("not found"):
                return self._not_found(name)
            return StoreError(f"{op}{where} failed: {detail}")
        if isinstance(e, KeyError):  # local mode: unknown point id
            return StoreError(f"{op}{where} failed: no point {e}")
        if isinstance(e, _TRANSIENT_NETWORK):
            return StoreError(f"cannot reach Qdrant at {self.location}: {type(e).__name__}: {first_line(str(e))}")
        return StoreError(f"{op}{where} failed: {type(e).__name__}: {first_line(str(e))}")

    def _not_found(self, name: str) -> CollectionNotFound:
        self._owned.discard(name)
        return CollectionNotFound(f"no collection {name!r} at {self.location}")

    def _auth_error(self, status: str) -> StoreError:
        return StoreError(f"Qdrant at {self.location} refused the request ({status}): check the API key")

