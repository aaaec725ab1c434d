"""enclip-qdrant: ENCLIP (an ensemble of CLIP models + cluster routing) for fashion search on Qdrant.

Names are imported lazily: `import enclip_qdrant.catalog` should not pay for torch and open_clip.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Connection": "api", "Searcher": "api", "index": "api", "info": "api", "query": "api", "train": "api",
    "push": "api", "rollback": "api",
    "Bundle": "bundle", "load_bundle": "bundle", "Catalog": "catalog", "load_catalog": "catalog",
    "BundleError": "errors", "CatalogError": "errors", "EnclipError": "errors", "QueryError": "errors",
    "StoreError": "errors", "TrainConfig": "training", "evaluate": "evaluation", "EvalReport": "evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'enclip_qdrant' has no attribute {name!r}")
