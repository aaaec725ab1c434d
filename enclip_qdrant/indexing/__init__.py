"""Writing collections: `run.index_catalog` (fresh, incremental, --prune, blue/green) and `push.migrate`
(embedded -> server). Imports the collection, the bundle format, the catalog and the store.
"""
