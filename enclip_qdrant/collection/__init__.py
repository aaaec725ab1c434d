"""What a collection holds beside its vectors: its metadata record, aliases (blue/green), the BM25 text
recipe and point ids + payloads. Imports the store, the bundle format and the catalog's column rules.

Public: `meta.CollectionMeta`, `aliases.switch_back`, `text.TextRecipe`, `points.point_id`.
"""
