"""Storage backends behind one interface: embedded qdrant-edge by default, a Qdrant server when a URL is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enclip_qdrant.errors import StoreError
from enclip_qdrant.store.base import (
    CollectionInfo,
    CollectionOptions,
    CollectionSpec,
    Fusion,
    Hit,
    PointRecord,
    SearchFilter,
    Store,
    Vector,
    batched,
)
from enclip_qdrant.store.edge import EdgeStore, check_name
from enclip_qdrant.store.server import ServerStore

__all__ = [
    "CollectionInfo",
    "CollectionOptions",
    "CollectionSpec",
    "EdgeStore",
    "Fusion",
    "Hit",
    "PointRecord",
    "SearchFilter",
    "ServerStore",
    "Store",
    "Vector",
    "batched",
    "check_name",
    "open_store",
]


def open_store(home: Path | None = None, url: str | None = None, api_key: str | None = None, **kw: Any) -> Store:
    """A URL means a server (`kw` goes to ServerStore); otherwise the embedded store under `home`."""
    if url:
        return ServerStore(url, api_key, **kw)
    if home is None:
        raise StoreError("no store: give a home folder for the embedded store or a Qdrant URL")
    return EdgeStore(Path(home))
