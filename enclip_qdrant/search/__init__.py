"""Answering a query: options, plan, typed filters, routing, one fused store query, labels, contact sheets.
Imports the collection, the bundle format, the catalog's image decoding and the store.

Public: `query.search`, `query.SearchResponse`, `options.SearchOptions`, `sheet.contact_sheet`.
"""
