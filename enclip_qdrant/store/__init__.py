"""Storage backends behind one interface: embedded qdrant-edge by default, a Qdrant server when a URL is given.

The backends load lazily: importing this package (for its types) pulls in neither qdrant-edge nor
qdrant-client; `open_store`, the one place a backend is chosen, imports the one it opens.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclip_qdrant.errors import StoreError
from enclip_qdrant.store.base import (
    CollectionInfo,
    CollectionOptions,
    CollectionSpec,
    Fusion,
    Hit,
    IndexState,
    PointRecord,
    QueryVector,
    SearchFilter,
    SearchParams,
    ServerOptions,
    SparseVec,
    Store,
    Vector,
    batched,
)
from enclip_qdrant.store.common import check_name

if TYPE_CHECKING:
    from enclip_qdrant.store.edge import EdgeStore
    from enclip_qdrant.store.server import ServerStore

__all__ = [
    "CollectionInfo",
    "CollectionOptions",
    "CollectionSpec",
    "EdgeStore",
    "Fusion",
    "Hit",
    "IndexState",
    "PointRecord",
    "QueryVector",
    "SparseVec",
    "SearchFilter",
    "SearchParams",
    "ServerOptions",
    "ServerStore",
    "Store",
    "Vector",
    "batched",
    "check_name",
    "open_store",
]

_BACKENDS = {"EdgeStore": "enclip_qdrant.store.edge", "ServerStore": "enclip_qdrant.store.server"}


def __getattr__(name: str) -> Any:
    if name in _BACKENDS:
        return getattr(import_module(_BACKENDS[name]), name)
    raise AttributeError(f"module 'enclip_qdrant.store' has no attribute {name!r}")


def open_store(home: Path | None = None, url: str | None = None, api_key: str | None = None,
               options: ServerOptions | None = None) -> Store:
    """A URL means a server (with `options`); otherwise the embedded store under `home`."""
    if url:
        from enclip_qdrant.store.server import ServerStore

        return ServerStore(url, api_key, options=options)
    if home is None:
        raise StoreError("no store: give a home folder for the embedded store or a Qdrant URL")
    from enclip_qdrant.store.edge import EdgeStore

    return EdgeStore(Path(home))
