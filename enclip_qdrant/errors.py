"""One exception family so the CLI can print a one-line error instead of a traceback."""

from __future__ import annotations


class EnclipError(Exception):
    """Base of every error a user can cause and fix (bad input, wrong bundle, unreachable server)."""


class CatalogError(EnclipError):
    """The catalog cannot be read or has no usable products."""


class BundleError(EnclipError):
    """A bundle is missing, corrupt, of an unknown format, or does not match a collection."""


class StoreError(EnclipError):
    """The vector store refused an operation or cannot be reached."""


class CollectionNotFound(StoreError):
    """The named collection does not exist in the store."""


class QueryError(EnclipError):
    """A query is empty or malformed."""
