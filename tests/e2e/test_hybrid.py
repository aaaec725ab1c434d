"""Hybrid text+image retrieval end to end on the tiny ensemble, on both backends: `index` stores a BM25 text
vector beside the members' dense ones, `search` adds it as one more prefetch in the same fused query."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from enclip_qdrant.catalog.fields import choose_fields
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.collection.meta import read_meta
from enclip_qdrant.collection.points import point_id
from enclip_qdrant.collection.text import TEXT_VECTOR, TextRecipe
from enclip_qdrant.errors import QueryError
from enclip_qdrant.indexing.push import migrate
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.search.options import DEFAULT_TEXT_WEIGHT, SearchOptions
from enclip_qdrant.search.query import search
from enclip_qdrant.store import EdgeStore, SearchFilter, ServerStore, Store


@pytest.fixture
def indexed(store: Store, bundle, catalog) -> Store:
    index_catalog(catalog, bundle, store, "shop")
    return store


def _spy(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    calls: list[dict] = []
    real = store.query_fused

    def spy(*args, **kwargs):
        calls.append({"vectors": dict(args[1]), **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "query_fused", spy)
    return calls


def test_choose_fields_keeps_categorical_words_only() -> None:
    rows = [{"articleType": "Dress", "baseColour": c, "year": 2012, "sku_id": f"S{i}", "image_path": f"i/{i}.jpg",
             "notes": " ".join(["long"] * 9), "price": "19.99"} for i, c in enumerate(["Red", "Blue"] * 5)]
    assert choose_fields(rows) == ("articleType", "baseColour")


def test_index_stores_a_text_vector_and_its_recipe(indexed: Store, bundle, catalog) -> None:
    info = indexed.info("shop")
    assert info.sparse_vectors == [TEXT_VECTOR] and info.vectors == bundle.vectors
    recipe = read_meta(indexed, "shop").text_recipe()
    assert recipe is not None and recipe.vector == TEXT_VECTOR
    assert {"articleType", "baseColour", "gender"} <= set(recipe.fields)
    assert not {"id", "image", "product_id", "content_hash", "payload_hash", "cluster"} & set(recipe.fields)
    points = {p.id: p for p in indexed.scroll_points("shop")}
    product = catalog.products[0]
    sparse = points[point_id(product.id)].sparse[TEXT_VECTOR]
    want = recipe.document(points[point_id(product.id)].payload)
    assert want is not None and list(sparse.indices) == list(want.indices)


def test_text_query_adds_one_sparse_prefetch_under_the_same_filter(indexed: Store, bundle, monkeypatch) -> None:
    calls = _spy(indexed, monkeypatch)
    resp = search(bundle, indexed, "shop", "red dress", filters={"gender": ["Women"]},
                  options=SearchOptions(top_k=5, explain=True))
    (call,) = calls
    assert set(call["vectors"]) == set(bundle.vectors) | {TEXT_VECTOR}  # one call, members + text
    assert call["filter"].fields == {"gender": ["Women"]} and call["filter"].clusters == [c["id"] for c in
                                                                                         resp.clusters]
    # the members are routed; the text list keeps the field filter and searches every cluster
    assert call["vector_filters"] == {TEXT_VECTOR: SearchFilter(fields={"gender": ["Women"]})}
    # the default weight: the text has DEFAULT_TEXT_WEIGHT x as much say as all the members together
    n = len(bundle.vectors)
    assert call["weights"] == {TEXT_VECTOR: DEFAULT_TEXT_WEIGHT * n}
    assert resp.query["text_vector"] is True
    assert all(set(r.member_ranks) == set(bundle.vectors) | {TEXT_VECTOR} for r in resp.results)
    assert any(r.member_ranks[TEXT_VECTOR] for r in resp.results)  # the lexical prefetch has its own ranks
    assert all(r.payload["gender"] == "Women" for r in resp.results)


def test_no_text_weights_and_image_only(indexed: Store, bundle, catalog, monkeypatch) -> None:
    calls = _spy(indexed, monkeypatch)
    search(bundle, indexed, "shop", "red dress", options=SearchOptions(top_k=5, text_weight=0))
    search(bundle, indexed, "shop", "red dress", options=SearchOptions(top_k=5, text_weight=2.5))
    search(bundle, indexed, "shop", image=catalog.products[3].image, options=SearchOptions(top_k=5))
    off, weighted, image_only = calls
    assert set(off["vectors"]) == set(bundle.vectors) and off["weights"] is None
    assert weighted["weights"] == {TEXT_VECTOR: 2.5 * len(bundle.vectors)}  # against the whole ensemble
    assert set(image_only["vectors"]) == set(bundle.vectors)  # an image-only query has no words to match
    with pytest.raises(QueryError, match="RRF"):
        search(bundle, indexed, "shop", "red dress", options=SearchOptions(fusion="dbsf", text_weight=3.0))
    # the default weight is not a request to weigh
    search(bundle, indexed, "shop", "red dress", options=SearchOptions(fusion="dbsf"))
    assert calls[-1]["weights"] is None and TEXT_VECTOR in calls[-1]["vectors"]
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(QueryError, match="text-weight"):
            SearchOptions(text_weight=bad)


def test_heavy_text_weight_ranks_by_the_words(indexed: Store, bundle) -> None:
    resp = search(bundle, indexed, "shop", "yellow cap",
                  options=SearchOptions(top_k=10, clusters="all", text_weight=50))
    hits = [(r.payload["baseColour"], r.payload["articleType"]) for r in resp.results]
    assert sum(h == ("Yellow", "Cap") for h in hits) >= 8, hits


def test_collection_without_text_vector_is_dense_only(store: Store, bundle, catalog, monkeypatch) -> None:
    index_catalog(catalog, bundle, store, "dense", text=False)
    assert store.info("dense").sparse_vectors == [] and read_meta(store, "dense").lexical is None
    calls = _spy(store, monkeypatch)
    resp = search(bundle, store, "dense", "red dress", options=SearchOptions(top_k=5))
    assert set(calls[0]["vectors"]) == set(bundle.vectors) and resp.query["text_vector"] is False
    again = index_catalog(catalog, bundle, store, "dense")  # an existing collection keeps what it has
    assert again.embedded == 0 and store.info("dense").sparse_vectors == []


def test_reindex_rewrites_the_text_vector_when_only_words_change(store: Store, bundle, catalog_dir, tmp_path):
    root = tmp_path / "shop"
    shutil.copytree(catalog_dir, root)
    table = root / "captions.csv"
    index_catalog(load_catalog(root), bundle, store, "shop")
    assert index_catalog(load_catalog(root), bundle, store, "shop").unchanged == len(load_catalog(root).products)
    rows = list(csv.DictReader(table.open()))
    rows[1]["title"] = "Velvet Opera Gown"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = index_catalog(load_catalog(root), bundle, store, "shop")
    assert (report.embedded, report.payload_updated) == (0, 1)  # no image embedded for a new title
    hits = store.query_each("shop", {TEXT_VECTOR: TextRecipe().query("velvet opera")}, limit=3)[TEXT_VECTOR]
    assert [h.payload["product_id"] for h in hits] == [rows[1]["id"]]
    assert index_catalog(load_catalog(root), bundle, store, "shop").embedded == 0


def test_push_copies_the_text_vector(bundle, catalog, tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "home") as source, ServerStore(":memory:") as target:
        index_catalog(catalog, bundle, source, "shop")
        migrate(source, target, "shop")
        assert target.info("shop").sparse_vectors == [TEXT_VECTOR]
        assert read_meta(target, "shop").lexical == read_meta(source, "shop").lexical  # same recipe there
        there = {p.id: p.sparse for p in target.scroll_points("shop")}
        for p in source.scroll_points("shop"):
            assert {k: list(v.indices) for k, v in there[p.id].items()} == {
                k: list(v.indices) for k, v in p.sparse.items()}
        found = search(bundle, target, "shop", "blue sneakers", options=SearchOptions(top_k=8))
        assert found.query["text_vector"] is True
        assert migrate(source, target, "shop").copied == 0  # resumable: nothing left to copy


def test_catalog_compounds_join_a_shoppers_spelling() -> None:
    """"t-shirt", "t shirt" and "sweat shirt" mean what a catalog writes as one word (Tshirts, Sweatshirts): the
    joins come from the catalog's own words, apply to queries and documents alike, and travel in the recipe."""
    from enclip_qdrant.collection.text import TextRecipe, compound_tokens

    texts = ["Nike Men Red Tshirts", "Puma Men Blue Shirts", "Adidas Women Grey Sweatshirts", "Sweat Band",
             "Levis Men Black Jeans"]
    plain = TextRecipe()
    recipe = TextRecipe(joins=compound_tokens(texts))
    want = plain.query("red tshirts")
    assert plain.query("red t-shirt") != want  # the tokenizer alone reads "shirt"
    for spelling in ("red t-shirt", "red T-Shirt", "red t shirt", "red tshirt"):
        assert recipe.query(spelling) == want, spelling
    assert recipe.query("grey sweat shirt") == plain.query("grey sweatshirts")
    assert recipe.query("blue shirt") == plain.query("blue shirt")  # a word that is not a compound is left alone
    assert recipe.query("black jeans") == plain.query("black jeans")
    doc = recipe.document({"text": "Roadster Men T-Shirt"})
    assert doc is not None and set(want.indices) - set(doc.indices) == set(plain.query("red").indices)
    assert TextRecipe.from_dict(recipe.to_dict()) == recipe
    assert "joins" not in plain.to_dict()  # a collection made before joins existed reads back unchanged
