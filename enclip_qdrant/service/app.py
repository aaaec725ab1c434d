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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclip_qdrant.api import Connection, Searcher
from enclip_qdrant.collection.meta import CollectionMeta
from enclip_qdrant.errors import BundleError, CatalogError, CollectionNotFound, EnclipError, QueryError, StoreError
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
from enclip_qdrant.store.server import fused_query_request

from .batching import BatchingEncoder, EncodeTimeout, MicroBatcher, Overloaded

ENV_KEY = "ENCLIP_API_KEY"
STATIC = Path(__file__).parent / "static"
# Payload keys that are enclip's bookkeeping, not catalog fields a person filters by.
_NOT_FIELDS = {"cluster", "product_id", "text", "image", "content_hash", "payload_hash"}
_FIELD_SCAN = 5000  # points read to list filterable field values (the page's filter menus)
_MAX_FIELD_VALUES = 50


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
    text: str | None = None
    top_k: int = Field(10, ge=1)
    clusters: str | list[int] = "auto"  # "auto", "all", "3,7" or [3, 7]
    filter: list[str] = Field(default_factory=list)  # ["field=value", ...]
    fusion: str = "rrf"
    explain: bool = False
    like: str | None = None  # "more like this": a point id whose catalog image is the query image
    collection: str | None = None
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0)
    max_clusters: int = Field(DEFAULT_MAX_CLUSTERS, ge=1)
    oversample: int = Field(DEFAULT_OVERSAMPLE, ge=1, le=50)
    text_weight: float = Field(DEFAULT_TEXT_WEIGHT, ge=0.0, le=100.0)  # the text prefetch's RRF weight; 0: off


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

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body too large: the limit is {self.limit:,} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _error(413, message)(scope, receive, send)
            return
        seen, tripped, replaced = 0, False, False

        async def counted() -> Message:
            nonlocal seen, tripped
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
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


