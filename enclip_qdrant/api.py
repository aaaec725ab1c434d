"""The library's verbs, one per CLI command (`train`, `index`, `query`, `info`, `rollback`, `push`),
callable from Python the same way the CLI calls them:

    from enclip_qdrant import index, query
    index("./catalog")
    print(query("red floral dress").results[0].payload)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclip_qdrant.bundle.labels import bundle_labels
from enclip_qdrant.bundle.names import MANIFEST
from enclip_qdrant.catalog.model import Catalog
from enclip_qdrant.catalog.open import open_catalog
from enclip_qdrant.collection.aliases import RollbackReport, switch_back
from enclip_qdrant.collection.meta import CollectionMeta, read_meta
from enclip_qdrant.indexing.push import PushReport, migrate
from enclip_qdrant.search.options import SearchOptions

from .errors import BundleError, EnclipError
from .progress import NullProgress, Progress
from .store import ServerOptions, Store, open_store
from .store.base import CollectionOptions, IndexState
from .workspace import Workspace, collection_name_for

if TYPE_CHECKING:  # these pull in torch and open_clip: loaded by the verbs that need them, not on import
    from PIL import Image

    from enclip_qdrant.bundle.manifest import Bundle
    from enclip_qdrant.evaluation.report import EvalReport
    from enclip_qdrant.indexing.run import IndexReport
    from enclip_qdrant.search.query import SearchResponse
    from enclip_qdrant.training.config import TrainConfig

__all__ = ["CollectionMeta", "CollectionOptions", "Connection", "PushReport", "RollbackReport", "SearchOptions",
           "Searcher", "ServerOptions", "cluster_sheet", "evaluate", "eval_workdir", "index", "info", "push", "query",
           "rollback", "train"]

ENV_URL, ENV_API_KEY = "QDRANT_URL", "QDRANT_API_KEY"


@dataclass(frozen=True)
class Connection:
    """Where collections live: the embedded store under `home`, or a Qdrant server at `url`."""

    home: str | Path | None = None
    url: str | None = None
    api_key: str | None = None
    # Server settings (gRPC, timeout, retries); a plain mapping of the same names is checked into one.
    options: ServerOptions = field(default_factory=ServerOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", ServerOptions.of(self.options))

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.home)

    def open(self) -> Store:
        url = self.url or os.environ.get(ENV_URL) or None
        api_key = self.api_key or os.environ.get(ENV_API_KEY) or None
        return open_store(self.workspace.home, url=url, api_key=api_key, options=self.options)


def train(catalog: str | Path | Catalog, out: str | Path | None = None, config: TrainConfig | None = None, *,
          columns: Mapping[str, str | None] | None = None, conn: Connection | None = None,
          overwrite: bool = False, progress: Progress | None = None) -> Bundle:
    """Train an ensemble and its clusters; resumes an interrupted run.

    `out`: the bundle folder (default `.enclip/bundles/<catalog name>` in `conn`'s workspace); `config`: the
    training settings (default `TrainConfig()`); `columns`: image_col/text_col/id_col overrides;
    `overwrite`: replace a run made with other settings; `progress`: hooks for bars (default silent)."""
    from enclip_qdrant.training.run import train as train_bundle

    progress = progress or NullProgress()
    cat = open_catalog(catalog, columns, True, progress)
    workspace = (conn or Connection()).workspace
    out = Path(out) if out else workspace.default_bundle_dir(collection_name_for(cat.root))
    return train_bundle(cat, out, config, progress=progress, overwrite=overwrite,
                        protected=[("workspace home", workspace.home)])


def index(catalog: str | Path | Catalog, *, bundle: str | Path | Bundle | None = None, collection: str | None = None,
          conn: Connection | None = None, config: TrainConfig | None = None,
          columns: Mapping[str, str | None] | None = None, prune: bool = False, batch_size: int = 256,
          progress: Progress | None = None, options: CollectionOptions | None = None,
          blue_green: bool = False, prune_threshold: float | None = None, confirm: bool = False,
          engine: str = "auto", hnsw: bool | None = None, device: str = "auto") -> IndexReport:
    """Embed a catalog into a collection; with no bundle, reuse (or train) the workspace's own.

    `collection`: the name (default: the catalog folder's); `config`: training settings when a bundle must be
    trained; `prune`: delete products gone from the catalog's table (more than `prune_threshold`, default
    20 %, of the collection needs `confirm`; CLI: --yes); `options` (on-disk vectors, quantization,
    shards...) apply when the collection is created; `blue_green`: a collection built by another bundle is
    rebuilt beside it and switched when complete. The default collection and bundle (named after the
    catalog's folder) refuse another folder of that name. `engine`: what embeds the images ("auto": ONNX
    Runtime when the bundle has ONNX towers, else torch; see `load_bundle`); `device`: where it runs (auto,
    cpu, cuda, mps), and where a bundle trained here trains. `hnsw`: build HNSW for the member vectors
    (True/False; None: by the collection's size, see `index_catalog`)."""
    from enclip_qdrant.bundle.manifest import Bundle
    from enclip_qdrant.engine.load import load_bundle
    from enclip_qdrant.indexing.run import PRUNE_THRESHOLD, check_catalog, index_catalog

    if prune_threshold is None:
        prune_threshold = PRUNE_THRESHOLD
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
        b = load_bundle(bundle, engine=engine, device=device)
    else:
        b = _own_bundle(cat, conn.workspace.default_bundle_dir(collection_name_for(cat.root)), config, progress,
                        engine, device)
    with conn.open() as store:
        report = index_catalog(cat, b, store, name, prune=prune, batch_size=batch_size, progress=progress,
                               options=options, blue_green=blue_green, prune_threshold=prune_threshold,
                               confirm=confirm, hnsw=hnsw)
        conn.workspace.remember(name, b.path, store.location, physical=report.physical, previous=report.previous)
    return report


def rollback(collection: str | None = None, *, conn: Connection | None = None) -> RollbackReport:
    """Undo the last blue/green switch of `collection` (default: the workspace's): the alias serves the
    previous collection again and queries use its bundle."""
    conn = conn or Connection()
    name = collection or conn.workspace.default_collection()
    with conn.open() as store:
        report = switch_back(store, name)
        if report.bundle:
            conn.workspace.remember(name, Path(report.bundle), store.location, physical=report.switched_to,
                                    default=False)
        return report


def _own_bundle(cat: Catalog, path: Path, config: TrainConfig | None, progress: Progress,
                engine: str = "auto", device: str = "auto") -> Bundle:
    """The catalog's default bundle: reused when complete (retraining is an explicit `train`), else trained."""
    from enclip_qdrant.bundle.manifest import read_manifest
    from enclip_qdrant.engine.load import load_bundle
    from enclip_qdrant.training.run import train as train_bundle

    if (path / MANIFEST).is_file():
        training = read_manifest(path).get("training", {})
        trained_on = training.get("catalog")
        if trained_on and str(trained_on) != str(cat.root):
            raise BundleError(f"the default bundle {path} was trained on the catalog at {trained_on}, not "
                              f"{cat.root} (same folder name): pass --bundle (and --collection) to choose")
        trained = training.get("config")
        if config is not None and (not isinstance(trained, dict) or config.differs_from(trained)):
            raise BundleError(f"{path} holds an ensemble trained with other settings; retrain it explicitly with "
                              f"`enclip-qdrant train {cat.root} --overwrite ...`, or pass --bundle")
        progress.log(f"using the trained ensemble in {path} (run `enclip-qdrant train` to retrain)")
        return load_bundle(path, engine=engine, device=device)
    progress.log(f"no trained ensemble for this catalog yet: training one into {path}")
    from dataclasses import replace

    from enclip_qdrant.training.config import TrainConfig as _TrainConfig

    trained = train_bundle(cat, path, replace(config or _TrainConfig(), device=device), progress=progress)
    return trained if engine == "auto" and device == "auto" else load_bundle(path, engine=engine, device=device)


class Searcher:
    """A collection opened with its bundle, for many queries in one process (the bundle loads once)."""

    def __init__(self, collection: str | None = None, *, bundle: str | Path | Bundle | None = None,
                 conn: Connection | None = None, engine: str = "auto", device: str = "auto"):
        """`collection`: default the workspace's; `bundle`: default the one that built the collection;
        `engine`: "onnx", "torch" or "auto" (ONNX when the bundle has it), see `load_bundle`; `device`: where
        queries are encoded (auto, cpu, cuda, mps)."""
        from enclip_qdrant.bundle.manifest import Bundle
        from enclip_qdrant.collection.meta import check_compatible
        from enclip_qdrant.engine.load import load_bundle

        self.conn = conn or Connection()
        self.collection = collection or self.conn.workspace.default_collection()
        self.store = self.conn.open()
        try:
            self.meta = read_meta(self.store, self.collection)
            self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(self._bundle_path(bundle),
                                                                                  engine=engine, device=device)
            check_compatible(self.store, self.collection, self.bundle)
        except BaseException:
            self.store.close()
            raise

    def _bundle_path(self, given: str | Path | None) -> Path:
        if given is not None:
            return Path(given)
        for candidate in (self.conn.workspace.bundle_for(self.collection), self.meta.bundle_path):
            if candidate and Path(candidate, MANIFEST).is_file():
                return Path(candidate)
        raise BundleError(f"collection {self.collection!r} was built by bundle "
                          f"{self.meta.bundle_fingerprint or '?'}, which is not on this machine: pass --bundle")

    def search(self, text: str | None = None, *, image: str | Path | Image.Image | None = None,
               filters: Mapping[str, Sequence[Any]] | None = None, options: SearchOptions | None = None,
               **changes: Any) -> SearchResponse:
        """Search by `text`, `image` (a path or a PIL image) or both; `filters`: field -> accepted values.
        `options`: a `SearchOptions`; `changes`: its fields to set on top of it (`top_k=5`), checked the same."""
        from enclip_qdrant.search.query import search

        o = replace(options or SearchOptions(), **changes) if changes else options or SearchOptions()
        resp = search(self.bundle, self.store, self.collection, text, image=image, options=o, filters=filters,
                      recipe=self.meta.text_recipe())
        resp.catalog_root = self.meta.catalog
        return resp

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def query(text: str | None = None, *, image: str | Path | None = None, collection: str | None = None,
          bundle: str | Path | None = None, conn: Connection | None = None,
          filters: Mapping[str, Sequence[Any]] | None = None, options: SearchOptions | None = None,
          engine: str = "auto") -> SearchResponse:
    """One query (see `Searcher.search`); for many, open a `Searcher` once so the bundle loads once."""
    with Searcher(collection, bundle=bundle, conn=conn, engine=engine) as s:
        return s.search(text, image=image, filters=filters, options=options or SearchOptions())


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
    sparse_vectors: list[str] = field(default_factory=list)  # the text (BM25) vector, when it has one
    cluster_labels: dict[int, str] = field(default_factory=dict)  # from the bundle's manifest; {}: plain ids
    index: IndexState | None = None  # HNSW or exact search, and how much is indexed


def info(collection: str | None = None, *, conn: Connection | None = None) -> dict[str, Any]:
    """{"store": kind and location, "collections": [CollectionSummary]}: one collection (an alias resolves)
    or all of them."""
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
            meta = CollectionMeta.from_dict(ci.metadata)
            out.append(CollectionSummary(name, ci.points, ci.vectors, ci.payload_schema,
                                         meta.bundle_fingerprint, sizes, ci.metadata,
                                         default=default is not None and default in [name, *served],
                                         aliases=served, sparse_vectors=list(ci.sparse_vectors),
                                         cluster_labels=bundle_labels(meta.bundle_path, meta.bundle_fingerprint),
                                         index=ci.index))
        return {"store": {"kind": store.kind, "location": store.location}, "collections": out}


def cluster_sheet(path: str | Path, collection: str | None = None, *, conn: Connection | None = None,
                  per_cluster: int = 8) -> Path:
    """A PNG of `collection` (default: the workspace's) with one row per cluster: its label and size, and
    `per_cluster` of its products' images (from the catalog folder the collection was indexed from)."""
    from enclip_qdrant.search.sheet import cluster_samples
    from enclip_qdrant.search.sheet import cluster_sheet as draw_sheet

    conn = conn or Connection()
    with conn.open() as store:
        name = store.resolve(collection or conn.workspace.default_collection())
        meta = read_meta(store, name)
        sizes = {int(k): v for k, v in sorted(store.facet_counts(name, "cluster").items())}
        samples = cluster_samples(store.scroll(name, ["cluster", "image"]), sizes, per_cluster)
    return draw_sheet(samples, path, labels=bundle_labels(meta.bundle_path, meta.bundle_fingerprint), sizes=sizes,
                      catalog_root=meta.catalog, title=f"{name}: {len(sizes)} clusters", per_cluster=per_cluster)


def push(collection: str | None = None, target: Connection | None = None, *, source: Connection | None = None,
         batch_size: int = 256, progress: Progress | None = None) -> PushReport:
    """Copy an embedded collection (default: the source workspace's) to `target`, a server connection, under
    the same physical name and alias. Resumable: points already there with the same hashes are skipped.
    `source` defaults to the embedded store of the current workspace."""
    source = source or Connection()
    target = target or Connection(url=os.environ.get(ENV_URL) or None)
    if not (target.url or os.environ.get(ENV_URL)):
        raise EnclipError("push needs a target: a Qdrant server URL (--url or QDRANT_URL)")
    name = collection or source.workspace.default_collection()
    with open_store(source.workspace.home) as src, target.open() as dst:
        return migrate(src, dst, name, batch_size=batch_size, progress=progress)


def export(bundle: str | Path, *, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Export a trained bundle's towers to ONNX (checked against torch; the fingerprint is unchanged); returns
    the manifest's `onnx` record. Training does this itself; this is for bundles made before, or re-exports."""
    from enclip_qdrant.training.export import export_bundle

    return export_bundle(bundle, progress=progress, force=force)


def eval_workdir(catalog: str | Path, conn: Connection | None = None) -> Path:
    """Where `evaluate` keeps its bundle for a catalog, so an interrupted evaluation resumes its training."""
    root = Path(catalog)
    return (conn or Connection()).workspace.home / "eval" / collection_name_for(root if root.is_dir() else root.parent)


def evaluate(catalog: str | Path | Catalog, *, bundle: str | Path | Bundle | None = None,
             config: TrainConfig | None = None, test_fraction: float | None = None, seed: int = 0,
             queries_file: str | Path | None = None, top_k: int = 10, workdir: str | Path | None = None,
             columns: Mapping[str, str | None] | None = None, progress: Progress | None = None,
             protocol: str | Path | None = None, device: str = "auto") -> EvalReport:
    """Held-out check of ENCLIP on a catalog: train on a seeded split (or check `bundle` never saw it), score
    each member alone, the ensemble and routing on the rest. `test_fraction`: share held out (default 0.2; with
    `bundle`, the whole catalog: a new catalog the bundle never saw); `queries_file`:
    JSONL of extra queries; `workdir`: keeps the trained bundle (see `eval_workdir`), else a temporary folder;
    `protocol`: a folder of public ground truth (Marqo's KAGL files) scored over the held-out products;
    `device`: where the bundle encodes (auto, cpu, cuda, mps)."""
    from enclip_qdrant.evaluation.run import evaluate as run

    return run(catalog, bundle=bundle, config=config, test_fraction=test_fraction, seed=seed,
               queries_file=queries_file, top_k=top_k, workdir=workdir, columns=columns, progress=progress,
               protocol=protocol, device=device)
