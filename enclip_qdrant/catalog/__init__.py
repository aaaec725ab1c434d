"""Catalogs in: tables, columns, rows, image checks and synthetic shops. Imports only the foundation.

Public: `load.load_catalog`, `open.open_catalog`, `model.Catalog`/`Product`, `fields` (column rules),
`images.load_image` (bounded decoding), `synthetic.make_catalog`.
"""
