"""Copy a collection from one store to another (embedded to a server, usually), the way qdrant-client's
`migrate(source, dest, batch_size)` does, but resumable and bundle-safe: points already in the target with the
same content and payload hashes are skipped, and a target built by another bundle is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from enclip_qdrant.collection.meta import CollectionMeta
from enclip_qdrant.errors import BundleError
from enclip_qdrant.progress import NullProgress, Progress, Task
from enclip_qdrant.store import CollectionSpec, PointRecord, Store


@dataclass
class PushReport:
    collection: str  # the name given (an alias, usually)
    physical: str
    url: str
    copied: int = 0
    skipped: int = 0
    seconds: float = 0.0


def migrate(source: Store, target: Store, collection: str, *, batch_size: int = 256,
            progress: Progress | None = None) -> PushReport:
    """Copy `collection` (an alias or a physical name) under the same physical name, then the alias."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    physical = source.resolve(collection)
    report = PushReport(collection, physical, target.location)
    _ensure_target(source, target, physical)
    _copy_points(source, target, physical, report, batch_size, progress)
    if physical != collection:
        target.set_alias(collection, physical)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def _ensure_target(source: Store, target: Store, physical: str) -> None:
    """Same vectors, indexes and metadata; an existing target must hold the same bundle's vectors."""
    ci = source.info(physical)
    ours = CollectionMeta.from_dict(ci.metadata).bundle_fingerprint
    if not target.exists(physical):
        target.create(physical, CollectionSpec(vectors=ci.vectors, metadata=ci.metadata,
                                               indexed_fields=ci.payload_schema,
                                               sparse_vectors=tuple(ci.sparse_vectors)))
        return
    there = CollectionMeta.from_dict(target.info(physical).metadata).bundle_fingerprint
    if there != ours:
        raise BundleError(f"{physical!r} at {target.location} was built by bundle {there or 'unknown'}, not "
                          f"{ours}: refusing to mix their vectors")
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