class Service:
    """The loaded state behind the routes: searcher, its store shared by threads (`concurrent_store`), batcher,
    options."""

    def __init__(self, searcher: Searcher, options: ServeOptions) -> None:
        self.searcher, self.options = searcher, options
        self.bundle = searcher.bundle
        self.store: Any = concurrent_store(searcher.store)
        self.collection = searcher.collection
        self.batcher = MicroBatcher(self.bundle.embed_texts, self.bundle.embed_images, max_batch=options.max_batch,
                                    max_wait_ms=options.max_wait_ms, max_queue=options.max_queue).start()
        self.encoder = BatchingEncoder(self.batcher, timeout=options.request_timeout)
        meta = self.store.info(self.collection).metadata
        self.recipe = CollectionMeta.from_dict(meta).text_recipe()  # read once, like the bundle
        self.catalog_root = Path(meta["catalog"]) if meta.get("catalog") else None
        self._fields: dict[str, list[Any]] | None = None

    def close(self) -> None:
        self.batcher.close()
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

    def fields(self) -> dict[str, list[Any]]:
        """Catalog fields with few distinct values (filter menus), from the first points of the collection."""
        if self._fields is None:
            values: dict[str, set[Any]] = {}
            with self.store.lock:  # scroll is a generator: hold the lock while it is read, not just made
                payloads = [p for _, p in itertools.islice(self.searcher.store.scroll(self.collection), _FIELD_SCAN)]
            for payload in payloads:
                for k, v in payload.items():
                    if k not in _NOT_FIELDS and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                        values.setdefault(k, set()).add(v)
            self._fields = {k: sorted(v, key=str) for k, v in sorted(values.items())
                            if 1 < len(v) <= _MAX_FIELD_VALUES}
        return self._fields

    def image_path(self, point_id: str) -> Path:
        if self.catalog_root is None:
            raise ServiceError(404, "this collection does not record its catalog folder")
        hits = self.store.retrieve(self.collection, [point_id])
        if not hits or not hits[0].payload.get("image"):
            raise ServiceError(404, f"no product {point_id!r} in {self.collection!r}")
        try:
            path = catalog_file(self.catalog_root, str(hits[0].payload["image"]))
        except PermissionError:
            raise ServiceError(403, "refused: that image is outside the catalog folder") from None
        if not path.is_file():
            raise ServiceError(404, f"image of {point_id!r} is missing from the catalog folder")
        return path

    def read_image(self, data: bytes, name: str) -> Image.Image:
        """Decode an uploaded image; dimensions are checked from the header before any pixel is decoded."""
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > self.options.max_image_pixels:
                    raise QueryError(f"image {name} is too large: {w}x{h} pixels (the limit is "
                                     f"{self.options.max_image_pixels:,})")
                return im.convert("RGB")
        except Image.DecompressionBombError:
            raise QueryError(f"image {name} is too large to decode safely") from None
        except UnidentifiedImageError:
            raise QueryError(f"cannot read query image {name}: not an image format Pillow knows") from None
        except (OSError, ValueError) as e:
            raise QueryError(f"cannot read query image {name}: {str(e).splitlines()[0] if str(e) else 'bad data'}"
                             ) from None

    def like_image(self, point_id: str) -> Image.Image:
        path = self.image_path(point_id)
        return self.read_image(path.read_bytes(), point_id)

    def _inputs(self, req: SearchRequest, image: Image.Image | None) -> tuple[str | None, Image.Image | None]:
        self.check_collection(req.collection)
        if req.top_k > self.options.max_top_k:
            raise QueryError(f"--top-k must be at most {self.options.max_top_k}")
        if req.like:
            if image is not None:
                raise QueryError("give an image or `like`, not both")
            image = self.like_image(req.like)
        return req.text, image

    def _mode(self, req: SearchRequest) -> Any:
        return parse_clusters(req.clusters) if isinstance(req.clusters, str) else req.clusters

    def search(self, req: SearchRequest, image: Image.Image | None) -> dict[str, Any]:
        text, image = self._inputs(req, image)
        resp = search(self.bundle, self.store, self.collection, text, image=image, top_k=req.top_k,
                      clusters=self._mode(req), fusion=req.fusion, filters=parse_filters(req.filter),
                      threshold=req.threshold, max_clusters=req.max_clusters, oversample=req.oversample,
                      explain=req.explain, encoder=self.encoder, text_weight=req.text_weight, recipe=self.recipe)
        if req.like:
            resp.query["like"] = req.like
        return resp.to_dict(req.explain)

    def encode(self, req: SearchRequest, image: Image.Image | None) -> dict[str, Any]:
        """The query as vectors plus the Qdrant request `search` would send, for applications that query
        their own Qdrant (the collection name is the alias when there is one, so it follows blue/green)."""
        text, image = self._inputs(req, image)
        SearchOptions(top_k=req.top_k, fusion=req.fusion, threshold=req.threshold,  # type: ignore[arg-type]
                      max_clusters=req.max_clusters, oversample=req.oversample, text_weight=req.text_weight)
        plan = plan_query(self.bundle, self.store, self.collection, text, image, clusters=self._mode(req),
                          filters=parse_filters(req.filter), threshold=req.threshold, max_clusters=req.max_clusters,
                          encoder=self.encoder, text_weight=req.text_weight, recipe=self.recipe,
                          fusion=req.fusion)  # type: ignore[arg-type]
        body = fused_query_request(plan.vectors, limit=req.top_k, prefetch_limit=req.top_k * req.oversample,
                                   fusion=req.fusion, filter=plan.filter, weights=plan.weights,  # type: ignore[arg-type]
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
        out = []
        aliases = self.store.aliases()
        for name in self.store.list_collections():
            ci = self.store.info(name)
            served = sorted(a for a, t in aliases.items() if t == name)
            out.append({"name": name, "aliases": served, "points": ci.points, "vectors": ci.vectors,
                        "payload_schema": ci.payload_schema,
                        "bundle_fingerprint": ci.metadata.get("bundle_fingerprint"),
                        "served": name == self.store.resolve(self.collection)})
        return {"served": self.collection, "store": self.searcher.store.kind, "clusters": self.bundle.clusters.k,
                "members": list(self.bundle.vectors), "fields": self.fields(), "collections": out}


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
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


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

    def service() -> Service:
        svc = app.state.service
        if svc is None:
            raise ServiceError(503, "the service is starting or stopping")
        return svc

    # -- errors: one JSON line each, never a traceback --------------------------------------------

    @app.exception_handler(EnclipError)
    async def _enclip(_: Request, e: EnclipError) -> JSONResponse:
        return _error(status_for(e), str(e))

    @app.exception_handler(ServiceError)
    async def _service(_: Request, e: ServiceError) -> JSONResponse:
        return _error(e.status, str(e), e.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, e: Overloaded) -> JSONResponse:
        return _error(503, str(e), {"Retry-After": str(e.retry_after)})

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
        if request.method == "GET":
            raw: dict[str, Any] = {k: v for k, v in request.query_params.items() if k != "filter"}
            raw["filter"] = request.query_params.getlist("filter")
        elif ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=64)
            raw = {k: v for k, v in form.items() if k not in ("filter", "image")}
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
            if not isinstance(raw, dict):
                raise QueryError("request body must be a JSON object")
        else:
            raise ServiceError(415, f"unsupported content type {ctype.split(';')[0]!r}: send JSON or a "
                                    "multipart form")
        if "explain" in raw and isinstance(raw["explain"], str):
            raw["explain"] = raw["explain"].lower() in ("1", "true", "yes", "on")
        try:
            return SearchRequest.model_validate(raw), image
        except ValidationError as e:
            raise QueryError(_validation_line(e)) from None

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
    async def readyz() -> JSONResponse:
        svc = app.state.service
        if svc is None:
            return JSONResponse({"ready": False, "error": "bundle not loaded"}, status_code=503)
        try:
            points = await run_in_threadpool(svc.store.count, svc.collection)
        except EnclipError as e:
            return JSONResponse({"ready": False, "error": str(e).splitlines()[0]}, status_code=503)
        return JSONResponse({"ready": True, "collection": svc.collection, "points": points,
                             "bundle": svc.bundle.fingerprint, "engine": svc.bundle.engine,
                             "batches": vars(svc.batcher.stats)})

    @app.get("/images/{point_id}", summary="A product's catalog image (only files inside the catalog folder)")
    async def image(point_id: str) -> FileResponse:
        path = await run_in_threadpool(service().image_path, point_id)
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, key=key, timeout=opts.request_timeout)
    app.add_middleware(BodyLimit, limit=opts.max_upload_bytes + 64 * 1024)  # room for the form's other fields
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
                timeout_keep_alive=5, limit_concurrency=max(64, options.max_queue * 4))
