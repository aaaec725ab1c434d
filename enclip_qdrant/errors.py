"""One exception family so the CLI can print a one-line error instead of a traceback."""

from __future__ import annotations

import re


class EnclipError(Exception):
    """Base of every error a user can cause and fix (bad input, wrong bundle, unreachable server)."""


class CatalogError(EnclipError):
    """The catalog cannot be read or has no usable products."""


class BundleError(EnclipError):
    """A bundle is missing, corrupt, of an unknown format, or does not match a collection."""


class StoreError(EnclipError):
    """The vector store refused an operation or cannot be reached."""


class InvalidName(StoreError):
    """A collection name no store could hold (path characters, too long): the caller's mistake, not the store's."""


class CollectionNotFound(StoreError):
    """The named collection does not exist in the store."""


class QueryError(EnclipError):
    """A query is empty or malformed."""


class ConfirmationRequired(EnclipError):
    """A destructive step (a large prune) needs an explicit yes; nothing was changed."""


_SECRET_PARAM = re.compile(r"([?&;](?:api[-_]?key|key|token|access[-_]?token|password|passwd|secret)=)[^&;#]*",
                           re.IGNORECASE)


def first_line(value: BaseException | str) -> str:
    """The first line of a (often multi-line) library message: what a one-line error quotes. An exception
    without a message gives its type's name, an empty text ""."""
    text = str(value).strip()
    if text:
        return text.splitlines()[0]
    return type(value).__name__ if isinstance(value, BaseException) else ""


def redact_url(url: str | None) -> str | None:
    """The URL with its credentials (`user:password@`) replaced by `***@` and the values of secret-looking
    query parameters (`?api-key=...`, `token`, `password`) by `***`, for messages and logs."""
    if not url:
        return url
    url = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)?[^/?#]*@", lambda m: f"{m.group(1) or ''}***@", url, count=1)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}***", url)
