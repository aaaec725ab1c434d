"""Payload filters typed to the collection's stored values (keyword, integer, bool)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from enclip_qdrant.errors import QueryError
from enclip_qdrant.store import Store

_PEEK_POINTS = 512  # how far to look for a stored value when a field has no payload index
_INT64 = (-2**63, 2**63 - 1)  # Qdrant's integer payloads and match values are 64-bit


_SCHEMA_KINDS = {"keyword": "str", "text": "str", "uuid": "str", "integer": "int", "float": "float", "bool": "bool"}


class FieldKinds:
    """A collection's filter field types, read once: its payload index, then one scan of its first `scan`
    points. A long-running caller (the service) keeps one, so a filter costs no store call per field and a
    field no product has is refused without reading the store again (when the scan saw every point)."""

    def __init__(self, store: Store, collection: str, scan: int = 5000, shown_as: str | None = None,
                 payloads: Sequence[Mapping[str, Any]] | None = None) -> None:
        """`shown_as`: the name messages use (the alias a client asked for, not the physical collection).
        `payloads`: the first `scan` points' payloads when the caller has read them already (one scan for two uses)."""
        self.collection, self.made = shown_as or collection, time.monotonic()
        schema = store.info(collection).payload_schema
        self.schema = {k: _SCHEMA_KINDS.get(v.lower(), v.lower()) for k, v in schema.items()}
        self.seen: dict[str, str] = {}
        read = 0
        if payloads is None:
            payloads = [p for _, p in itertools.islice(store.scroll(collection), scan)]
        for payload in payloads:
            read += 1
            for k, v in payload.items():
                if v is not None and k not in self.seen:
                    self.seen[k] = _value_kind(v)
        self.complete = read < scan  # the scan ran out of points: it saw them all

    def kind(self, key: str) -> str | None:
        if key in self.schema:
            return self.schema[key]
        if key in self.seen:
            return self.seen[key]
        if self.complete:
            raise QueryError(f"--filter {key}: no product in {self.collection!r} has a field {key!r}")
        return None  # not in the first points: typed as text


def typed_filters(store: Store, collection: str, filters: Mapping[str, Sequence[Any]],
                  kinds: FieldKinds | None = None) -> dict[str, list[Any]]:
    """Give each filter value the type stored for its field; floats (and anything else) are one clear error.

    The type comes from the collection's payload index when the field has one, else from a stored value
    (`kinds`: types already read, see `FieldKinds`)."""
    if not filters:
        return {}
    schema = store.info(collection).payload_schema if kinds is None else {}
    out: dict[str, list[Any]] = {}
    for key, values in filters.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            values = [values]
        kind = _field_kind(store, collection, key, schema) if kinds is None else kinds.kind(key)
        out[key] = [_typed(key, v, kind) for v in values]
    return out


def _field_kind(store: Store, collection: str, key: str, schema: Mapping[str, str]) -> str | None:
    kind = schema.get(key)
    if kind:
        return {"keyword": "str", "text": "str", "uuid": "str", "integer": "int", "float": "float",
                "bool": "bool"}.get(kind.lower(), kind.lower())
    for i, (_, payload) in enumerate(store.scroll(collection, [key])):
        value = payload.get(key)
        if value is not None:
            return _value_kind(value)
        if i >= _PEEK_POINTS:
            break
    return None  # no product has it: nothing can match, whatever the type


def _value_kind(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), "other")


def _typed(key: str, value: Any, kind: str | None) -> Any:
    if isinstance(value, float) or kind == "float":
        raise QueryError(f"--filter {key}={value}: {key!r} holds decimal numbers, and filters match exact "
                         "text, whole numbers or true/false only")
    if not isinstance(value, (str, int)):  # bool is an int
        raise QueryError(f"--filter {key}: {value!r} is not text, a whole number or true/false")
    if kind == "int" and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise QueryError(f"--filter {key}={value}: {key!r} holds whole numbers") from None
    if kind == "int" and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        raise QueryError(f"--filter {key}={value}: out of range (whole numbers from {_INT64[0]} to {_INT64[1]})")
    if kind == "bool" and isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise QueryError(f"--filter {key}={value}: {key!r} holds true/false")
        return value.strip().lower() == "true"
    if kind in ("str", None) and not isinstance(value, str):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if kind == "other":
        raise QueryError(f"--filter {key}: {key!r} holds lists or objects, which cannot be matched")
    return value
