"""Embedded backend: one qdrant-edge shard per collection, in-process, no server to run.

Layout: `home/collections/<name>/shard/` holds the shard and `home/collections/<name>/enclip.json` the
spec (qdrant-edge has no collection metadata). A collection counts only once its folder has
`enclip.json`, and the folder is built under a hidden temporary name and renamed into place, so an
interrupted `create` never shows up as a half collection; that temporary folder gets a marker file first,
so the next writer can sweep what a crash left (and only that). Aliases live in
`home/collections/.aliases.json` (hidden, so no collection name can clash with it), replaced whole by an
atomic write: a reader always sees a complete mapping, the old or the new. Every change to the layout
(create, drop, aliases, a spec's metadata) runs under one cross-process lock, so concurrent writers
never lose each other's updates.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    Expression,
    FacetRequest,
    FieldCondition,
    Filter,
    Formula,
    HasVectorCondition,
    HnswIndexConfig,
    MatchAny,
    MatchValue,
    Modifier,
    PayloadSchemaType,
    Point,
    PointVectors,
    Prefetch,
    Query,
    QueryBatchRequest,
    QueryRequest,
    ScalarQuantizationConfig,
    ScalarType,
    ScrollRequest,
    SearchParams,
    SparseVector,
    UpdateOperation,
)
from qdrant_edge import Fusion as EdgeFusion

from enclip_qdrant.errors import CollectionNotFound, EnclipError, StoreError, first_line
from enclip_qdrant.files import BusyError, atomic_write_json, locked
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
    SparseVec,
    Store,
    batched,
)
from enclip_qdrant.store.base import SearchParams as Params
from enclip_qdrant.store.common import (
    FORMAT,
    MARKER,
    NAME,
    SCHEMA_TYPES,
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

SPEC_FILE = "enclip.json"
SHARD_DIR = "shard"
ALIASES_FILE = ".aliases.json"
LAYOUT_LOCK = ".layout"  # `locked()` on this path guards creates, drops, aliases and spec rewrites
# Written first into a folder being built or torn down, removed last: a folder that still has it after its
# writer is gone is provably ours and incomplete, so it may be swept.
WORK_MARKER = ".enclip-incomplete"
_WORK_PREFIXES = (".creating-", ".dropping-")
# Qdrant's own HNSW defaults: qdrant-edge wants all three numbers when any one is set.
HNSW_DEFAULTS = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000}






def edge_config(vectors: Mapping[str, int], options: CollectionOptions | None,
                sparse: Sequence[str] = ()) -> EdgeConfig:
    """What qdrant-edge can honour of the options; sharding and replication mean nothing in one process."""
    opts = options or CollectionOptions()
    on_disk = True if opts.on_disk_vectors else None
    params = {k: EdgeVectorParams(size=d, distance=Distance.Cosine, on_disk=on_disk) for k, d in vectors.items()}
    hnsw = None
    if opts.hnsw_m is not None or opts.hnsw_ef_construct is not None or opts.hnsw_full_scan_kb is not None:
        hnsw = HnswIndexConfig(
            m=HNSW_DEFAULTS["m"] if opts.hnsw_m is None else opts.hnsw_m,
            ef_construct=opts.hnsw_ef_construct or HNSW_DEFAULTS["ef_construct"],
            full_scan_threshold=opts.hnsw_full_scan_kb or HNSW_DEFAULTS["full_scan_threshold"],
        )
    quantization = ScalarQuantizationConfig(ScalarType.Int8, always_ram=True) if opts.quantization == "int8" else None
    sparse_params = {k: EdgeSparseVectorParams(modifier=Modifier.Idf) for k in sparse} or None
    optimizers = None if opts.indexing_threshold is None else EdgeOptimizersConfig(
        indexing_threshold=opts.indexing_threshold)
    return EdgeConfig(vectors=params, sparse_vectors=sparse_params, hnsw_config=hnsw, quantization_config=quantization,
                      optimizers=optimizers)


def _edge_params(params: Params | None) -> SearchParams | None:
    return None if params is None or params.is_default() else SearchParams(hnsw_ef=params.hnsw_ef,
                                                                            exact=params.exact)


def edge_vector(v: list[float] | SparseVec) -> Any:
    return SparseVector(list(v.indices), list(v.values)) if isinstance(v, SparseVec) else v






def edge_filter(flt: SearchFilter | None) -> Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    if flt.clusters is not None:
        must.append(FieldCondition("cluster", match=MatchAny([int(c) for c in flt.clusters])))
    for key, values in flt.fields.items():
        vals = list(values)
        match = MatchValue(vals[0]) if len(vals) == 1 else MatchAny(vals)
        must.append(FieldCondition(json_path(key), match=match))
    return Filter(must=must)


class EdgeStore(Store):
    """Collections as qdrant-edge shards under `home`; opened shards are cached until `close()`."""

    kind = "embedded"

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.location = str(self.home)
        self._root = self.home / "collections"
        self._shards: dict[str, EdgeShard] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        if self._root.is_dir():
            try:
                with locked(self._root / LAYOUT_LOCK, timeout=0):
                    self._sweep()
            except (BusyError, OSError):
                pass  # busy (another process is changing the layout) or read-only: the next writer sweeps

    # -- collections ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return sorted(
            p.name for p in self._root.iterdir() if NAME.match(p.name) and (p / SPEC_FILE).is_file()
        )

    def exists(self, name: str) -> bool:
        """True for a collection or an alias of one: either way the name is taken."""
        return self._is_collection(name) or name in self.aliases()

    def _is_collection(self, name: str) -> bool:
        return (self._root / check_name(name) / SPEC_FILE).is_file()

    def create(self, name: str, spec: CollectionSpec) -> None:
        check_name(name)
        if name in self.aliases():
            raise StoreError(f"{name!r} is an alias in {self.location}: a collection cannot take its name")
        if self.exists(name):
            raise StoreError(f"collection {name!r} already exists in {self.location}")
        if not spec.vectors:
            raise StoreError("a collection needs at least one named vector")
        doc = {
            MARKER: FORMAT,
            "vectors": {str(k): int(v) for k, v in spec.vectors.items()},
            "indexed_fields": indexed_fields(spec),
            "metadata": metadata_copy(spec.metadata),
        }
        if spec.sparse_vectors:  # only written when there are some: older specs stay byte-identical
            doc["sparse_vectors"] = [str(k) for k in spec.sparse_vectors]
        if spec.options is not None:
            doc["options"] = spec.options.to_dict()
        self._root.mkdir(parents=True, exist_ok=True)
        config = edge_config(doc["vectors"], spec.options, doc.get("sparse_vectors", ()))
        with locked(self._root / LAYOUT_LOCK, what=f"the embedded store at {self.location}"):
            self._sweep()
            if name in self.aliases():
                raise StoreError(f"{name!r} is an alias in {self.location}: a collection cannot take its name")
            if (self._root / name).exists():
                if self._is_collection(name):
                    raise StoreError(f"collection {name!r} already exists in {self.location}")
                raise StoreError(f"{self._root / name} exists but is not a collection: remove it first")
            tmp = self._root / f".creating-{name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            (tmp / WORK_MARKER).touch()
            try:
                with self._errors(name, "create"):
                    shard = EdgeShard.create(str(tmp / SHARD_DIR), config)
                    try:
                        for key, kind in doc["indexed_fields"].items():
                            schema = getattr(PayloadSchemaType, SCHEMA_TYPES[kind])
                            shard.update(UpdateOperation.create_field_index(json_path(key), schema))
                        shard.flush()
                    finally:
                        shard.close()
                atomic_write_json(tmp / SPEC_FILE, doc, sort_keys=True)
                (tmp / WORK_MARKER).unlink()  # complete: from here on it is a collection, never swept
                tmp.rename(self._root / name)  # atomic: the collection appears whole or not at all
            finally:
                if tmp.exists():  # failed before the rename: never leave it behind
                    shutil.rmtree(tmp, ignore_errors=True)

    def drop(self, name: str) -> None:
        with locked(self._root / LAYOUT_LOCK, what=f"the embedded store at {self.location}"):
            refuse_drop(self.aliases(), name, self.location)
            self._shard(name)  # takes the shard's lock: never delete a shard another process has open
            self._forget(name)
            (self._root / name / WORK_MARKER).touch()
            trash = self._root / f".dropping-{name}-{uuid.uuid4().hex[:8]}"
            (self._root / name).rename(trash)  # vanishes from listings at once, even if the removal dies
            _remove_marked(trash)

    def info(self, name: str) -> CollectionInfo:
        name = self.resolve(name)
        spec = self._spec(name)
        with self._errors(name, "info"):
            shard_info = self._shard(name).info()
        # PyO3 enums have no `.name`; their str() is "PayloadSchemaType.Integer"
        schema = {payload_key(k): str(v.data_type).rsplit(".", 1)[-1].lower()
                  for k, v in shard_info.payload_schema.items()}
        return CollectionInfo(
            name=name,
            points=int(shard_info.points_count),
            vectors=dict(spec["vectors"]),
            payload_schema=schema,
            metadata=metadata_copy(spec["metadata"]),
            sparse_vectors=list(spec.get("sparse_vectors", [])),
            index=self._index_state(name, spec, shard_info),
        )

    def _index_state(self, name: str, spec: Mapping[str, Any], shard_info: Any) -> IndexState:
        """qdrant-edge counts the sparse vectors in its inverted index as indexed too: those are taken off,
        so what remains are the member vectors in HNSW graphs."""
        shard = self._shard(name)
        with self._errors(name, "info"):
            sparse = sum(int(shard.count(CountRequest(exact=True, filter=Filter(must=[HasVectorCondition(k)]))))
                         for k in spec.get("sparse_vectors", []))
        points = int(shard_info.points_count)
        return IndexState(hnsw=bool(spec.get("hnsw", False)), vectors=points * len(spec["vectors"]),
                          indexed_vectors=max(0, int(shard_info.indexed_vectors_count) - sparse),
                          segments=int(shard_info.segments_count))

    def build_index(self, name: str, *, hnsw: bool = True, progress: Progress | None = None) -> IndexState:
        """Records the choice in the spec, then runs qdrant-edge's own optimizer, which builds an HNSW graph per
        named vector for each segment above the indexing threshold (and merges small segments). It holds the
        GIL until done, so progress is a line before and one after, not a moving bar."""
        name = self.resolve(name)
        progress = progress or NullProgress()
        with locked(self._root / LAYOUT_LOCK, what=f"the embedded store at {self.location}"):
            self._specs.pop(name, None)
            doc = dict(self._spec(name))
            if bool(doc.get("hnsw", False)) != hnsw:
                doc["hnsw"] = hnsw
                atomic_write_json(self._root / name / SPEC_FILE, doc, sort_keys=True)
            self._specs[name] = doc
        if hnsw:
            before = self.info(name).index
            assert before is not None
            task = progress.task(f"HNSW index of {name} ({before.vectors - before.indexed_vectors:,} member "
                                 f"vectors not yet indexed)", total=None)
            t = time.perf_counter()
            shard = self._shard(name)
            try:
                with self._errors(name, "optimize"):
                    changed = shard.optimize()
                    shard.flush()
            finally:
                task.close()
            after = self.info(name).index
            assert after is not None
            if changed:
                progress.log(f"HNSW index of {name}: {after.indexed_vectors:,} of {after.vectors:,} member vectors "
                             f"indexed, {after.segments} segments, in {time.perf_counter() - t:.0f} s")
            return after
        state = self.info(name).index
        assert state is not None
        return state

    def describe(self, name: str) -> CollectionInfo:
        """`info` from the spec alone unless the shard is open here already: opening a shard locks it against
        every other process, so a listing must never open one (points stay None)."""
        name = self.resolve(name)
        if name in self._shards:
            return self.info(name)
        spec = self._spec(name)
        return CollectionInfo(name=name, points=None, vectors=dict(spec["vectors"]),
                              payload_schema=dict(spec.get("indexed_fields", {})),
                              metadata=metadata_copy(spec["metadata"]),
                              sparse_vectors=list(spec.get("sparse_vectors", [])))

    def set_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        name = self.resolve(name)
        with locked(self._root / LAYOUT_LOCK, what=f"the embedded store at {self.location}"):
            self._specs.pop(name, None)  # read what is on disk now, not what this process saw earlier
            doc = dict(self._spec(name))
            doc["metadata"] = metadata_copy(metadata)
            atomic_write_json(self._root / name / SPEC_FILE, doc, sort_keys=True)
            self._specs[name] = doc

    # -- points --------------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        shard = self._shard(name)
        with self._errors(name, "upsert"):
            for chunk in batched(points, 1024):
                ops = [
                    Point(p.id, {**{k: as_list(v) for k, v in p.vectors.items()},
                                 **{k: edge_vector(v) for k, v in p.sparse.items()}}, dict(p.payload))
                    for p in chunk
                ]
                shard.update(UpdateOperation.upsert_points(ops))
            shard.flush()

    def delete(self, name: str, ids: Sequence[str]) -> None:
        shard = self._shard(name)
        with self._errors(name, "delete"):
            shard.update(UpdateOperation.delete_points(list(ids)))
            shard.flush()

    def set_payload(self, name: str, id: str, payload: Mapping[str, Any]) -> None:
        shard = self._shard(name)
        with self._errors(name, "set_payload"):
            shard.update(UpdateOperation.overwrite_payload([id], dict(payload)))
            shard.flush()

    def set_sparse(self, name: str, id: str, vector_name: str, vector: SparseVec | None) -> None:
        shard = self._shard(name)
        with self._errors(name, "set_sparse"):
            if vector is None:
                shard.update(UpdateOperation.delete_vectors([id], [vector_name]))
            else:
                shard.update(UpdateOperation.update_vectors([PointVectors(id, {vector_name: edge_vector(vector)})]))
            shard.flush()

    def scroll(self, name: str, fields: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        shard = self._shard(name)
        with_payload: Any = True if fields is None else ([json_path(f) for f in fields] or False)
        offset: Any = None
        while True:
            with self._errors(name, "scroll"):
                records, offset = shard.scroll(
                    ScrollRequest(offset=offset, limit=512, with_payload=with_payload, with_vector=False)
                )
            for rec in records:
                yield str(rec.id), dict(rec.payload or {})
            if offset is None:
                return

    def scroll_points(self, name: str, batch: int = 256) -> Iterator[PointRecord]:
        shard = self._shard(name)
        offset: Any = None
        while True:
            with self._errors(name, "scroll"):
                records, offset = shard.scroll(
                    ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=True)
                )
            for rec in records:
                dense, sparse = _split(rec.vector or {})
                yield PointRecord(str(rec.id), dense, dict(rec.payload or {}), sparse)
            if offset is None:
                return

    def retrieve(self, name: str, ids: Sequence[str]) -> list[Hit]:
        shard = self._shard(name)
        with self._errors(name, "retrieve"):
            found = {str(r.id): hit(r) for r in shard.retrieve(list(ids), True, False)}
            wanted = [str(uuid.UUID(str(x))) for x in ids]  # edge returns canonical UUID text
        return [found[i] for i in wanted if i in found]

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
        params: Params | None = None,
    ) -> list[Hit]:
        shard = self._shard(name)
        named = nonempty(vectors)
        how = _edge_params(params)
        lists = [
            Prefetch(limit=prefetch_limit, query=Query.Nearest(edge_vector(v), using=k),
                     filter=edge_filter(filter_for(k, filter, vector_filters)), params=how)
            for k, v in named.items()
        ]
        w = rrf_weights(list(named), check_fusion(fusion), weights)
        if w is None:  # plain RRF or DBSF: one fusion over the lists
            prefetches, root = lists, _fusion(fusion)
        else:  # weighted RRF: each list ranked by its own RRF, the root sums w x that score (common.py)
            prefetches = [Prefetch(limit=prefetch_limit, query=EdgeFusion.Rrf(k=RRF_K), prefetches=[p]) for p in lists]
            root = Formula(Expression.Sum([Expression.Mult([Expression.Constant(wi), Expression.Variable(var)])
                                           for wi, var in weighted_formula_terms(w)]))
        request = QueryRequest(limit=limit + tie_margin(len(lists)), prefetches=prefetches, query=root,
                               with_payload=True, with_vector=False)
        with self._errors(name, "query"):
            return stable_order([hit(p) for p in shard.query(request)], limit)

    def query_each(
        self,
        name: str,
        vectors: Mapping[str, QueryVector],
        *,
        limit: int,
        filter: SearchFilter | None = None,
        vector_filters: Mapping[str, SearchFilter | None] | None = None,
        params: Params | None = None,
    ) -> dict[str, list[Hit]]:
        shard = self._shard(name)
        named = nonempty(vectors)
        how = _edge_params(params)
        requests = [
            QueryRequest(limit=limit, query=Query.Nearest(edge_vector(v), using=k),
                         filter=edge_filter(filter_for(k, filter, vector_filters)), with_payload=True, params=how)
            for k, v in named.items()
        ]
        with self._errors(name, "query"):
            results = shard.query_batch(QueryBatchRequest(requests))
        return {k: [hit(p) for p in res] for k, res in zip(named, results, strict=True)}

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        shard = self._shard(name)
        with self._errors(name, "count"):
            return int(shard.count(CountRequest(exact=True, filter=edge_filter(filter))))

    def facet_counts(self, name: str, key: str) -> dict[Any, int]:
        shard = self._shard(name)
        with self._errors(name, "facet"):
            limit = max(1, shard.info().points_count)  # distinct values <= points: never truncated
            response = shard.facet(FacetRequest(json_path(key), limit=limit, exact=True))
        return {h.value: int(h.count) for h in response}

    # -- aliases -------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        path = self._root / ALIASES_FILE
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read {path}: {e}") from e

    def resolve(self, name: str) -> str:
        target = self.aliases().get(check_name(name))
        if target is not None:
            return target
        if self._is_collection(name):
            return name
        raise CollectionNotFound(f"no collection {name!r} in {self.location}")

    def set_alias(self, alias: str, collection: str) -> None:
        check_name(alias)
        if self._is_collection(alias):
            raise StoreError(f"{alias!r} is a collection in {self.location}: an alias cannot take its name")
        if not self._is_collection(collection):
            raise CollectionNotFound(f"no collection {collection!r} in {self.location} for alias {alias!r}")
        self._root.mkdir(parents=True, exist_ok=True)
        with locked(self._root / LAYOUT_LOCK, what=f"the embedded store at {self.location}"):
            if not self._is_collection(collection):  # again under the lock: a drop may have won the race
                raise CollectionNotFound(f"no collection {collection!r} in {self.location} for alias {alias!r}")
            atomic_write_json(self._root / ALIASES_FILE, {**self.aliases(), alias: collection}, sort_keys=True)

    def delete_alias(self, alias: str) -> None:
        check_name(alias)
        with locked(self._root / LAYOUT_LOCK, what=f"the embedded store at {self.location}"):
            current = self.aliases()
            if current.pop(alias, None) is None:
                raise CollectionNotFound(f"no alias {alias!r} in {self.location}")
            atomic_write_json(self._root / ALIASES_FILE, current, sort_keys=True)

    def release(self, name: str) -> None:
        self._forget(self.aliases().get(check_name(name), name))

    def close(self) -> None:
        for name in list(self._shards):
            self._forget(name)

    # -- internals -----------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Remove what a crashed create or drop left: only hidden work folders that still carry our marker.
        Callers hold the layout lock, so no live create or drop owns them."""
        for folder in self._root.iterdir():
            if folder.name.startswith(_WORK_PREFIXES) and (folder / WORK_MARKER).is_file():
                _remove_marked(folder)

    def _spec(self, name: str) -> dict[str, Any]:
        name = self.aliases().get(check_name(name), name)
        if name not in self._specs:
            path = self._root / check_name(name) / SPEC_FILE
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise CollectionNotFound(f"no collection {name!r} in {self.location}") from None
            except (OSError, ValueError) as e:
                raise StoreError(f"cannot read {path}: {e}") from e
            if doc.get(MARKER) != FORMAT:
                raise StoreError(f"{path} has unknown format {doc.get(MARKER)!r} (expected {FORMAT})")
            self._specs[name] = doc
        return self._specs[name]

    def _shard(self, name: str) -> EdgeShard:
        name = self.aliases().get(check_name(name), name)  # read per call: another process may switch it
        shard = self._shards.get(name)
        if shard is None:
            self._spec(name)
            path = self._root / name / SHARD_DIR
            try:
                shard = EdgeShard.load(str(path))
            except Exception as e:  # qdrant-edge raises bare Exception
                if "WouldBlock" in str(e):
                    raise StoreError(
                        f"collection {name!r} is in use by another process (a running `enclip-qdrant serve`, "
                        f"another `index`, or another open store) at {path}: stop it to change this collection "
                        "in place, or build beside it with `index --blue-green` (the same bundle or a new one; "
                        "a running service switches to it)"
                    ) from e
                raise StoreError(f"cannot open collection {name!r} at {path}: {first_line(e)}") from e
            self._shards[name] = shard
        return shard

    def _forget(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        self._specs.pop(name, None)
        if shard is not None:
            try:
                shard.flush()
            finally:
                shard.close()

    @contextmanager
    def _errors(self, name: str, op: str) -> Iterator[None]:
        """qdrant-edge raises bare Exception/ValueError; give the CLI one line that names the collection."""
        try:
            yield
        except EnclipError:
            raise
        except Exception as e:
            raise StoreError(f"{op} on collection {name!r} failed: {first_line(e)}") from e


def _fusion(fusion: Fusion) -> Any:
    return EdgeFusion.Rrf(k=RRF_K) if check_fusion(fusion) == "rrf" else EdgeFusion.Dbsf()


def _split(vectors: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, SparseVec]]:
    """A stored point's vectors as (dense by name, sparse by name), so `push` copies both kinds."""
    dense: dict[str, Any] = {}
    sparse: dict[str, SparseVec] = {}
    for k, v in vectors.items():
        if isinstance(v, SparseVector):
            sparse[k] = SparseVec(list(v.indices), list(v.values))
        else:
            dense[k] = v
    return dense, sparse


def _remove_marked(folder: Path) -> None:
    """Delete a folder we marked, the marker last: an interrupted removal stays marked and is swept later."""
    for child in folder.iterdir():
        if child.name != WORK_MARKER:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    (folder / WORK_MARKER).unlink(missing_ok=True)
    folder.rmdir()
