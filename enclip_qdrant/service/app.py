"""The query service: one loaded bundle and collection behind an HTTP API and a search page.

`create_app` builds the FastAPI app around a `Searcher` (made once, at startup, by `searcher_factory`);
`serve` loads it and runs uvicorn. Every user-caused failure answers 4xx `{"error": "<one line>"}` with
the same message the CLI prints; encoding goes through the micro-batcher (`batching.py`).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import ipaddress
import itertools
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclip_qdrant.api import Connection, Searcher
from enclip_qdrant.bundle.names import MANIFEST
from enclip_qdrant.catalog.images import decode_bounded, image_bound
from enclip_qdrant.collection.meta import CollectionMeta
from enclip_qdrant.errors import (
    BundleError,
    CatalogError,
    CollectionNotFound,
    EnclipError,
    InvalidName,
    QueryError,
    StoreError,
    first_line,
)
from enclip_qdrant.files import file_sha256
from enclip_qdrant.search.filters import FieldKinds
from enclip_qdrant.search.options import (
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_OVERSAMPLE,
    DEFAULT_TEXT_WEIGHT,
    DEFAULT_THRESHOLD,
    SearchOptions,
    parse_clusters,
    parse_filters,
)
from enclip_qdrant.search.query import plan_query, search
from enclip_qdrant.store import ServerOptions, SparseVec, Store

from .batching import BatchingEncoder, EncodeTimeout, MicroBatcher, Overloaded
from .limits import BodyDeadline, BodyTimeout, DecodeBudget, server_settings

ENV_KEY = "ENCLIP_API_KEY"
STATIC = Path(__file__).parent / "static"
# Payload keys that are enclip's bookkeeping, not catalog fields a person filters by.
_NOT_FIELDS = {"cluster", "product_id", "text", "image", "content_hash", "payload_hash"}
_FIELD_SCAN = 5000  # points read to list filterable field values (the page's filter menus)
_MAX_FIELD_VALUES = 50
_FIELD_TYPES_TTL = 300.0  # seconds a collection's filter field types are kept before they are read again
# What one request may ask for: each bound keeps a request's CPU cost small whatever its body holds.
MAX_TEXT = 2000  # characters of query text (the models read far fewer tokens)
MAX_FILTERS = 32
MAX_FILTER_CHARS = 512
MAX_CLUSTER_IDS = 1024


@dataclass(frozen=True)
class ServeOptions:
    """What `enclip-qdrant serve` runs. `key`: the service's own API key (never the Qdrant one)."""

    collection: str | None = None
    bundle: str | Path | None = None
    home: str | Path | None = None
    url: str | None = None  # Qdrant server; None = embedded store under `home`
    api_key: str | None = None  # Qdrant API key
    store_options: ServerOptions | Mapping[str, Any] | None = None  # prefer_grpc, timeout... for ServerStore
    host: str = "127.0.0.1"
    port: int = 8080
    key: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    request_timeout: float = 30.0
    max_top_k: int = 100
    engine: str = "auto"  # what encodes queries: onnx, torch, or auto (see load_bundle)
    device: str = "auto"  # where: auto, cpu, cuda (ONNX Runtime's CUDA provider with onnxruntime-gpu), mps
    header_timeout: float = 10.0  # seconds for a request's head (request line and headers) to arrive
    body_timeout: float = 20.0  # seconds for its body
    max_connections: int = 0  # open connections; 0: max(256, 8 x max_queue), always above the work queue
    max_json_bytes: int = 256 * 1024  # a body that is not a multipart upload
    decode_budget_bytes: int = 0  # decoded pixels in memory at once; 0: 2 x max_image_pixels x 4 bytes
    follow_seconds: float = 1.0  # how often the alias is checked for a blue/green switch or rollback; 0: never

    def __post_init__(self) -> None:
        if self.key is not None and not self.key.strip():
            raise QueryError(f"the service's API key (--key or {ENV_KEY}) is empty: an empty key would let anyone "
                             "in; give a real key, or unset it to serve without one on loopback")

    def connection_limit(self) -> int:
        return self.max_connections or max(256, 8 * self.max_queue)

    def connection(self) -> Connection:
        return Connection(home=self.home, url=self.url, api_key=self.api_key, options=self.store_options)  # type: ignore[arg-type] - Connection types it


