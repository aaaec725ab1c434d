"""Server backend on qdrant-client: a Qdrant server or cluster, or `QdrantClient(":memory:")` in tests.

A server is shared, so this store only ever touches collections whose metadata carries the
`enclip_format` marker: others are not listed, and every operation on them is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import grpc
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from enclip_qdrant.errors import CollectionNotFound, EnclipError, QueryError, StoreError
from enclip_qdrant.store.base import (
    CollectionInfo,
    CollectionSpec,
    Fusion,
    Hit,
    PointRecord,
    SearchFilter,
    Store,
    Vector,
    batched,
)
from enclip_qdrant.store.edge import FORMAT, MARKER, as_list, check_name, indexed_fields, json_copy

# Declared indexes, kept in metadata because local mode (":memory:") ignores payload indexes and so
# reports no payload_schema; a real server's own schema always wins.
INDEXED_KEY = "enclip_indexed_fields"
_RESERVED = (MARKER, INDEXED_KEY)
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_AUTH = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _filter(flt: SearchFilter | None) -> models.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    if flt.clusters is not None:
        must.append(models.FieldCondition(key="cluster", match=models.MatchAny(any=[int(c) for c in flt.clusters])))
    for key, values in flt.fields.items():
        vals = list(values)
        match = models.MatchValue(value=vals[0]) if len(vals) == 1 else models.MatchAny(any=vals)
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


def _hit(point: Any) -> Hit:
    return Hit(id=str(point.id), score=float(getattr(point, "score", 0.0)), payload=dict(point.payload or {}))


def _vectors(vectors: Mapping[str, Vector]) -> dict[str, list[float]]:
    if not vectors:
        raise QueryError("a query needs at least one named vector")
    return {k: as_list(v) for k, v in vectors.items()}


def _line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _response_error(e: UnexpectedResponse) -> str:
    try:
        return str(e.structured()["status"]["error"])
    except (ValueError, KeyError, TypeError):
        return _line(e.content.decode("utf-8", "replace")) or e.reason_phrase


class ServerStore(Store):
    """Collections on a Qdrant server; `url=":memory:"` gives qdrant-client's in-process stand-in."""

    kind = "server"

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        client: QdrantClient | None = None,
        prefer_grpc: bool = False,
        timeout: float = 30,
    ) -> None:
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif url == ":memory:":
            self.client = QdrantClient(":memory:")
        elif url:
            # check_compatibility=False: no request at construction, so a bad URL fails on first use
            # with our one-line error instead of a warning here.
            self.client = QdrantClient(
                url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout, check_compatibility=False
            )
        else:
            raise StoreError("ServerStore needs a Qdrant URL (or a client)")
        self.location = url or "qdrant-client"
        self._local = type(getattr(self.client, "_client", None)).__name__ == "QdrantLocal"
        self._owned: set[str] = set()

    # -- collections ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        with self._errors():
            names = [c.name for c in self.client.get_collections().collections]
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
        with self._errors(name):
            return bool(self.client.collection_exists(name))

    def create(self, name: str, spec: CollectionSpec) -> None:
        if self.exists(name):
            raise StoreError(f"collection {name!r} already exists at {self.location}")
        if not spec.vectors:
            raise StoreError("a collection needs at least one named vector")
        fields = indexed_fields(spec)
        metadata = {**json_copy(spec.metadata), MARKER: FORMAT, INDEXED_KEY: fields}
        vectors = {
            str(k): models.VectorParams(size=int(d), distance=models.Distance.COSINE) for k, d in spec.vectors.items()
        }
        with self._errors(name, "create"):
            self.client.create_collection(name, vectors_config=vectors, metadata=metadata)
        try:
            with self._errors(name, "create"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # local mode warns that payload indexes do nothing there
                for key, kind in fields.items():
                    self.client.create_payload_index(name, key, models.PayloadSchemaType(kind), wait=True)
        except BaseException:
            # Never leave a marked collection without its indexes; best effort, the first error wins.
            with suppress(Exception):
                self.client.delete_collection(name)
            raise
        self._owned.add(name)

    def drop(self, name: str) -> None:
        self._describe(name)
        with self._errors(name, "drop"):
            self.client.delete_collection(name)
        self._owned.discard(name)

    def info(self, name: str) -> CollectionInfo:
        desc = self._describe(name)
        meta = desc.config.metadata or {}
        vectors = desc.config.params.vectors
        dims = {k: int(v.size) for k, v in vectors.items()} if isinstance(vectors, Mapping) else {}
        schema = {k: str(getattr(v.data_type, "value", v.data_type)) for k, v in (desc.payload_schema or {}).items()}
        if self._local and not schema:
            schema = dict(meta.get(INDEXED_KEY) or {})
        return CollectionInfo(
            name=name,
            points=self.count(name),
            vectors=dims,
            payload_schema=schema,
            metadata={k: v for k, v in meta.items() if k not in _RESERVED},
        )

    def set_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        old = self._describe(name).config.metadata or {}
        new = {**json_copy(metadata), MARKER: FORMAT, INDEXED_KEY: old.get(INDEXED_KEY, {})}
        # Qdrant merges metadata updates; a null value deletes a key, which turns the merge into a replace.
        patch = {**{k: None for k in old if k not in new}, **new}
        with self._errors(name, "set_metadata"):
            self.client.update_collection(name, metadata=patch)

    # -- points --------------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        self._check(name)
        with self._errors(name, "upsert"):
            for chunk in batched(points, 256):
                structs = [
                    models.PointStruct(
                        id=p.id, vector={k: as_list(v) for k, v in p.vectors.items()}, payload=dict(p.payload)
                    )
                    for p in chunk
                ]
                self.client.upsert(name, points=structs, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self._check(name)
        with self._errors(name, "delete"):
            self.client.delete(name, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def set_payload(self, name: str, id: str, payload: Mapping[str, Any]) -> None:
        self._check(name)
        with self._errors(name, "set_payload"):
            self.client.overwrite_payload(name, payload=dict(payload), points=[id], wait=True)

    def scroll(self, name: str, fields: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        self._check(name)
        with_payload: Any = True if fields is None else (list(fields) or False)
        offset: Any = None
        while True:
            with self._errors(name, "scroll"):
                records, offset = self.client.scroll(
                    name, limit=512, offset=offset, with_payload=with_payload, with_vectors=False
                )
            for rec in records:
                yield str(rec.id), dict(rec.payload or {})
            if offset is None:
                return

    def retrieve(self, name: str, ids: Sequence[str]) -> list[Hit]:
        self._check(name)
        with self._errors(name, "retrieve"):
            records = self.client.retrieve(name, ids=list(ids), with_payload=True, with_vectors=False)
        found = {str(r.id): _hit(r) for r in records}
        return [found[str(i)] for i in ids if str(i) in found]

    # -- search --------------------------------------------------------------------------------

    def query_fused(
        self,
        name: str,
        vectors: Mapping[str, Vector],
        *,
        limit: int,
        prefetch_limit: int,
        fusion: Fusion = "rrf",
        filter: SearchFilter | None = None,
    ) -> list[Hit]:
        self._check(name)
        flt = _filter(filter)
        prefetch = [
            models.Prefetch(query=v, using=k, limit=prefetch_limit, filter=flt) for k, v in _vectors(vectors).items()
        ]
        if fusion not in ("rrf", "dbsf"):
            raise QueryError(f"unknown fusion {fusion!r}: use 'rrf' or 'dbsf'")
        query = models.FusionQuery(fusion=models.Fusion.RRF if fusion == "rrf" else models.Fusion.DBSF)
        with self._errors(name, "query"):
            result = self.client.query_points(
                name, prefetch=prefetch, query=query, limit=limit, with_payload=True, with_vectors=False
            )
        return [_hit(p) for p in result.points]

    def query_each(
        self,
        name: str,
        vectors: Mapping[str, Vector],
        *,
        limit: int,
        filter: SearchFilter | None = None,
    ) -> dict[str, list[Hit]]:
        self._check(name)
        flt = _filter(filter)
        named = _vectors(vectors)
        requests = [
            models.QueryRequest(query=v, using=k, limit=limit, filter=flt, with_payload=True)
            for k, v in named.items()
        ]
        with self._errors(name, "query"):
            responses = self.client.query_batch_points(name, requests=requests)
        return {k: [_hit(p) for p in r.points] for k, r in zip(named, responses, strict=True)}

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        self._check(name)
        with self._errors(name, "count"):
            return int(self.client.count(name, count_filter=_filter(filter), exact=True).count)

    def facet_counts(self, name: str, key: str) -> dict[Any, int]:
        limit = max(1, self.count(name))  # distinct values <= points: never truncated
        with self._errors(name, "facet"):
            response = self.client.facet(name, key=key, limit=limit, exact=True)
        return {h.value: int(h.count) for h in response.hits}

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    # -- internals -----------------------------------------------------------------------------

    def _describe(self, name: str) -> models.CollectionInfo:
        """Fetch a collection's description, refusing it unless it carries our marker."""
        check_name(name)
        with self._errors(name, "open"):
            desc = self.client.get_collection(name)
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

    @contextmanager
    def _errors(self, name: str | None = None, op: str = "request") -> Iterator[None]:
        """Turn qdrant-client's many failure types into one-line StoreErrors the CLI can print."""
        where = f" on collection {name!r}" if name else ""
        try:
            yield
        except EnclipError:
            raise
        except UnexpectedResponse as e:
            detail = _line(_response_error(e))
            if e.status_code in (401, 403):
                raise self._auth_error(f"HTTP {e.status_code}") from e
            if e.status_code == 404 and name and "collection" in detail.lower():
                self._owned.discard(name)
                raise CollectionNotFound(f"no collection {name!r} at {self.location}") from e
            raise StoreError(f"{op}{where} failed: HTTP {e.status_code}: {detail}") from e
        except ResponseHandlingException as e:
            raise StoreError(f"cannot reach Qdrant at {self.location}: {_line(str(e.source)) or e}") from e
        except grpc.RpcError as e:
            code, detail = e.code(), _line(e.details() or "")  # type: ignore[attr-defined]
            if code in _UNREACHABLE:
                raise StoreError(f"cannot reach Qdrant at {self.location}: {detail}") from e
            if code in _AUTH:
                raise self._auth_error(code.name) from e
            if code == grpc.StatusCode.NOT_FOUND and name and "collection" in detail.lower():
                self._owned.discard(name)
                raise CollectionNotFound(f"no collection {name!r} at {self.location}") from e
            raise StoreError(f"{op}{where} failed: {code.name}: {detail}") from e
        except ValueError as e:  # local mode
            detail = _line(str(e))
            if name and detail.startswith("Collection") and detail.endswith("not found"):
                self._owned.discard(name)
                raise CollectionNotFound(f"no collection {name!r} at {self.location}") from e
            raise StoreError(f"{op}{where} failed: {detail}") from e
        except KeyError as e:  # local mode: unknown point id
            raise StoreError(f"{op}{where} failed: no point {e}") from e
        except Exception as e:
            raise StoreError(f"{op}{where} failed: {type(e).__name__}: {_line(str(e))}") from e

    def _auth_error(self, status: str) -> StoreError:
        return StoreError(f"Qdrant at {self.location} refused the request ({status}): check the API key")

