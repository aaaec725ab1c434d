"""enclip-qdrant: ENCLIP (an ensemble of CLIP models + cluster routing) for fashion search on Qdrant."""

from .api import Connection, Searcher, index, info, query, train
from .bundle import Bundle, load_bundle
from .catalog import Catalog, load_catalog
from .errors import BundleError, CatalogError, EnclipError, QueryError, StoreError
from .training import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "Bundle", "BundleError", "Catalog", "CatalogError", "Connection", "EnclipError", "QueryError", "Searcher",
    "StoreError", "TrainConfig", "index", "info", "load_bundle", "load_catalog", "query", "train",
]
