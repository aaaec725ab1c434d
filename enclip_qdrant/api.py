"""The library's verbs, one per CLI command (`train`, `index`, `query`, `info`, `rollback`, `push`),
callable from Python the same way the CLI calls them:

    from enclip_qdrant import index, query
    index("./catalog")
    print(query("red floral dress").results[0].payload)
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .bundle import Bundle, load_bundle, read_manifest
from .catalog import Catalog, load_catalog
from .errors import BundleError, EnclipError
from .indexing import PRUNE_THRESHOLD, IndexReport, check_catalog, check_compatible, index_catalog
from .progress import NullProgress, Progress, Task
from .search import ClusterMode, SearchResponse, search
from .store import CollectionSpec, EdgeStore, Fusion, PointRecord, ServerStore, Store, open_store
from .store.base import CollectionOptions
from .training import TrainConfig
from .training import train as train_bundle
from .workspace import Workspace, collection_name_for

ENV_URL, ENV_API_KEY = "QDRANT_URL", "QDRANT_API_KEY"


@dataclass(frozen=True)
class Connection:
    """Where collections live: the embedded store under `home`, or a Qdrant server at `url`."""

    home: str | Path | None = None
    url: str | None = None
    api_key: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.home)

    def open(self) -> Store:
        url = self.url or os.environ.get(ENV_URL) or None
        api_key = self.api_key or os.environ.get(ENV_API_KEY) or None
        return open_store(self.workspace.home, url=url, api_key=api_key, **self.options)


def open_catalog(catalog: str | Path | Catalog, columns: Mapping[str, str | None] | None, require_text: bool,
             progress: Progress) -> Catalog:
    """A catalog from a path (with a progress bar over the image checks), its skipped rows summarised."""
    cat = catalog if isinstance(catalog, Catalog) else _load_catalog(catalog, columns, require_text, progress)
    if cat.skipped:
        progress.log(f"catalog: {cat.summary()}")
    return cat


def _load_catalog(catalog: str | Path, columns: Mapping[str, str | None] | None, require_text: bool,
                  progress: Progress) -> Catalog:
    task, seen = None, 0

    def tick(done: int, total: int) -> None:
        nonlocal task, seen
        if task is None:
            task = progress.task("reading catalog images", total=total)
        task.advance(done - seen)
        seen = done

    try:
        return load_catalog(catalog, require_text=require_text, progress=tick, **(columns or {}))
    finally:
        if task is not None:
            task.close()


def train(catalog: str | Path | Catalog, out: str | Path | None = None, config: TrainConfig | None = None, *,
          columns: Mapping[str, str | None] | None = None, conn: Connection | None = None,
          overwrite: bool = False, progress: Progress | None = None) -> Bundle:
    """Train an ensemble and its clusters; `out` defaults to `.enclip/bundles/<catalog name>`."""
    progress = progress or NullProgress()
    cat = open_catalog(catalog, columns, True, progress)
    out = Path(out) if out else (conn or Connection()).workspace.default_bundle_dir(collection_name_for(cat.root))
    return train_bundle(cat, out, config, progress=progress, overwrite=overwrite)


def index(catalog: str | Path | Catalog, *, bundle: str | Path | Bundle | None = None, collection: str | None = None,
          conn: Connection | None = None, config: TrainConfig | None = None,
          columns: Mapping[str, str | None] | None = None, prune: bool = False, batch_size: int = 256,
          progress: Progress | None = None, options: CollectionOptions | None = None,
          blue_green: bool = False, prune_threshold: float = PRUNE_THRESHOLD, confirm: bool = False) -> IndexReport:
    """Embed a catalog into a collection; with no bundle, reuse (or train) the workspace's own.
    `options` (on-disk vectors, quantization, shards...) apply when the collection is created.
    `blue_green`: a collection built by another bundle is rebuilt beside it and switched when complete.
    The default collection and bundle (named after the catalog's folder) refuse another folder of that name.
    `prune` deleting more than `prune_threshold` of the collection needs `confirm` (CLI: --yes)."""
    progress = progress or NullProgress()
    conn = conn or Connection()
    cat = open_catalog(catalog, columns, False, progress)
    name = collection or collection_name_for(cat.root)
    if collection is None:  # before any training: a clash must cost seconds, not an hour
        with conn.open() as store:
            check_catalog(store, name, cat)
    if isinstance(bundle, Bundle):
        b = bundle
    elif bundle is not None:
        b = load_bundle(bundle)
    else:
        b = _own_bundle(cat, conn.workspace.default_bundle_dir(collection_name_for(cat.root)), config, progress)
    with conn.open() as store:
        report = index_catalog(cat, b, store, name, prune=prune, batch_size=batch_size, progress=progress,
                               options=options, blue_green=blue_green, prune_threshold=prune_threshold,
                               confirm=confirm)
        conn.workspace.remember(name, b.path, store.location, physical=report.physical, previous=report.previous)
    return report


@dataclass
class RollbackReport:
    collection: str  # the alias
    switched_from: str
    switched_to: str
    bundle: str | None  # the restored bundle's folder, now the workspace's bundle for `collection`


def rollback(collection: str | None = None, *, conn: Connection | None = None) -> RollbackReport:
    """Undo the last blue/green switch: the alias serves the previous collection, queries use its bundle."""
    conn = conn or Connection()
    name = collection or conn.workspace.default_collection()
    with conn.open() as store:
        current = store.aliases().get(name)
        if current is None:
            store.resolve(name)  # CollectionNotFound when it is nothing at all
            raise EnclipError(f"{name!r} is a plain collection, not an alias: nothing to roll back to")
        previous = store.info(current).metadata.get("previous")
        if not previous:
            raise EnclipError(f"nothing to roll back to: {name!r} serves {current!r}, which replaced no "
                              "earlier collection")
        if not store.exists(previous):
            raise EnclipError(f"cannot roll back {name!r}: its previous collection {previous!r} is gone")
        bundle = store.info(previous).metadata.get("bundle_path")
        store.set_alias(name, previous)
        if bundle:
            conn.workspace.remember(name, Path(bundle), store.location, physical=previous, default=False)
        return RollbackReport(name, current, previous, bundle)


def _own_bundle(cat: Catalog, path: Path, config: TrainConfig | None, progress: Progress) -> Bundle:
    """The catalog's default bundle: reused when complete (retraining is an explicit `train`), else trained."""
    if (path / "manifest.json").is_file():
        training = read_manifest(path)["training"]
        trained_on = training.get("catalog")
        if trained_on and str(trained_on) != str(cat.root):
            raise BundleError(f"the default bundle {path} was trained on the catalog at {trained_on}, not "
                              f"{cat.root} (same folder name): pass --bundle (and --collection) to choose")
        trained = training["config"]
        if config is not None and config.differs_from(trained):
            raise BundleError(f"{path} holds an ensemble trained with other settings; retrain it explicitly with "
                              f"`enclip-qdrant train {cat.root} --overwrite ...`, or pass --bundle")
        progress.log(f"using the trained ensemble in {path} (run `enclip-qdrant train` to retrain)")
        return load_bundle(path)
    progress.log(f"no trained ensemble for this catalog yet: training one into {path}")
    return train_bundle(cat, path, config, progress=progress)


class Searcher:
    """A collection opened with its bundle, for many queries in one process (the bundle loads once)."""

    def __init__(self, collection: str | None = None, *, bundle: str | Path | Bundle | None = None,
                 conn: Connection | None = None):
        self.conn = conn or Connection()
        self.collection = collection or self.conn.workspace.default_collection()
        self.store = self.conn.open()
        try:
            meta = self.store.info(self.collection).metadata
            self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(self._bundle_path(bundle, meta))
            check_compatible(self.store, self.collection, self.bundle)
        except BaseException:
            self.store.close()
            raise

    def _bundle_path(self, given: str | Path | None, meta: Mapping[str, Any]) -> Path:
        if given is not None:
            return Path(given)
        for candidate in (self.conn.workspace.bundle_for(self.collection), meta.get("bundle_path")):
            if candidate and Path(candidate, "manifest.json").is_file():
                return Path(candidate)
        raise BundleError(f"collection {self.collection!r} was built by bundle "
                          f"{meta.get('bundle_fingerprint', '?')}, which is not on this machine: pass --bundle")

    def search(self, text: str | None = None, *, image: str | Path | Image.Image | None = None, top_k: int = 10,
               clusters: ClusterMode = "auto", fusion: Fusion = "rrf",
               filters: Mapping[str, Sequence[Any]] | None = None, explain: bool = False,
               **routing: Any) -> SearchResponse:
        return search(self.bundle, self.store, self.collection, text, image=image, top_k=top_k, clusters=clusters,
                      fusion=fusion, filters=filters, explain=explain, **routing)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def query(text: str | None = None, *, image: str | Path | None = None, collection: str | None = None,
          bundle: str | Path | None = None, conn: Connection | None = None, **options: Any) -> SearchResponse:
    """One query; for many, open a `Searcher` once."""
    with Searcher(collection, bundle=bundle, conn=conn) as s:
        return s.search(text, image=image, **options)


@dataclass
class CollectionSummary:
    name: str
    points: int
    vectors: dict[str, int]
    payload_schema: dict[str, str]
    bundle_fingerprint: str | None
    clusters: dict[int, int]
    metadata: dict[str, Any]
    default: bool = False
    aliases: list[str] = field(default_factory=list)  # names that serve this collection


def info(collection: str | None = None, *, conn: Connection | None = None) -> dict[str, Any]:
    conn = conn or Connection()
    try:
        default = conn.workspace.default_collection()
    except EnclipError:
        default = None
    with conn.open() as store:
        names = [store.resolve(collection)] if collection else store.list_collections()
        aliases = store.aliases()
        out = []
        for name in names:
            ci = store.info(name)
            sizes = {int(k): v for k, v in sorted(store.facet_counts(name, "cluster").items())}
            served = sorted(a for a, target in aliases.items() if target == name)
            out.append(CollectionSummary(name, ci.points, ci.vectors, ci.payload_schema,
                                         ci.metadata.get("bundle_fingerprint"), sizes, ci.metadata,
                                         default=default is not None and default in [name, *served],
                                         aliases=served))
        return {"store": {"kind": store.kind, "location": store.location}, "collections": out}


@dataclass
class PushReport:
    collection: str  # the name given (an alias, usually)
    physical: str
    url: str
    copied: int = 0
    skipped: int = 0
    seconds: float = 0.0


def push(collection: str | None = None, url: str | None = None, api_key: str | None = None, *,
         home: str | Path | None = None, batch_size: int = 256, progress: Progress | None = None,
         store: Store | None = None) -> PushReport:
    """Copy an embedded collection to a server under the same physical name and alias. Resumable: points
    already there with the same content and payload hashes are skipped. `store`: a ready target (tests)."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    workspace = Workspace(home)
    name = collection or workspace.default_collection()
    target = store or ServerStore(url or os.environ.get(ENV_URL) or None,
                                  api_key or os.environ.get(ENV_API_KEY) or None)
    try:
        with EdgeStore(workspace.home) as source:
            physical = source.resolve(name)
            report = PushReport(name, physical, target.location)
            _ensure_target(source, target, physical)
            _copy_points(source, target, physical, report, batch_size, progress)
            if physical != name:
                target.set_alias(name, physical)
    finally:
        if store is None:
            target.close()
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def _ensure_target(source: Store, target: Store, physical: str) -> None:
    """Same vectors, indexes and metadata; an existing target must hold the same bundle's vectors."""
    ci = source.info(physical)
    if not target.exists(physical):
        target.create(physical, CollectionSpec(vectors=ci.vectors, metadata=ci.metadata,
                                               indexed_fields=ci.payload_schema))
        return
    there = target.info(physical).metadata.get("bundle_fingerprint")
    if there != ci.metadata.get("bundle_fingerprint"):
        raise BundleError(f"{physical!r} at {target.location} was built by bundle {there or 'unknown'}, not "
                          f"{ci.metadata.get('bundle_fingerprint')}: refusing to mix their vectors")
    target.set_metadata(physical, ci.metadata)


def _copy_points(source: Store, target: Store, physical: str, report: PushReport, batch_size: int,
                 progress: Progress) -> None:
    there = {pid: (p.get("content_hash"), p.get("payload_hash"))
             for pid, p in target.scroll(physical, ["content_hash", "payload_hash"])}
    task = progress.task(f"pushing {physical!r}", total=source.count(physical))
    batch: list[PointRecord] = []
    for point in source.scroll_points(physical, batch=batch_size):
        if there.get(point.id) == (point.payload.get("content_hash"), point.payload.get("payload_hash")):
            report.skipped += 1
            task.advance(1)
            continue
        batch.append(point)
        if len(batch) >= batch_size:
            _send(target, physical, batch, report, task)
    if batch:
        _send(target, physical, batch, report, task)
    task.close()


def _send(target: Store, physical: str, batch: list[PointRecord], report: PushReport, task: Task) -> None:
    target.upsert(physical, batch)
    report.copied += len(batch)
    task.advance(len(batch))
    batch.clear()
