"""The product path end to end on a tiny ensemble: index, query, re-index, wrong bundles, bad queries.

Everything that touches storage runs on both backends (embedded qdrant-edge and qdrant-client's
in-memory stand-in for a server), through the same library calls.
"""

from __future__ import annotations

import csv
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ARTICLES, COLOURS
from PIL import Image

from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.collection.points import point_id
from enclip_qdrant.errors import BundleError, QueryError
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.search.options import SearchOptions
from enclip_qdrant.search.query import search

QUERY_NOUN = {"Dress": "dress", "Handbag": "handbag", "Sneakers": "sneakers", "Cap": "cap"}


@pytest.fixture
def indexed(store, bundle, catalog):
    report = index_catalog(catalog, bundle, store, "shop")
    return store, report


def test_index_writes_one_named_vector_per_member_and_cluster_payload(indexed, bundle, catalog):
    store, report = indexed
    assert report.added == len(catalog.products) and report.failed == []
    assert all(report.timings[k] > 0 for k in ("decode", "encode", "upsert"))  # where the time went
    assert sum(report.timings.values()) <= report.seconds
    info = store.info("shop")
    assert info.points == len(catalog.products)
    assert info.vectors == bundle.vectors and len(info.vectors) == 3
    assert info.payload_schema["cluster"] == "integer"
    assert info.metadata["bundle_fingerprint"] == bundle.fingerprint
    sizes = store.facet_counts("shop", "cluster")
    assert sum(sizes.values()) == len(catalog.products)
    assert set(sizes) <= set(range(bundle.clusters.k))


def test_results_match_colour_and_type_far_above_chance(indexed, bundle):
    store, _ = indexed
    colour_hits, type_hits = [], []
    for article, colour in itertools.product(ARTICLES, COLOURS):
        resp = search(bundle, store, "shop", f"{colour.lower()} {QUERY_NOUN[article]}",
                      options=SearchOptions(top_k=10))
        assert len(resp.results) == 10
        colour_hits += [r.payload["baseColour"] == colour for r in resp.results]
        type_hits += [r.payload["articleType"] == article for r in resp.results]
    colour_p, type_p = float(np.mean(colour_hits)), float(np.mean(type_hits))
    # chance is 1/6 for colour and 1/4 for type
    assert colour_p > 3 / len(COLOURS), colour_p
    assert type_p > 2 / len(ARTICLES), type_p


def test_query_routes_to_clusters_and_explains_every_member(indexed, bundle):
    store, _ = indexed
    resp = search(bundle, store, "shop", "red dress", options=SearchOptions(top_k=5, explain=True))
    assert resp.clusters and sum(c["p"] for c in resp.clusters) > 0
    # routing restricts what the members propose; the text list searches every cluster (search.text_filters)
    routed = {c["id"] for c in resp.clusters}
    assert all(r.cluster in routed or (r.member_ranks or {}).get("text_bm25") for r in resp.results)
    dense = search(bundle, store, "shop", "red dress", options=SearchOptions(top_k=5, text_weight=0))
    assert all(r.cluster in {c["id"] for c in dense.clusters} for r in dense.results)
    d = resp.to_dict(explain=True)
    assert set(d) == {"query", "clusters", "results"}
    for row in d["results"]:
        assert {"rank", "id", "score", "cluster", "payload", "member_ranks"} <= set(row)
        assert set(row["member_ranks"]) == set(bundle.vectors) | {"text_bm25"}  # + the text prefetch's rank
    # every member contributes a ranked candidate to at least one result
    for name in bundle.vectors:
        assert any(r.member_ranks[name] for r in resp.results), name
    # the explained ranks rebuild each fused score by the documented formula (base.RRF_K): the text list weighs
    # --text-weight (default) x the number of members, every member 1; the shares are those terms over their sum
    from enclip_qdrant.search.options import DEFAULT_TEXT_WEIGHT
    from enclip_qdrant.store.base import RRF_K

    weights = {name: 1.0 for name in bundle.vectors} | {"text_bm25": DEFAULT_TEXT_WEIGHT * len(bundle.vectors)}
    for r in resp.results:
        terms = {m: weights[m] / (RRF_K + rank - 1) for m, rank in r.member_ranks.items() if rank}
        assert r.score == pytest.approx(sum(terms.values()), rel=1e-5)
        assert r.shares == pytest.approx({m: terms.get(m, 0.0) / sum(terms.values()) for m in r.member_ranks},
                                         abs=1e-4)


