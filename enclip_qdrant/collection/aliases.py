"""The alias protocol in one place: a collection NAME is an alias of a physical collection
`NAME-<bundle fingerprint[:8]>` (or its twin `...-b`); indexing plans which physical collection to fill, switches
the alias once it is complete (recording the one it replaced), and `rollback` switches it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from enclip_qdrant.collection.meta import check_compatible, read_meta
from enclip_qdrant.errors import BundleError, EnclipError

if TYPE_CHECKING:
    from enclip_qdrant.bundle.manifest import Bundle
    from enclip_qdrant.store import Store


def physical_name(collection: str, bundle: Bundle) -> str:
    """One physical collection per (name, bundle): a retrained bundle never writes into the live one."""
    return f"{collection}-{bundle.fingerprint[:8]}"


def twin_name(physical: str, collection: str, bundle: Bundle) -> str:
    """The other of a bundle's two physical collections: blue/green with the same bundle (rows added while a
    service holds the live one) fills the one not serving, so the pair alternates and never piles up."""
    base = physical_name(collection, bundle)
    return f"{base}-b" if physical == base else base


def plan_target(store: Store, collection: str, bundle: Bundle, blue_green: bool) -> tuple[str, str | None, bool]:
    """(physical collection to fill, the alias's current target, whether to switch the alias when done)."""
    current = store.aliases().get(collection)
    if current is None and store.exists(collection):  # a plain collection, indexed before aliases existed
        if blue_green and read_meta(store, collection).bundle_fingerprint != bundle.fingerprint:
            raise BundleError(f"collection {collection!r} predates blue/green indexing (it is not an alias), "
                              "so it cannot be switched: index into a new --collection")
        return collection, None, False
    if current is not None and read_meta(store, current).bundle_fingerprint == bundle.fingerprint:
        if blue_green:  # the same bundle: refresh its twin beside the live one, then switch
            return twin_name(current, collection, bundle), current, True
        return current, None, False
    if current is not None and not blue_green:
        try:
            check_compatible(store, collection, bundle)
        except BundleError as e:
            raise BundleError(f"{e}; or build it beside the live one and switch with --blue-green") from None
    return physical_name(collection, bundle), current, True


def switch_alias(store: Store, alias: str, physical: str, previous: str | None) -> None:
    """Record where to roll back to, then switch: the alias moves only to a complete collection."""
    if previous is not None:
        store.set_metadata(physical, read_meta(store, physical).with_previous(previous).to_dict())
    store.set_alias(alias, physical)


@dataclass
class RollbackReport:
    collection: str  # the alias
    switched_from: str
    switched_to: str
    bundle: str | None  # the restored bundle's folder, now the workspace's bundle for `collection`


def switch_back(store: Store, alias: str) -> RollbackReport:
    """Undo the last switch of `alias`: it serves the collection its current one replaced."""
    current = store.aliases().get(alias)
    if current is None:
        store.resolve(alias)  # CollectionNotFound when it is nothing at all
        raise EnclipError(f"{alias!r} is a plain collection, not an alias: nothing to roll back to")
    previous = read_meta(store, current).previous
    if not previous:
        raise EnclipError(f"nothing to roll back to: {alias!r} serves {current!r}, which replaced no "
                          "earlier collection")
    if not store.exists(previous):
        raise EnclipError(f"cannot roll back {alias!r}: its previous collection {previous!r} is gone")
    bundle = read_meta(store, previous).bundle_path
    store.set_alias(alias, previous)
    return RollbackReport(alias, current, previous, bundle)
