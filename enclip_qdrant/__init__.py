"""enclip-qdrant: ENCLIP (an ensemble of CLIP models + cluster routing) for fashion search on Qdrant.

Names are imported lazily: `import enclip_qdrant.catalog` should not pay for torch and open_clip.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Connection": "api", "Searcher": "api", "index": "api", "info": "api", "query": "api", "train": "api",
    "push": "api", "rollback": "api", "evaluate": "api", "eval_workdir": "api", "PushReport": "indexing.push",
    "RollbackReport": "collection.aliases", "CollectionMeta": "collection.meta", "contact_sheet": "search.sheet",
    "SearchOptions": "search.options", "SearchResponse": "search.query", "DEFAULT_THRESHOLD": "search.options",
    "DEFAULT_TEXT_WEIGHT": "search.options", "DEFAULT_MAX_CLUSTERS": "search.options",
    "DEFAULT_OVERSAMPLE": "search.options", "FILTER_HELP": "search.options", "parse_clusters": "search.options",
    "parse_filters": "search.options", "CollectionOptions": "store.base", "ServerOptions": "store.base",
    "EXTRA_INDEX_TYPES": "store.base", "IndexState": "store.base", "SearchParams": "store.base",
    "IndexReport": "indexing.run", "failed_summary": "indexing.run",
    "Bundle": "bundle.manifest", "load_bundle": "engine.load", "Catalog": "catalog.model",
    "load_catalog": "catalog.load", "BundleError": "errors", "CatalogError": "errors", "EnclipError": "errors",
    "QueryError": "errors", "StoreError": "errors", "TrainConfig": "training.config",
    "EvalReport": "evaluation.report", "ServeOptions": "service.app", "serve": "service.app",
    "best_values": "evaluation.report", "format_value": "evaluation.report", "Progress": "progress",
    "Task": "progress",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'enclip_qdrant' has no attribute {name!r}")
