"""Embed a catalog with every member and write it into a collection: one named vector per member,
the product's cluster and catalog fields as payload. Re-running on an unchanged catalog embeds nothing.

A collection NAME is an alias of a physical collection `NAME-<bundle fingerprint[:8]>`, so a retrained
bundle can be indexed beside the live one (blue/green) and the alias switched only once it is complete.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from enclip_qdrant.bundle.manifest import Bundle
from enclip_qdrant.catalog.fields import choose_fields
from enclip_qdrant.catalog.images import ImageRejected, image_bound, load_image
from enclip_qdrant.collection.aliases import plan_target, switch_alias
from enclip_qdrant.collection.meta import CollectionMeta, check_compatible, read_meta
from enclip_qdrant.collection.points import RESERVED, point_id, product_payload
from enclip_qdrant.collection.text import TextRecipe, compound_tokens
from enclip_qdrant.errors import BundleError, ConfirmationRequired, StoreError
from enclip_qdrant.files import BusyError
from enclip_qdrant.progress import NullProgress, Progress
from enclip_qdrant.store import CollectionSpec, PointRecord, Store
from enclip_qdrant.store.base import CollectionOptions, IndexState

# A prune deleting more than this share of the collection needs an explicit confirmation (`--yes`):
# a catalog read from the wrong folder, or half of it on an unmounted disk, must not empty the index.
PRUNE_THRESHOLD = 0.2
# From this many points on, `index` has the embedded store build HNSW (unless --no-hnsw): below it an exact
# scan answers the fused query fast enough and a build would cost more than it saves (BENCHMARKS.md, "HNSW").
HNSW_MIN_POINTS = 50_000


class IndexInterrupted(KeyboardInterrupt):
    """Ctrl-C during `index`: says what was kept. Still a KeyboardInterrupt, so callers stop as before."""


def check_catalog(store: Store, collection: str, catalog: Any) -> None:
    """A collection named after its catalog's folder must not be filled from another folder of that name.

    Identity is the resolved root: the same folder with rows added or changed still indexes incrementally.
    Only for the implicit default name; a `--collection` the user chose may hold anything."""
    if not store.exists(collection):
        return
    built_from = read_meta(store, collection).catalog
    if built_from and str(built_from) != str(catalog.root):
        raise BundleError(
            f"collection {collection!r} holds the catalog at {built_from}, not {catalog.root}: two catalogs "
            f"share the folder name {collection!r}. Choose another name with --collection (and --bundle)")


@dataclass
class IndexReport:
    collection: str
    store: str
    bundle: str
    created: bool
    added: int = 0
    changed: int = 0
    payload_updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_rows: int = 0
    seconds: float = 0.0
    physical: str = ""  # the collection behind the alias `collection`
    previous: str | None = None  # what the alias served before this run switched it (kept for rollback)
    # where the time went, seconds: decoding images, embedding them with every member (preprocessing,
    # members, cluster assignment), writing points to the store
    timings: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "encode": 0.0, "upsert": 0.0})
    switched: bool = False  # this run pointed the alias at `physical`
    index: IndexState | None = None  # HNSW or exact, after this run

    @property
    def embedded(self) -> int:
        return self.added + self.changed


def index_catalog(catalog: Any, bundle: Bundle, store: Store, collection: str, *, batch_size: int = 256,
                  prune: bool = False, progress: Progress | None = None,
                  options: CollectionOptions | None = None, blue_green: bool = False,
                  prune_threshold: float = PRUNE_THRESHOLD, confirm: bool = False, text: bool = True,
                  hnsw: bool | None = None) -> IndexReport:
    """`options` shape the collection when this call creates it; an existing collection keeps its own.
    `collection` is an alias; with `blue_green`, the index is built beside the live one (another bundle's, or the
    same bundle's twin: rows changed while a service holds the live one) and the alias switched only when it is
    complete, so queries never see a half-built collection; that collection then mirrors the catalog (pruned).
    `prune` deletes only ids gone from the table; more than `prune_threshold` of the collection needs
    `confirm` (else ConfirmationRequired, raised before anything is written). A collection this call creates
    from a catalog with text also gets a sparse BM25 vector of each product's text (hybrid search), unless
    `text` is False; an existing collection keeps what it has (with or without one). `hnsw`: build HNSW for
    the member vectors (True), or not (False); None: once the collection has HNSW on, or from HNSW_MIN_POINTS
    points. It is built at the end of the run (before a blue/green switch), and again after each later run."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    physical, previous, switch = plan_target(store, collection, bundle, blue_green)
    created = not store.exists(physical)
    if created:
        recipe = text_recipe(catalog) if text else None
        meta = CollectionMeta.for_bundle(bundle, catalog.root)
        if recipe is not None:
            meta = replace(meta, lexical=recipe.to_dict())
        try:
            store.create(physical, CollectionSpec(vectors=bundle.vectors, metadata=meta.to_dict(), options=options,
                                                  sparse_vectors=(recipe.vector,) if recipe else ()))
        except StoreError:
            if not store.exists(physical):
                raise
            # it was not there a moment ago: another run made it first and is filling it now
            raise BusyError(f"collection {collection!r} is busy: another `enclip-qdrant index` created it just now "
                            "and is filling it; wait for that run to finish, then run again to add what it "
                            "lacks") from None
    else:  # ours from an interrupted run, the live one, or a blue/green twin: incremental indexing fills the rest
        recipe = check_compatible(store, physical, bundle).text_recipe()
        if switch:  # not serving anyone yet: it becomes the catalog as it is now, so rows gone from it go
            prune = True  # under the same guard as --prune: a table that lost most rows needs --yes
    report = IndexReport(collection, store.location, bundle.fingerprint, created,
                         skipped_rows=len(catalog.skipped), physical=physical, previous=previous)
    _fill(catalog, bundle, store, physical, report, batch_size, prune, progress, prune_threshold, confirm, recipe)
    report.index = build_index(store, physical, hnsw, progress)
    if switch:
        switch_alias(store, collection, physical, previous)
        report.switched = True
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def build_index(store: Store, collection: str, hnsw: bool | None, progress: Progress) -> IndexState:
    """HNSW as asked, or by size when not asked; a collection that has it keeps it (indexing what was added)."""
    info = store.info(collection)
    on = bool(info.index and info.index.hnsw)
    want = hnsw if hnsw is not None else on or info.points >= HNSW_MIN_POINTS
    return store.build_index(collection, hnsw=want, progress=progress)


def text_recipe(catalog: Any) -> TextRecipe | None:
    """The lexical recipe for a new collection: title plus the catalog's categorical fields; None without text."""
    if not any(p.text for p in catalog.products):
        return None
    payloads = [product_payload(p) for p in catalog.products]
    base = TextRecipe(fields=choose_fields(payloads, exclude=RESERVED))
    return dataclasses.replace(base, joins=compound_tokens(base.text(p) for p in payloads))


def _fill(catalog: Any, bundle: Bundle, store: Store, collection: str, report: IndexReport, batch_size: int,
          prune: bool, progress: Progress, prune_threshold: float = PRUNE_THRESHOLD, confirm: bool = False,
          recipe: TextRecipe | None = None) -> None:
    created = report.created
    lexical = ["text", *recipe.fields] if recipe else []
    existing = {} if created else {
        pid: p for pid, p in store.scroll(collection, ["content_hash", "payload_hash", "cluster", *lexical])}
    gone = _prune_plan(catalog, existing, prune, prune_threshold, confirm)
    to_embed: list[tuple[Any, dict[str, Any]]] = []
    for product in catalog.products:
        pid, payload = point_id(product.id), product_payload(product)
        old = existing.get(pid)
        if old is None or old.get("content_hash") != product.content_hash:
            to_embed.append((product, payload))
            if old is None:
                report.added += 1
            else:
                report.changed += 1
        elif old.get("payload_hash") != payload["payload_hash"]:
            store.set_payload(collection, pid, payload | {"cluster": old.get("cluster")})
            if recipe is not None and recipe.text(old) != recipe.text(payload):
                # the words changed: the text vector follows them (the image's vectors stay as they are)
                store.set_sparse(collection, pid, recipe.vector, recipe.document(payload))
            report.payload_updated += 1
        else:
            report.unchanged += 1

    task = progress.task(f"embedding {len(to_embed)} images x {len(bundle.vectors)} members", total=len(to_embed))
    bound = image_bound(bundle)
    written = 0
    try:
        for start in range(0, len(to_embed), batch_size):
            chunk = to_embed[start:start + batch_size]
            images, ok = [], []
            t0 = time.perf_counter()
            for product, payload in chunk:
                try:
                    images.append(load_image(product.image, bound))
                    ok.append((product, payload))
                except ImageRejected as e:  # changed or vanished since the catalog was read
                    report.failed.append((product.id, str(e)))
            t1 = time.perf_counter()
            if ok:
                per_member, joint = bundle.embed_images(images)
                del images  # the batch's pixels are not needed past this point
                clusters = bundle.clusters.assign(joint)
                t2 = time.perf_counter()
                store.upsert(collection, [
                    PointRecord(point_id(p.id), {name: vecs[i] for name, vecs in per_member.items()},
                                payload | {"cluster": int(clusters[i])}, _sparse(recipe, payload))
                    for i, (p, payload) in enumerate(ok)])
                written += len(ok)
                report.timings["encode"] += t2 - t1
                report.timings["upsert"] += time.perf_counter() - t2
            report.timings["decode"] += t1 - t0
            task.advance(len(chunk))
    except KeyboardInterrupt:
        raise IndexInterrupted(
            f"interrupted: {written:,} of {len(to_embed):,} images embedded in this run were written to "
            f"{collection!r} and are kept (nothing was pruned); run the same command again to resume") from None
    finally:
        task.close()
    report.timings = {k: round(v, 3) for k, v in report.timings.items()}
    report.added -= sum(1 for pid, _ in report.failed if point_id(pid) not in existing)
    report.changed -= sum(1 for pid, _ in report.failed if point_id(pid) in existing)

    if gone:
        store.delete(collection, gone)
    report.deleted = len(gone)


def _sparse(recipe: TextRecipe | None, payload: dict[str, Any]) -> dict[str, Any]:
    doc = recipe.document(payload) if recipe else None
    return {recipe.vector: doc} if recipe and doc else {}


def _prune_plan(catalog: Any, existing: dict[str, Any], prune: bool, threshold: float, confirm: bool) -> list[str]:
    """Point ids to delete: products whose id is gone from the table, not rows that failed to load now."""
    if not prune or not existing:
        return []
    ids = set(getattr(catalog, "row_ids", ())) | {p.id for p in catalog.products}
    keep = {point_id(i) for i in ids}
    gone = [pid for pid in existing if pid not in keep]
    if gone and len(gone) > threshold * len(existing) and not confirm:
        raise ConfirmationRequired(
            f"--prune would delete {len(gone):,} of the {len(existing):,} products in the collection "
            f"({len(gone) / len(existing):.0%}, more than {threshold:.0%}); check the catalog path, then "
            "pass --yes to confirm. Nothing was changed")
    return gone


def failed_summary(failed: Sequence[tuple[str, str]], first: int = 3) -> str:
    head = "; ".join(f"{pid}: {why}" for pid, why in failed[:first])
    return f"{len(failed)} failed ({head}{'; ...' if len(failed) > first else ''})" if failed else "none failed"
