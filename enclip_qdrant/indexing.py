"""Embed a catalog with every member and write it into a collection: one named vector per member,
the product's cluster and catalog fields as payload. Re-running on an unchanged catalog embeds nothing.

A collection NAME is an alias of a physical collection `NAME-<bundle fingerprint[:8]>`, so a retrained
bundle can be indexed beside the live one (blue/green) and the alias switched only once it is complete.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .aliases import physical_name, plan_target, switch_alias
from .bundle import Bundle
from .meta import CollectionMeta, check_compatible
from .progress import NullProgress, Progress
from .store import CollectionSpec, PointRecord, Store
from .store.base import CollectionOptions

__all__ = ["IndexReport", "check_compatible", "failed_summary", "index_catalog", "physical_name", "point_id",
           "product_payload"]

RESERVED = ("cluster", "product_id", "text", "image", "content_hash", "payload_hash")
_NAMESPACE = uuid.UUID("6b0e3f8e-5c55-4d6a-9a43-6f2d1f7c2a10")


def point_id(product_id: str) -> str:
    """Stable Qdrant point id for a catalog id, so re-indexing updates instead of duplicating."""
    return str(uuid.uuid5(_NAMESPACE, str(product_id)))


def product_payload(product: Any) -> dict[str, Any]:
    """Catalog fields (renamed `catalog_<name>` if they clash with ours) plus our own keys, without cluster."""
    payload = {(f"catalog_{k}" if k in RESERVED else k): v for k, v in product.fields.items()}
    payload |= {"product_id": product.id, "text": product.text, "image": product.image_rel,
                "content_hash": product.content_hash}
    payload["payload_hash"] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return payload


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

    @property
    def embedded(self) -> int:
        return self.added + self.changed


def index_catalog(catalog: Any, bundle: Bundle, store: Store, collection: str, *, batch_size: int = 256,
                  prune: bool = False, progress: Progress | None = None,
                  options: CollectionOptions | None = None, blue_green: bool = False) -> IndexReport:
    """`options` shape the collection when this call creates it; an existing collection keeps its own.
    `collection` is an alias; with `blue_green`, another bundle's index is built beside the live one and
    the alias switched only when it is complete, so queries never see a half-built collection."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    physical, previous, switch = plan_target(store, collection, bundle, blue_green)
    created = not store.exists(physical)
    if created:
        store.create(physical, CollectionSpec(vectors=bundle.vectors,
                                              metadata=CollectionMeta.for_bundle(bundle, catalog.root).to_dict(),
                                              options=options))
    else:  # ours from an interrupted run, or the live one: incremental indexing fills in the rest
        check_compatible(store, physical, bundle)
    report = IndexReport(collection, store.location, bundle.fingerprint, created,
                         skipped_rows=len(catalog.skipped), physical=physical, previous=previous)
    _fill(catalog, bundle, store, physical, report, batch_size, prune, progress)
    if switch:
        switch_alias(store, collection, physical, previous)
        report.switched = True
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def _fill(catalog: Any, bundle: Bundle, store: Store, collection: str, report: IndexReport, batch_size: int,
          prune: bool, progress: Progress) -> None:
    created = report.created

    existing = {} if created else {
        pid: p for pid, p in store.scroll(collection, ["content_hash", "payload_hash", "cluster"])}
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
            report.payload_updated += 1
        else:
            report.unchanged += 1

    task = progress.task(f"embedding {len(to_embed)} images x {len(bundle.vectors)} members", total=len(to_embed))
    for start in range(0, len(to_embed), batch_size):
        chunk = to_embed[start:start + batch_size]
        images, ok = [], []
        t0 = time.perf_counter()
        for product, payload in chunk:
            try:
                with Image.open(product.image) as im:
                    images.append(im.convert("RGB"))
                ok.append((product, payload))
            except OSError as e:  # changed or vanished since the catalog was read
                report.failed.append((product.id, str(e).splitlines()[0]))
        t1 = time.perf_counter()
        if ok:
            per_member, joint = bundle.embed_images(images)
            clusters = bundle.clusters.assign(joint)
            t2 = time.perf_counter()
            store.upsert(collection, [
                PointRecord(point_id(p.id), {name: vecs[i] for name, vecs in per_member.items()},
                            payload | {"cluster": int(clusters[i])})
                for i, (p, payload) in enumerate(ok)])
            report.timings["encode"] += t2 - t1
            report.timings["upsert"] += time.perf_counter() - t2
        report.timings["decode"] += t1 - t0
        task.advance(len(chunk))
    task.close()
    report.timings = {k: round(v, 3) for k, v in report.timings.items()}
    report.added -= sum(1 for pid, _ in report.failed if point_id(pid) not in existing)
    report.changed -= sum(1 for pid, _ in report.failed if point_id(pid) in existing)

    if prune and existing:
        keep = {point_id(p.id) for p in catalog.products}
        gone = [pid for pid in existing if pid not in keep]
        if gone:
            store.delete(collection, gone)
        report.deleted = len(gone)


def failed_summary(failed: Sequence[tuple[str, str]], first: int = 3) -> str:
    head = "; ".join(f"{pid}: {why}" for pid, why in failed[:first])
    return f"{len(failed)} failed ({head}{'; ...' if len(failed) > first else ''})" if failed else "none failed"