class ServiceError(Exception):
    """An HTTP-level refusal with its status (413, 401, 403...) and one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def status_for(e: EnclipError) -> int:
    """Library errors to HTTP: the caller's fault is 4xx, an unreachable store is 503."""
    if isinstance(e, CollectionNotFound):
        return 404
    if isinstance(e, InvalidName):
        return 400
    if isinstance(e, StoreError):
        return 503
    if isinstance(e, BundleError):
        return 409
    if isinstance(e, (QueryError, CatalogError)):
        return 400
    return 400


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    line = (str(message).strip().splitlines() or ["error"])[0]
    return JSONResponse({"error": line}, status_code=status, headers=headers)


class SearchRequest(BaseModel):
    """A search or encode request; GET query parameters and multipart form fields use the same names."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, max_length=MAX_TEXT)
    top_k: int = Field(10, ge=1)
    # "auto", "all", "3,7" or [3, 7]
    clusters: Annotated[str, StringConstraints(max_length=8 * MAX_CLUSTER_IDS)] | Annotated[
        list[int], Field(max_length=MAX_CLUSTER_IDS)] = "auto"
    filter: list[Annotated[str, StringConstraints(max_length=MAX_FILTER_CHARS)]] = Field(  # ["field=value", ...]
        default_factory=list, max_length=MAX_FILTERS)
    fusion: str = "rrf"
    explain: bool = False
    like: str | None = Field(None, max_length=64)  # "more like this": a point id whose catalog image is the query
    collection: str | None = Field(None, max_length=255)
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0)
    max_clusters: int = Field(DEFAULT_MAX_CLUSTERS, ge=1)
    oversample: int = Field(DEFAULT_OVERSAMPLE, ge=1, le=50)
    text_weight: float = Field(DEFAULT_TEXT_WEIGHT, ge=0.0, le=100.0)  # the text prefetch's RRF weight; 0: off


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _validation_line(e: ValidationError | RequestValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
    return f"invalid {where}: {err.get('msg', 'bad value')}"


class LockedStore:
    """A store whose calls are serialised: the embedded engine and qdrant-client's local mode are not
    meant for concurrent callers. The embedded engine holds the GIL for its whole search (~2.5-4 ms of a
    fashion-dev query), so no lock-free sharing would overlap its searches either: this is what caps the
    embedded service near 1.5x its one-at-a-time rate at concurrency 8 (bench/serve_gil.py)."""

    def __init__(self, store: Store) -> None:
        self._store, self.lock = store, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                return attr(*args, **kwargs)
        return locked


class PerThreadStore:
    """A Qdrant server's store with one client per request thread, so the searches of concurrent requests
    overlap on the server instead of queueing behind one lock. No client is shared between threads:
    qdrant-client does not promise that one client is safe to share, and its maintainers point to a client per
    worker (qdrant/qdrant-client#246). bench/serve_gil.py: with the search off the GIL, concurrency 8 ran 3.1x
    the one-at-a-time rate without the lock and 2.0x with it (a stand-in of the server's latency; no server
    could run where it was measured)."""

    def __init__(self, store: Store) -> None:
        self._first = store  # used only under `lock` (Service.fields scrolls it); closed by its Searcher
        self.lock = threading.Lock()
        self._mine = threading.local()
        self._opened: list[Store] = []
        self._guard = threading.Lock()

    def _store(self) -> Store:
        store = getattr(self._mine, "store", None)
        if store is None:
            store = self._first.clone()
            with self._guard:
                self._opened.append(store)
            self._mine.store = store
        return store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store(), name)

    def close_threads(self) -> None:
        with self._guard:
            opened, self._opened = self._opened, []
        for store in opened:
            store.close()


def concurrent_store(store: Store) -> LockedStore | PerThreadStore:
    """How the service's threads share `store`: a client per thread where the store can open more (a Qdrant
    server), else one lock around every call (the embedded engine and local mode are not for concurrent
    callers, and the embedded engine holds the GIL while it searches anyway)."""
    return PerThreadStore(store) if store.thread_clients else LockedStore(store)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, whether or not it declared its length."""

    def __init__(self, app: ASGIApp, limit: int, json_limit: int | None = None) -> None:
        self.app, self.upload_limit = app, limit
        self.json_limit = limit if json_limit is None else min(limit, json_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        # only a multipart upload carries an image; anything else is a small JSON request
        limit = self.upload_limit if headers.get(b"content-type", b"").startswith(b"multipart/") else self.json_limit
        message = f"request body too large: the limit is {limit:,} bytes"
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _error(413, message)(scope, receive, send)
            return
        seen, tripped, replaced = 0, False, False

        async def counted() -> Message:
            nonlocal seen, tripped
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    tripped = True
                    raise ServiceError(413, message)
            return msg

        async def respond_413() -> None:
            nonlocal replaced
            if not replaced:
                replaced = True
                await _error(413, message)(scope, receive, send)

        async def guarded_send(msg: Message) -> None:
            # Once the body is over the limit, whatever the app answers (its error handlers may see the
            # exception wrapped in other exceptions) is replaced by the 413.
            if tripped:
                await respond_413()
            else:
                await send(msg)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not tripped:
                raise
            await respond_413()


class Guard:
    """ASGI middleware: the API key on /v1 and /images calls, and the request timeout (504)."""

    def __init__(self, app: ASGIApp, key: str | None, timeout: float) -> None:
        self.app, self.key, self.timeout = app, key, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.key and (path.startswith("/v1/") or path.startswith("/images/")) and not _key_ok(
                Request(scope), self.key, allow_cookie=path.startswith("/images/")):
            await _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                         {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        started = asyncio.Event()

        async def tracked(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                started.set()
            await send(msg)

        # The timeout covers the wait for an answer: once the response has started it runs to its end.
        task = asyncio.ensure_future(self.app(scope, receive, tracked))
        begun = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({task, begun}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            begun.cancel()
        if not task.done() and not started.is_set():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await _error(504, f"request timed out after {self.timeout:g} s")(scope, receive, send)
            return
        try:
            await task
        except ServiceError as e:  # the body limit, raised while the endpoint read the body
            if started.is_set():
                raise
            await _error(e.status, str(e), e.headers)(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_warnings(options: ServeOptions) -> list[str]:
    """What `serve` says before starting: an open service beyond this machine is worth a loud line."""
    if not is_loopback(options.host) and not options.key:
        return [f"warning: serving on {options.host}:{options.port} without an API key: anyone who can reach "
                f"this port can search this collection and read its catalog images; set --key or {ENV_KEY}"]
    return []


def catalog_file(root: Path, rel: str) -> Path:
    """A catalog image path, refused (`PermissionError`) unless it resolves inside `root`: `..`, absolute
    paths and symlinks pointing out of the catalog folder never serve a file."""
    base = root.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise PermissionError(rel)
    return target


@dataclass
class Served:
    """What answers a request: one physical collection, the bundle that built it and that bundle's batcher,
    with the caches read from the collection. A request leases one (`Service.lease`) and uses it to the end,
    so a blue/green switch or a rollback never mixes two collections or two bundles in one answer."""

    physical: str
    bundle: Any
    batcher: MicroBatcher
    encoder: BatchingEncoder
    recipe: Any
    catalog_root: Path | None
    image_bound: int
    fields: dict[str, list[Any]] | None = None
    kinds: FieldKinds | None = None
    users: int = 0
    retired: bool = False


class Service:
    """The loaded state behind the routes: the searcher's store shared by threads (`concurrent_store`), the
    served collection (`Served`, followed through its alias by a watcher thread) and the options."""

    def __init__(self, searcher: Searcher, options: ServeOptions) -> None:
        self.searcher, self.options = searcher, options
        self.store: Any = concurrent_store(searcher.store)
        self.collection = searcher.collection  # the name clients use: an alias when indexed blue/green
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failed: tuple[str, str] | None = None  # the last switch that could not be made, said once
        self.current = self._served(searcher.bundle, self.store.resolve(self.collection))
        self.decode_budget = DecodeBudget(options.decode_budget_bytes or 8 * options.max_image_pixels,
                                          options.request_timeout)
        self._watcher: threading.Thread | None = None
        if options.follow_seconds > 0:
            self._watcher = threading.Thread(target=self._follow, name="enclip-follow", daemon=True)
            self._watcher.start()

    def _served(self, bundle: Any, physical: str, reuse: Served | None = None) -> Served:
        """The state for `physical` (built by `bundle`); its shard is opened here, so a collection another
        process still holds fails now, before any request sees it. `reuse`: the batcher of the same bundle."""
        meta = self.store.describe(physical).metadata
        self.store.count(physical)  # opens it (the embedded store) and proves it answers
        if reuse is not None and reuse.bundle is bundle:
            batcher, encoder = reuse.batcher, reuse.encoder
        else:
            o = self.options
            batcher = MicroBatcher(bundle.embed_texts, bundle.embed_images, max_batch=o.max_batch,
                                   max_wait_ms=o.max_wait_ms, max_queue=o.max_queue).start()
            encoder = BatchingEncoder(batcher, timeout=o.request_timeout)
        served = Served(physical=physical, bundle=bundle, batcher=batcher, encoder=encoder,
                        recipe=CollectionMeta.from_dict(meta).text_recipe(),
                        catalog_root=Path(meta["catalog"]) if meta.get("catalog") else None,
                        image_bound=image_bound(bundle))
        self._scan_fields(served)
        return served

    @contextmanager
    def lease(self) -> Iterator[Served]:
        """The served state for one request; a state replaced meanwhile is released after its last lease."""
        with self._lock:
            cur = self.current
            cur.users += 1
        try:
            yield cur
        finally:
            with self._lock:
                cur.users -= 1
                done = cur.retired and cur.users == 0
            if done:
                self._release(cur)

    def _release(self, old: Served) -> None:
        """Close what only `old` used: its batcher (another bundle's) and its collection's shard."""
        cur = self.current
        if old.batcher is not cur.batcher:
            old.batcher.close()
        if old.physical != cur.physical:
            self.store.release(old.physical)

    def follow(self) -> bool:
        """Serve what the alias points at now: after `index --blue-green` or `rollback` (in this process or
        another) the new collection and its bundle are loaded while the old keep answering, then swapped in at
        once. True when it switched."""
        target = self.store.resolve(self.collection)
        cur = self.current
        if target == cur.physical:
            return False
        meta = CollectionMeta.from_dict(self.store.describe(target).metadata)
        bundle = cur.bundle if meta.bundle_fingerprint == cur.bundle.fingerprint else self._bundle_for(target, meta)
        new = self._served(bundle, target, reuse=cur)
        with self._lock:
            old, self.current = self.current, new
            old.retired = True
            idle = old.users == 0
        if idle:
            self._release(old)
        print(f"serving {self.collection!r} from {target} now (bundle {bundle.fingerprint}; was {old.physical})",
              file=sys.stderr, flush=True)
        return True

    def _bundle_for(self, physical: str, meta: CollectionMeta) -> Any:
        """The bundle that built `physical`: the one `serve` was given, the workspace's or the one its metadata
        names, whichever has its fingerprint."""
        from enclip_qdrant.bundle.manifest import read_manifest
        from enclip_qdrant.collection.meta import check_compatible
        from enclip_qdrant.engine.load import load_bundle

        given = self.options.bundle if isinstance(self.options.bundle, (str, Path)) else None
        for candidate in (given, self.searcher.conn.workspace.bundle_for(self.collection), meta.bundle_path):
            if candidate and Path(candidate, MANIFEST).is_file() and \
                    read_manifest(Path(candidate)).get("fingerprint") == meta.bundle_fingerprint:
                bundle = load_bundle(Path(candidate), engine=self.options.engine)
                check_compatible(self.store, physical, bundle)
                return bundle
        raise BundleError(f"{physical!r} was built by bundle {meta.bundle_fingerprint or '?'}, which is not on this "
                          f"machine: still serving {self.current.physical!r}")

    def _follow(self) -> None:
        """The watcher: checks the alias every `follow_seconds`; a switch that fails (the indexer still holds
        the new collection, its bundle is missing) is said once and tried again."""
        while not self._stop.wait(self.options.follow_seconds):
            try:
                self.follow()
                self._failed = None
            except Exception as e:  # keep serving what works; never let the watcher die
                line = first_line(e)
                key = (self.collection, line)
                if key != self._failed:
                    self._failed = key
                    print(f"not switching {self.collection!r} yet: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.current.batcher.close()
        if isinstance(self.store, PerThreadStore):
            self.store.close_threads()
        self.searcher.close()

    def check_collection(self, name: str | None) -> None:
        """One collection is served; another name is an error, 404 when it does not exist at all."""
        if not name or name == self.collection:
            return
        if self.store.resolve(name) != self.store.resolve(self.collection):
            raise QueryError(f"this service serves collection {self.collection!r}, not {name!r}: "
                             f"run another `enclip-qdrant serve --collection {name}`")

    def _scan_fields(self, cur: Served) -> None:
        """Read the collection's first points once, for the filter menus and the filter field types: done when
        a collection is loaded (before it is swapped in), so no request waits for the scan."""
        with self.store.lock:  # scroll is a generator: hold the lock while it is read, not just made
            payloads = [p for _, p in itertools.islice(self.searcher.store.scroll(cur.physical), _FIELD_SCAN)]
            cur.kinds = FieldKinds(self.searcher.store, cur.physical, _FIELD_SCAN, shown_as=self.collection,
                                   payloads=payloads)
        values: dict[str, set[Any]] = {}
        for payload in payloads:
            for k, v in payload.items():
                if k not in _NOT_FIELDS and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                    values.setdefault(k, set()).add(v)
        cur.fields = {k: sorted(v, key=str) for k, v in sorted(values.items()) if 1 < len(v) <= _MAX_FIELD_VALUES}

    def fields(self, cur: Served) -> dict[str, list[Any]]:
        """Catalog fields with few distinct values (filter menus), from the first points of the collection
        (read when it was loaded)."""
        return cur.fields or {}

    def field_kinds(self, cur: Served) -> FieldKinds:
        """The served collection's filter field types, read once (and again after a while), so a filter costs
        no store call per field and an unknown one is refused at once."""
        kinds = cur.kinds
        if kinds is None or time.monotonic() - kinds.made > _FIELD_TYPES_TTL:
            with self.store.lock:  # the scan reads a generator: hold the lock while it is read
                kinds = cur.kinds = FieldKinds(self.searcher.store, cur.physical, _FIELD_SCAN, shown_as=self.collection)
        return kinds

    def image_path(self, point_id: str, cur: Served | None = None) -> Path:
        if cur is None:
            with self.lease() as cur:
                return self.image_path(point_id, cur)
        if cur.catalog_root is None:
            raise ServiceError(404, "this collection does not record its catalog folder")
        try:
            uuid.UUID(point_id)
        except ValueError:
            raise ServiceError(404, "no such product: a point id is a UUID, as search results give it") from None
        hits = self.store.retrieve(cur.physical, [point_id])
        if not hits or not hits[0].payload.get("image"):
            raise ServiceError(404, f"no product {point_id!r} in {self.collection!r}")
        try:
            path = catalog_file(cur.catalog_root, str(hits[0].payload["image"]))
        except PermissionError:
            raise ServiceError(403, "refused: that image is outside the catalog folder") from None
        if not path.is_file():
            raise ServiceError(404, f"image of {point_id!r} is missing from the catalog folder")
        want = hits[0].payload.get("content_hash")
        if not want or file_sha256(path) != want:  # only the very file indexed, never another under its name
            raise ServiceError(404, f"image of {point_id!r} is not the file that was indexed (changed since?): "
                                    "re-index the catalog")
        return path

    def read_image(self, data: bytes, name: str) -> Image.Image:
        """Decode an uploaded image; dimensions are checked from the header before any pixel is decoded, and
        the decode waits for its share of the decode budget, at reduced scale for JPEG, shrunk to the bound the
        library decodes queries to (`image_bound`)."""
        bound = self.current.image_bound
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > self.options.max_image_pixels:
                    raise QueryError(f"image {name} is too large: {w}x{h} pixels (the limit is "
                                     f"{self.options.max_image_pixels:,})")
                if im.format == "JPEG":
                    im.draft("RGB", (bound, bound))  # the size it decodes to, from here
                w, h = im.size
                share = self.decode_budget.acquire(w * h * (1 if im.mode in ("1", "L", "P") else 4))
                if share is None:
                    raise Overloaded(what="too many images being decoded")
                try:
                    return decode_bounded(im, bound)
                finally:
                    self.decode_budget.release(share)
        except Image.DecompressionBombError:
            raise QueryError(f"image {name} is too large to decode safely") from None
        except UnidentifiedImageError:
            raise QueryError(f"cannot read query image {name}: not an image format Pillow knows") from None
        except (OSError, ValueError) as e:
            raise QueryError(f"cannot read query image {name}: {str(e).splitlines()[0] if str(e) else 'bad data'}"
                             ) from None

    def _inputs(self, req: SearchRequest, image: Image.Image | None,
                cur: Served) -> tuple[str | None, Image.Image | None]:
        self.check_collection(req.collection)
        if req.top_k > self.options.max_top_k:
            raise QueryError(f"--top-k must be at most {self.options.max_top_k}")
        if req.like:
            if image is not None:
                raise QueryError("give an image or `like`, not both")
            image = self.read_image(self.image_path(req.like, cur).read_bytes(), req.like)
        return req.text, image

    def _options(self, req: SearchRequest) -> SearchOptions:
        """The request's search settings, checked once (a bad value is one 400 line before any encoding)."""
        clusters = parse_clusters(req.clusters) if isinstance(req.clusters, str) else req.clusters
        return SearchOptions(top_k=req.top_k, clusters=clusters, fusion=req.fusion,  # type: ignore[arg-type]
                             threshold=req.threshold, max_clusters=req.max_clusters, oversample=req.oversample,
                             explain=req.explain, text_weight=req.text_weight)

    def search(self, req: SearchRequest, image: Image.Image | None) -> dict[str, Any]:
        with self.lease() as cur:
            text, image = self._inputs(req, image, cur)
            resp = search(cur.bundle, self.store, cur.physical, text, image=image, options=self._options(req),
                          filters=parse_filters(req.filter), encoder=cur.encoder, recipe=cur.recipe,
                          field_kinds=self.field_kinds(cur))
        if req.like:
            resp.query["like"] = req.like
        return resp.to_dict(req.explain)

    def encode(self, req: SearchRequest, image: Image.Image | None) -> dict[str, Any]:
        """The query as vectors plus the Qdrant request `search` would send, for applications that query
        their own Qdrant (the collection name is the alias when there is one, so it follows blue/green)."""
        # imported here: the request is qdrant-client's model, and an embedded service never loads that client
        # unless an application asks for a body to send to its own server
        from enclip_qdrant.store.server import fused_query_request

        o = self._options(req)
        with self.lease() as cur:
            text, image = self._inputs(req, image, cur)
            plan = plan_query(cur.bundle, self.store, cur.physical, text, image, options=o,
                              filters=parse_filters(req.filter), encoder=cur.encoder, recipe=cur.recipe,
                              field_kinds=self.field_kinds(cur))
        body = fused_query_request(plan.vectors, limit=o.top_k, prefetch_limit=o.top_k * o.oversample,
                                   fusion=o.fusion, filter=plan.filter, weights=plan.weights,
                                   vector_filters=plan.vector_filters)
        return {
            "vectors": {name: [float(x) for x in v] for name, v in plan.encoded.vectors.items()},
            "sparse_vectors": {name: {"indices": list(v.indices), "values": list(v.values)}
                               for name, v in plan.vectors.items() if isinstance(v, SparseVec)},
            "clusters": [{"id": c, "p": round(p, 4)} for c, p in plan.chosen],
            "cluster_probs": [round(float(p), 6) for p in plan.encoded.cluster_probs],
            "qdrant": {"collection": self.collection, "method": "POST",
                       "path": f"/collections/{self.collection}/points/query",
                       "body": body.model_dump(mode="json", exclude_none=True)},
        }

    def collections(self) -> dict[str, Any]:
        with self.lease() as cur:
            return self._collections(cur)

    def _collections(self, cur: Served) -> dict[str, Any]:
        out = []
        aliases = self.store.aliases()
        served_name = cur.physical
        # beyond loopback the service shows only what it serves: the workspace's other collections are not the
        # business of whoever can reach the port
        names = self.store.list_collections() if is_loopback(self.options.host) else [served_name]
        for name in names:
            # only the served collection is read through its open shard: listing opens nothing (embedded)
            ci = self.store.info(name) if name == served_name else self.store.describe(name)
            served = sorted(a for a, t in aliases.items() if t == name)
            out.append({"name": name, "aliases": served, "points": ci.points, "vectors": ci.vectors,
                        "payload_schema": ci.payload_schema,
                        "bundle_fingerprint": ci.metadata.get("bundle_fingerprint"),
                        "served": name == served_name})
        return {"served": self.collection, "store": self.searcher.store.kind, "clusters": cur.bundle.clusters.k,
                "members": list(cur.bundle.vectors), "fields": self.fields(cur), "collections": out}

    def ready(self) -> dict[str, Any]:
        with self.lease() as cur:
            points = self.store.count(cur.physical)
            return {"ready": True, "collection": self.collection, "physical": cur.physical, "points": points,
                    "bundle": cur.bundle.fingerprint, "engine": cur.bundle.engine, "batches": vars(cur.batcher.stats)}



def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """fn(*args) and how long it took, in ms."""
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1e3


def _key_ok(request: Request, key: str, allow_cookie: bool = False) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
    if given is None and allow_cookie:
        given = request.cookies.get("enclip_key")
    # HTTP carries header bytes, which Starlette hands over as latin-1 text: the key matches when the client
    # sends the key's UTF-8 bytes (what curl and every HTTP library send for a non-ASCII string)
    return given is not None and hmac.compare_digest(given.encode("latin-1", "replace"), key.encode("utf-8"))


def create_app(options: ServeOptions | None = None, *,
               searcher_factory: Callable[[], Searcher] | None = None) -> FastAPI:
    """The app; the searcher is made at startup (lifespan) and closed at shutdown. Without a factory, it
    opens `options.collection` through `options.connection()`."""
    opts = options or ServeOptions()
    key = opts.key
    factory = searcher_factory or (lambda: Searcher(opts.collection, bundle=opts.bundle, conn=opts.connection(),
                                                         engine=opts.engine, device=opts.device))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        # Each waiting query holds a worker thread; let the queue bound, not the thread pool, decide.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, opts.max_queue + 8)
        svc = await run_in_threadpool(lambda: Service(factory(), opts))
        app.state.service = svc
        try:
            yield
        finally:
            app.state.service = None
            await run_in_threadpool(svc.close)

    app = FastAPI(title="enclip-qdrant query service", version="1", lifespan=lifespan,
                  description="ENCLIP search (an ensemble of CLIP models + cluster routing) over a Qdrant collection.")
    app.state.service = None
    app.state.options = opts

    def private(message: str) -> str:
        """Beyond loopback, local paths (the store's folder, the catalog's, the bundle's) stay out of answers."""
        svc = app.state.service
        if is_loopback(opts.host) or svc is None:
            return message
        places = [svc.store.location, svc.current.catalog_root, svc.current.bundle.path, opts.home]
        for place in sorted({str(p) for p in places if p}, key=len, reverse=True):
            message = message.replace(place, "<server path>")
        return message

    def service() -> Service:
        svc = app.state.service
        if svc is None:
            raise ServiceError(503, "the service is starting or stopping", {"Retry-After": "1"})
        return svc

    # -- errors: one JSON line each, never a traceback --------------------------------------------

    @app.exception_handler(EnclipError)
    async def _enclip(_: Request, e: EnclipError) -> JSONResponse:
        return _error(status_for(e), private(str(e)))

    @app.exception_handler(ServiceError)
    async def _service(_: Request, e: ServiceError) -> JSONResponse:
        return _error(e.status, str(e), e.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, e: Overloaded) -> JSONResponse:
        return _error(503, str(e), {"Retry-After": str(e.retry_after)})

    @app.exception_handler(BodyTimeout)
    async def _body_timeout(_: Request, e: BodyTimeout) -> JSONResponse:
        return _error(408, str(e), {"Connection": "close"})

    @app.exception_handler(EncodeTimeout)
    async def _encode_timeout(_: Request, e: EncodeTimeout) -> JSONResponse:
        return _error(504, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_line(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(e).__name__}); the server log has details")

    # -- middleware: timeout and auth (the body limit wraps the whole app, below) ---------------------

    # (a plain ASGI class, `Guard`, added below: Starlette's @app.middleware("http") wraps every response in
    # a streaming copy and a task group, a measurable share of a request's time at this service's speed)

    # -- routes -------------------------------------------------------------------------------------

    async def parse(request: Request) -> tuple[SearchRequest, Image.Image | None]:
        """GET query parameters, a JSON body, or a multipart form with an `image` file."""
        svc = service()
        image: Image.Image | None = None
        ctype = request.headers.get("content-type", "")
        strict = False
        if request.method == "GET":
            raw: dict[str, Any] = {k: v for k, v in request.query_params.items() if k != "filter"}
            raw["filter"] = request.query_params.getlist("filter")
            keys = [k for k, _ in request.query_params.multi_items() if k != "filter"]
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                raise QueryError(f"query parameter {repeated[0]!r} is given more than once (only `filter` repeats)")
        elif ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=64)
            raw = {k: v for k, v in form.items() if k not in ("filter", "image")}
            if any(not isinstance(v, str) for k, v in form.multi_items() if k != "image"):
                raise QueryError("only `image` may be a file; every other form field is text")
            raw["filter"] = [str(v) for v in form.getlist("filter")]
            upload = form.get("image")
            if isinstance(upload, UploadFile):
                data = await upload.read(opts.max_upload_bytes + 1)
                if len(data) > opts.max_upload_bytes:
                    raise ServiceError(413, f"image too large: the limit is {opts.max_upload_bytes:,} bytes")
                if data:
                    image = await run_in_threadpool(svc.read_image, data, upload.filename or "upload")
            elif upload:
                raise QueryError("`image` must be an uploaded file")
        elif ctype.startswith("application/json") or not ctype:
            try:
                raw = await request.json()
            except ValueError:
                raise QueryError("request body is not valid JSON") from None
            except RecursionError:
                raise QueryError("request body is nested too deeply") from None
            if not isinstance(raw, dict):
                raise QueryError("request body must be a JSON object")
            strict = True  # JSON has types: `top_k: true` or `explain: "maybe"` is an error, not 1 or false
        else:
            raise ServiceError(415, f"unsupported content type {ctype.split(';')[0]!r}: send JSON or a "
                                    "multipart form")
        if not strict and isinstance(raw.get("explain"), str):
            word = raw["explain"].strip().lower()
            if word not in _TRUE + _FALSE:
                raise QueryError(f"invalid explain: {raw['explain'][:20]!r} is not true or false")
            raw["explain"] = word in _TRUE
        try:
            req = SearchRequest.model_validate(raw, strict=strict)
        except ValidationError as e:
            raise QueryError(_validation_line(e)) from None
        return req, image  # pydantic refuses lone surrogates ("\\ud800") in any string: a 400 like the rest

    body_doc = {"requestBody": {"content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"}, "text": {"type": "string"},
            "top_k": {"type": "integer"}, "clusters": {"type": "string"},
            "filter": {"type": "array", "items": {"type": "string"}}, "fusion": {"type": "string"},
            "explain": {"type": "boolean"}}}}}}}

    @app.get("/v1/search", summary="Search by text (or `like` a product) with query parameters")
    async def search_get(request: Request) -> JSONResponse:
        req, image = await parse(request)
        return JSONResponse(await run_in_threadpool(service().search, req, image))

    @app.post("/v1/search", summary="Search by text, image or both (JSON or multipart)", openapi_extra=body_doc)
    async def search_post(request: Request) -> JSONResponse:
        req, image = await parse(request)
        return JSONResponse(await run_in_threadpool(service().search, req, image))

    @app.post("/v1/encode", summary="Per-member vectors, routed clusters and a ready Qdrant Query API body",
              openapi_extra=body_doc)
    async def encode(request: Request) -> JSONResponse:
        req, image = await parse(request)
        out, ms = await run_in_threadpool(_timed, service().encode, req, image)
        # the service's own work (encode, route, build the body), apart from HTTP: applications and
        # bench/encode_compare.py compare it with the library's
        return JSONResponse(out, headers={"Server-Timing": f"encode;dur={ms:.3f}"})

    @app.get("/v1/collections", summary="Collections in the store; the served one's fields and clusters")
    async def collections() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service().collections))

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Bundle loaded and store reachable")
    async def readyz(request: Request) -> JSONResponse:
        svc = app.state.service
        if svc is None:
            return JSONResponse({"ready": False, "error": "bundle not loaded"}, status_code=503)
        try:
            ready = await run_in_threadpool(svc.ready)
        except EnclipError as e:
            return JSONResponse({"ready": False, "error": private(str(e).splitlines()[0])}, status_code=503)
        # open to probes, but what is served (names, counts, fingerprints) only with the key when there is one
        return JSONResponse(ready if not key or _key_ok(request, key) else {"ready": True})

    @app.get("/images/{point_id}", summary="A product's catalog image (only files inside the catalog folder)")
    async def image(point_id: str) -> FileResponse:
        path = await run_in_threadpool(service().image_path, point_id)
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, key=key, timeout=opts.request_timeout)
    app.add_middleware(BodyLimit, limit=opts.max_upload_bytes + 64 * 1024,  # room for the form's other fields
                       json_limit=opts.max_json_bytes)
    app.add_middleware(BodyDeadline, timeout=opts.body_timeout)
    return app


def serve(options: ServeOptions) -> None:
    """Load the bundle and collection (errors surface here, before any port opens), then run uvicorn."""
    import uvicorn

    for line in startup_warnings(options):
        print(line, file=sys.stderr)
    Image.MAX_IMAGE_PIXELS = options.max_image_pixels  # Pillow's own bomb check, as a second line of defence
    searcher = Searcher(options.collection, bundle=options.bundle, conn=options.connection(), engine=options.engine,
                        device=options.device)
    app = create_app(options, searcher_factory=lambda: searcher)
    uvicorn.run(app, host=options.host, port=options.port, log_level=os.environ.get("ENCLIP_LOG_LEVEL", "info"),
                **server_settings(options.header_timeout, options.connection_limit()))