def test_cluster_modes_and_field_filters(indexed, bundle):
    store, _ = indexed
    everything = search(bundle, store, "shop", "blue cap", options=SearchOptions(top_k=10, clusters="all"))
    assert everything.clusters == []
    only = search(bundle, store, "shop", "blue cap", options=SearchOptions(top_k=10, clusters=[0]))
    assert all(r.cluster == 0 for r in only.results)
    red = search(bundle, store, "shop", "bag", filters={"baseColour": ["Red"]},
                 options=SearchOptions(top_k=10, clusters="all"))
    assert red.results and all(r.payload["baseColour"] == "Red" for r in red.results)
    dbsf = search(bundle, store, "shop", "bag", options=SearchOptions(top_k=7, fusion="dbsf"))
    assert len(dbsf.results) == 7
    with pytest.raises(QueryError, match="no cluster"):
        search(bundle, store, "shop", "bag", options=SearchOptions(clusters=[bundle.clusters.k + 5]))


def test_image_query_finds_the_same_product(indexed, bundle, catalog):
    store, _ = indexed
    product = catalog.products[7]
    resp = search(bundle, store, "shop", image=product.image, options=SearchOptions(top_k=5, clusters="all"))
    assert resp.results[0].payload["product_id"] == product.id
    both = search(bundle, store, "shop", "yellow", image=product.image, options=SearchOptions(top_k=5))
    assert len(both.results) == 5


def test_bad_queries_are_clear_errors(indexed, bundle, tmp_path):
    store, _ = indexed
    for text in ("", "   ", None):
        with pytest.raises(QueryError, match="empty query"):
            search(bundle, store, "shop", text)
    with pytest.raises(QueryError, match="not found"):
        search(bundle, store, "shop", image=tmp_path / "nope.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(QueryError, match="cannot read"):
        search(bundle, store, "shop", image=broken)


def test_reindex_unchanged_catalog_embeds_nothing(indexed, bundle, catalog):
    store, _ = indexed
    again = index_catalog(catalog, bundle, store, "shop")
    assert (again.added, again.changed, again.payload_updated, again.embedded) == (0, 0, 0, 0)
    assert again.unchanged == len(catalog.products)
    assert again.timings == {"decode": 0.0, "encode": 0.0, "upsert": 0.0}


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_reindex_detects_image_payload_and_removed_products(store, bundle, catalog_dir, tmp_path):
    root = tmp_path / "shop"
    shutil.copytree(catalog_dir, root)
    table = root / "captions.csv"
    index_catalog(load_catalog(root), bundle, store, "shop")
    rows = list(csv.DictReader(table.open()))
    n = len(rows)
    Image.new("RGB", (60, 80), (10, 200, 10)).save(root / rows[0]["image"], "JPEG")  # new photo
    rows[1]["gender"] = "Kids"  # a payload-only change
    _write_rows(table, rows[:-1])  # the last product leaves the catalog

    report = index_catalog(load_catalog(root), bundle, store, "shop")
    assert (report.added, report.changed, report.payload_updated, report.deleted) == (0, 1, 1, 0)
    assert report.unchanged == n - 3
    assert store.count("shop") == n  # without --prune nothing is deleted
    pid = point_id(rows[1]["id"])
    hit = store.retrieve("shop", [pid])[0]
    assert hit.payload["gender"] == "Kids" and isinstance(hit.payload["cluster"], int)

    pruned = index_catalog(load_catalog(root), bundle, store, "shop", prune=True)
    assert (pruned.deleted, pruned.embedded, pruned.unchanged) == (1, 0, n - 1)
    assert store.count("shop") == n - 1
    assert store.retrieve("shop", [point_id(rows[-1]["id"])]) == []


def test_collection_refuses_another_ensemble(indexed, catalog, other_bundle):
    store, _ = indexed
    other = other_bundle
    with pytest.raises(BundleError, match="was built by bundle"):
        index_catalog(catalog, other, store, "shop")
    from enclip_qdrant.collection.meta import check_compatible

    with pytest.raises(BundleError, match="was built by bundle"):
        check_compatible(store, "shop", other)
