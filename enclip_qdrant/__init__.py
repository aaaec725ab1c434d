"""enclip-qdrant: ENCLIP (an ensemble of CLIP models + cluster routing) for fashion search on Qdrant.

Names are imported lazily: `import enclip_qdrant.catalog` should not pay for torch and open_clip.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Connection": "api", "Searcher": "api", "index": "api", "info": "api", "query": "api", "train": "api",
    "push": "api", "rollback": "api", "evaluate": "api", "eval_workdir": "api",
    "PushReport": "migrate", "RollbackReport": "aliases", "CollectionMeta": "meta", "contact_sheet": "sheet",
    "SearchOptions": "search_options", "SearchResponse": "search", "DEFAULT_THRESHOLD": "search_options",
    "DEFAULT_TEXT_WEIGHT": "search_options",
    "DEFAULT_MAX_CLUSTERS": "search_options", "DEFAULT_OVERSAMPLE": "search_options",
    "FILTER_HELP": "search_options", "parse_clusters": "search_options", "parse_filters": "search_options",
    "CollectionOptions": "store.base", "ServerOptions": "store.base", "EXTRA_INDEX_TYPES": "store.base",
    "IndexReport": "indexing", "failed_summary": "indexing",
    "Bundle": "bundle", "load_bundle": "bundle", "Catalog": "catalog", "load_catalog": "catalog",
    "BundleError": "errors", "CatalogError": "errors", "EnclipError": "errors", "QueryError": "errors",
    "StoreError": "errors", "TrainConfig": "training", "EvalReport": "evaluation",
    "ServeOptions": "service", "serve": "service",
    "best_values": "evaluation", "format_value": "evaluation", "Progress": "progress", "Task": "progress",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'enclip_qdrant' has no attribute {name!r}")
