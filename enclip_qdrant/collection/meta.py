"""What an ENCLIP collection records about itself (collection metadata), spelled in one place.

Every reader and writer goes through `CollectionMeta` instead of spelling keys like "bundle_fingerprint";
keys it does not know (written by a newer version) survive a round trip in `extra`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from enclip_qdrant.errors import BundleError

if TYPE_CHECKING:
    from enclip_qdrant.bundle.manifest import Bundle
    from enclip_qdrant.collection.text import TextRecipe
    from enclip_qdrant.store import Store


@dataclass(frozen=True)
class CollectionMeta:
    bundle_fingerprint: str | None = None  # the ensemble whose vectors the collection holds
    bundle_path: str | None = None  # where that bundle was when it was indexed (queries load it from there)
    members: tuple[str, ...] | None = None  # the named vectors, one per member
    clusters: int | None = None  # k of the bundle's clustering
    catalog: str | None = None  # the catalog's root: relative image paths in the payload resolve against it
    created: str | None = None  # ISO time of creation (UTC)
    previous: str | None = None  # the collection this one replaced behind an alias (rollback target)
    # the sparse text vector's recipe (`lexical.TextRecipe.to_dict()`): name, payload fields, BM25 config;
    # None: the collection has no text vector (built without text, or before hybrid search existed)
    lexical: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_bundle(cls, bundle: Bundle, catalog_root: Any) -> CollectionMeta:
        """What a new collection built by `bundle` from a catalog records."""
        return cls(bundle_fingerprint=bundle.fingerprint, bundle_path=str(bundle.path.resolve()),
                   members=tuple(bundle.vectors), clusters=bundle.clusters.k, catalog=str(catalog_root),
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CollectionMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in doc.items() if k in known}
        if values.get("members") is not None:
            values["members"] = tuple(values["members"])
        return cls(**values, extra={k: v for k, v in doc.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able metadata; unset fields are left out, as they always were."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if self.members is not None:
            doc["members"] = list(self.members)
        if self.lexical is not None:
            doc["lexical"] = dict(self.lexical)
        return {**self.extra, **{k: v for k, v in doc.items() if v is not None}}

    def text_recipe(self) -> TextRecipe | None:
        """The recipe that built the collection's text vector, for queries to tokenize the same way."""
        from enclip_qdrant.collection.text import TextRecipe

        return TextRecipe.from_dict(self.lexical) if self.lexical else None

    def with_previous(self, previous: str) -> CollectionMeta:
        return replace(self, previous=previous)


def read_meta(store: Store, collection: str) -> CollectionMeta:
    """From `describe`, which opens nothing on the embedded store: planning a blue/green run or a rollback
    must not take the collection a running service holds."""
    return CollectionMeta.from_dict(store.describe(collection).metadata)


def check_compatible(store: Store, collection: str, bundle: Bundle) -> CollectionMeta:
    """A collection can only be read or extended with the ensemble that built it."""
    meta = read_meta(store, collection)
    built_by = meta.bundle_fingerprint
    if built_by != bundle.fingerprint:
        raise BundleError(
            f"collection {collection!r} was built by bundle {built_by or 'unknown'}, but bundle "
            f"{bundle.fingerprint} ({bundle.path}) was given: its vectors would not be comparable. "
            f"Use that bundle, or index into another --collection")
    return meta
