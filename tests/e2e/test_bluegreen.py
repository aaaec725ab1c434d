"""Blue/green re-indexing after retraining: the name is an alias, switched only to a complete collection;
rollback restores the old collection and its bundle; push copies an embedded collection to a server."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from enclip_qdrant import api
from enclip_qdrant.collection.aliases import physical_name
from enclip_qdrant.collection.meta import check_compatible
from enclip_qdrant.errors import BundleError, ConfirmationRequired, EnclipError
from enclip_qdrant.indexing.push import migrate
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.search.options import SearchOptions
from enclip_qdrant.search.query import search
from enclip_qdrant.store import EdgeStore, ServerStore


def test_first_index_puts_the_name_in_front_of_a_physical_collection(store, bundle, catalog):
    report = index_catalog(catalog, bundle, store, "shop")
    physical = physical_name("shop", bundle)
    assert (report.physical, report.previous, report.switched) == (physical, None, True)
    assert store.aliases() == {"shop": physical} and store.list_collections() == [physical]
    assert store.info("shop").name == physical
    again = index_catalog(catalog, bundle, store, "shop")  # same bundle: incremental, no new collection
    assert (again.created, again.switched, again.unchanged) == (False, False, len(catalog.products))
    assert store.list_collections() == [physical]


def test_blue_green_with_the_same_bundle_fills_its_twin_and_alternates(store, bundle, catalog):
    """Rows changed while a service holds the live collection: the same bundle's blue/green builds the other of
    its two collections to mirror the catalog (pruned), switches, and the next one alternates back."""
    n, products = len(catalog.products), catalog.products
    base = index_catalog(catalog, bundle, store, "shop").physical
    fewer = dataclasses.replace(catalog, products=products[:-5], row_ids=frozenset(p.id for p in products[:-5]))
    twin = index_catalog(fewer, bundle, store, "shop", blue_green=True)
    assert (twin.physical, twin.previous, twin.switched, twin.created) == (f"{base}-b", base, True, True)
    assert store.resolve("shop") == f"{base}-b" and store.count("shop") == n - 5 and store.count(base) == n
    assert store.info("shop").metadata["previous"] == base

    shifted = dataclasses.replace(catalog, products=products[3:], row_ids=frozenset(p.id for p in products[3:]))
    back = index_catalog(shifted, bundle, store, "shop", blue_green=True)  # the old one, brought up to date
    assert (back.physical, back.previous, back.switched, back.created) == (base, f"{base}-b", True, False)
    assert (back.added, back.deleted, back.unchanged) == (0, 3, n - 3)
    assert store.count("shop") == n - 3 and store.count(f"{base}-b") == n - 5  # the one it replaced is kept
    assert sorted(store.list_collections()) == sorted([base, f"{base}-b"])  # two, however many runs

    few = dataclasses.replace(catalog, products=products[:40], row_ids=frozenset(p.id for p in products[:40]))
    with pytest.raises(ConfirmationRequired):  # the twin holds n - 5: mirroring a table of 40 is --prune's guard
        index_catalog(few, bundle, store, "shop", blue_green=True)
    assert store.resolve("shop") == base and store.count(f"{base}-b") == n - 5  # nothing switched or deleted


def test_blue_green_switches_only_when_complete_and_keeps_the_old(store, bundle, other_bundle, catalog,
                                                                 monkeypatch):
    n = len(catalog.products)
    old = index_catalog(catalog, bundle, store, "shop").physical
    with pytest.raises(BundleError, match="--blue-green"):
        index_catalog(catalog, other_bundle, store, "shop")

    seen: list[tuple[str, int, int]] = []
    real = store.upsert

    def upsert_and_query(name, points):  # a reader between batches of the new build
        hits = search(bundle, store, "shop", "red dress", options=SearchOptions(top_k=5)).results
        seen.append((store.resolve("shop"), store.count("shop"), len(hits)))
        real(name, points)

    monkeypatch.setattr(store, "upsert", upsert_and_query)
    report = index_catalog(catalog, other_bundle, store, "shop", blue_green=True, batch_size=160)
    monkeypatch.undo()
    new = physical_name("shop", other_bundle)
    assert len(seen) == 3 and all(s == (old, n, 5) for s in seen)  # the complete old one, every time
    assert (report.physical, report.previous, report.switched, report.added) == (new, old, True, n)
    assert store.resolve("shop") == new and sorted(store.list_collections()) == sorted([old, new])
    assert store.count(old) == n and store.info(old).metadata["bundle_fingerprint"] == bundle.fingerprint
    assert store.info("shop").metadata["previous"] == old
    check_compatible(store, "shop", other_bundle)  # the name now answers to the new bundle
    assert len(search(other_bundle, store, "shop", "red dress", options=SearchOptions(top_k=5)).results) == 5


def test_interrupted_build_is_never_aliased_and_resumes(store, bundle, other_bundle, catalog, monkeypatch):
    n = len(catalog.products)
    old = index_catalog(catalog, bundle, store, "shop").physical
    real, calls = store.upsert, []

    def dies_on_second_batch(name, points):
        calls.append(len(points))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(name, points)

    monkeypatch.setattr(store, "upsert", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        index_catalog(catalog, other_bundle, store, "shop", blue_green=True, batch_size=200)
    monkeypatch.undo()
    new = physical_name("shop", other_bundle)
    assert store.resolve("shop") == old and store.count(new) == 200
    resumed = index_catalog(catalog, other_bundle, store, "shop", blue_green=True, batch_size=200)
    assert (resumed.created, resumed.added, resumed.unchanged, resumed.switched) == (False, n - 200, 200, True)
    assert store.resolve("shop") == new and store.info(new).metadata["previous"] == old


def test_rollback_restores_the_old_collection_and_its_bundle(tmp_path, bundle, other_bundle, catalog):
    conn = api.Connection(home=tmp_path / "home")
    old = api.index(catalog, bundle=bundle, collection="shop", conn=conn).physical
    with pytest.raises(EnclipError, match="nothing to roll back to"):
        api.rollback(conn=conn)
    new = api.index(catalog, bundle=other_bundle, collection="shop", conn=conn, blue_green=True).physical
    with api.Searcher(conn=conn) as s:
        assert s.bundle.fingerprint == other_bundle.fingerprint
    assert conn.workspace.entry("shop")["previous"] == old

    report = api.rollback("shop", conn=conn)
    assert (report.switched_from, report.switched_to) == (new, old)
    assert report.bundle == str(bundle.path.resolve())
    with api.Searcher(conn=conn) as s:  # the old bundle, picked automatically
        assert s.bundle.fingerprint == bundle.fingerprint
        assert len(s.search("red dress", top_k=5).results) == 5
    with EdgeStore(conn.workspace.home) as store:
        assert store.resolve("shop") == old and store.count(new) == len(catalog.products)  # new one kept
    with pytest.raises(EnclipError, match="nothing to roll back to"):
        api.rollback("shop", conn=conn)


def test_push_copies_everything_and_resumes(tmp_path, bundle, catalog):
    home = tmp_path / "home"
    with EdgeStore(home) as edge:
        physical = index_catalog(catalog, bundle, edge, "shop").physical
        source = {p.id: p for p in edge.scroll_points(physical)}
        source_info = edge.info(physical)
    n = len(catalog.products)
    with ServerStore(":memory:") as server:
        with EdgeStore(home) as edge:
            report = migrate(edge, server, "shop", batch_size=100)
        assert (report.physical, report.copied, report.skipped) == (physical, n, 0)
        assert server.aliases() == {"shop": physical} and server.count("shop") == n
        info = server.info("shop")
        assert info.metadata == source_info.metadata and info.vectors == source_info.vectors
        assert info.payload_schema["cluster"] == "integer"
        pushed = {p.id: p for p in server.scroll_points(physical)}
        some = next(iter(source))
        assert pushed[some].payload == source[some].payload
        for k, v in source[some].vectors.items():
            assert np.allclose(pushed[some].vectors[k], v, atol=1e-5)
        assert search(bundle, server, "shop", "red dress", options=SearchOptions(top_k=5)).results

        with EdgeStore(home) as edge:
            again = migrate(edge, server, "shop")
        assert (again.copied, again.skipped) == (0, n)


def test_push_needs_a_server_target(tmp_path, monkeypatch):
    monkeypatch.delenv("QDRANT_URL", raising=False)
    with pytest.raises(EnclipError, match="push needs a target"):
        api.push("shop", api.Connection(), source=api.Connection(home=tmp_path))
