"""Clusters people can read: labels from what a cluster's products share, stored in the bundle manifest and
shown by `info` (table, --json, --sheet) and `query`. Fast: no ensemble is trained here except in the last
test, which reuses the session bundle."""

from __future__ import annotations

import json
import random
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from enclip_qdrant import BundleError
from enclip_qdrant.api import Connection
from enclip_qdrant.bundle.manifest import read_manifest
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.cli.app import app
from enclip_qdrant.store import PointRecord
from enclip_qdrant.store.base import CollectionSpec
from enclip_qdrant.training.labels import MAX_CHARS, cluster_labels

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _words(label: str) -> set[str]:
    return {w.lower() for w in re.split(r"[ ·]+", label) if w}


# ---------------------------------------------------------------------------------------------- the labels


def test_a_cluster_dominated_by_one_article_is_named_after_it() -> None:
    texts = (["Red striped dress for women", "Blue dress", "Women green floral dress", "Black dress 2021"] * 5
             + ["Red cap"] * 2  # a few strays do not change what cluster 0 is
             + ["Men blue sneakers", "White sneakers shoes", "Black running sneakers", "Sneakers for men"] * 5)
    assignment = [0] * 22 + [1] * 20
    labels = cluster_labels(texts, None, assignment, 2)
    assert labels[0].split(" · ")[0] == "dress" and "sneakers" in _words(labels[1])
    assert "cap" not in _words(labels[0]) and "sneakers" not in _words(labels[0])
    for label in labels:
        assert 0 < len(label) <= MAX_CHARS
        assert not re.search(r"\d", label)  # no numbers or ids
        assert not _words(label) & {"for", "the", "and", "with"}  # no stop words


def test_field_values_name_clusters_and_win_over_title_spelling() -> None:
    texts = ["Nova Red Dress", "Kite Red Dress", "Blue cap", "Nova Blue Cap"]
    fields = [{"articleType": "Dress", "gender": "Women", "sku": f"AB{i}X"} for i in range(2)] + \
             [{"articleType": "Cap", "gender": "Men", "sku": f"CD{i}Y"} for i in range(2)]
    labels = cluster_labels(texts, fields, [0, 0, 1, 1], 2)
    assert labels[0].startswith("Dress") and "Women" in labels[0]  # the field's own spelling
    assert labels[1].startswith("Cap") and "Men" in labels[1]
    assert not any(s in " ".join(labels) for s in ("AB", "CD"))  # an id-like field never names a cluster


def test_a_word_and_its_longer_form_are_not_both_in_a_label() -> None:
    texts = ["Women check skirt", "Women checked skirt", "Women check dress", "Men plain cap", "Men plain cap"]
    fields = [{"pattern": "Checked"}] * 3 + [{"pattern": "Plain"}] * 2
    label = cluster_labels(texts, fields, [0, 0, 0, 1, 1], 2)[0]
    assert label.startswith("Checked") and "check" not in _words(label) and "Women" in label.title()


def test_labels_are_deterministic_distinct_and_empty_for_empty_clusters() -> None:
    rng = random.Random(0)
    rows = [(f"{colour} dress", c) for c, colour in enumerate(["red", "blue"]) for _ in range(10)]
    texts, assignment = [t for t, _ in rows], [c for _, c in rows]
    first = cluster_labels(texts, None, assignment, 3)
    order = list(range(len(rows)))
    rng.shuffle(order)
    again = cluster_labels([texts[i] for i in order], None, [assignment[i] for i in order], 3)
    assert first == again  # product order does not matter
    assert first[0] != first[1] and "red" in first[0] and "blue" in first[1]
    assert first[2] == ""  # no products: nothing to say (shown as a plain id)
    assert cluster_labels([], None, [], 2) == ["", ""]


def test_synthetic_catalog_clusters_by_article_get_the_article_name(tmp_path: Path) -> None:
    root = make_catalog(tmp_path / "shop", n=96, seed=1, articles=["dress", "handbag", "sneakers", "cap"],
                        colours=["red", "blue", "green"], size=(24, 32))
    products = load_catalog(root).products
    articles = sorted({p.fields["articleType"] for p in products})
    assignment = np.array([articles.index(p.fields["articleType"]) for p in products])
    labels = cluster_labels([p.text for p in products], [p.fields for p in products], assignment, len(articles))
    assert [label.split(" · ")[0] for label in labels] == articles
    words = cluster_labels([p.text for p in products], None, assignment, len(articles))  # titles alone
    for article, label in zip(articles, words, strict=True):
        assert article.lower() in _words(label), (article, label)


# ------------------------------------------------------------------------------------ stored in the bundle

MANIFEST = {"format": "enclip-bundle", "format_version": 2, "fingerprint": "f00d", "clusters": {
    "k": 2, "criterion": "fixed: K=2", "sizes": [5, 5]},
    "members": [{"name": "m0", "vector": "m0", "dim": 4, "path": "members/m0", "sha256": "x", "config_sha256": "y"}]}


def _bundle(folder: Path, labels: object = None) -> Path:
    manifest = json.loads(json.dumps(MANIFEST))
    if labels is not None:
        manifest["clusters"]["labels"] = labels
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_manifest_with_or_without_labels_reads_and_bad_labels_are_refused(tmp_path: Path) -> None:
    assert read_manifest(_bundle(tmp_path / "new", ["Dress · Red", "Cap"]))["clusters"]["labels"] == ["Dress · Red",
                                                                                                       "Cap"]
    assert "labels" not in read_manifest(_bundle(tmp_path / "old"))["clusters"]  # before labels: still loads
    for bad, why in ((["only one"], "2 clusters"), ("Dress", "list of strings"), ([1, 2], "list of strings")):
        with pytest.raises(BundleError, match=why):
            read_manifest(_bundle(tmp_path / "bad", bad))


# ---------------------------------------------------------------------------------- shown by info, --sheet

@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    return tmp_path / "home"


def _collection(home: Path, tmp_path: Path, bundle: Path, fingerprint: str = "f00d") -> None:
    """An embedded collection built "by" the fake bundle: 2 clusters of 5 products with images."""
    catalog = tmp_path / "catalog"
    (catalog / "images").mkdir(parents=True, exist_ok=True)
    points = []
    for i in range(10):
        Image.new("RGB", (20, 30), (200, 30, 30) if i % 2 else (30, 30, 200)).save(catalog / "images" / f"{i}.jpg")
        points.append(PointRecord(str(uuid.uuid5(uuid.NAMESPACE_URL, str(i))), {"m0": [1.0, 0.0, 0.0, float(i)]},
                                  {"cluster": i % 2, "image": f"images/{i}.jpg", "product_id": str(i)}))
    with Connection(home=home).open() as store:
        store.create("shop", CollectionSpec(vectors={"m0": 4}, metadata={
            "bundle_fingerprint": fingerprint, "bundle_path": str(bundle), "catalog": str(catalog), "clusters": 2}))
        store.upsert("shop", points)


def test_info_shows_labels_in_json_and_table(home: Path, tmp_path: Path) -> None:
    _collection(home, tmp_path, _bundle(tmp_path / "bundle", ["Cap · Blue", "Dress · Red"]))
    (c,) = json.loads(run("info", "--json").stdout)["collections"]
    assert c["clusters"] == {"0": 5, "1": 5} and c["cluster_labels"] == {"0": "Cap · Blue", "1": "Dress · Red"}
    table = run("info").stdout
    assert "0: 5  Cap · Blue" in table and "1: 5  Dress · Red" in table


@pytest.mark.parametrize("labels, fingerprint", [(None, "f00d"), (["Cap", "Dress"], "retrained")],
                         ids=["bundle before labels", "bundle folder retrained since"])
def test_info_without_usable_labels_shows_plain_ids(home: Path, tmp_path: Path, labels, fingerprint) -> None:
    _collection(home, tmp_path, _bundle(tmp_path / "bundle", labels), fingerprint)
    (c,) = json.loads(run("info", "--json").stdout)["collections"]
    assert c["cluster_labels"] == {} and c["clusters"] == {"0": 5, "1": 5}
    assert "0: 5  1: 5" in run("info").stdout


def test_info_sheet_has_one_row_of_samples_per_cluster(home: Path, tmp_path: Path) -> None:
    from enclip_qdrant.search.sheet import cluster_sheet

    _collection(home, tmp_path, _bundle(tmp_path / "bundle", ["Cap · Blue", "Dress · Red"]))
    out = tmp_path / "sheets" / "clusters.png"
    run("info", "shop", "--sheet", str(out))
    empty = cluster_sheet({}, tmp_path / "empty.png")  # the header and room for one row
    with Image.open(out) as sheet, Image.open(empty) as blank:
        row_h = sheet.height - blank.height
        assert row_h > 100 and sheet.height == 24 + 2 * row_h  # a 24-pixel header, then one row per cluster
        pixels = np.asarray(sheet.convert("RGB")).astype(int)
    for c, colour in ((0, np.array([30, 30, 200])), (1, np.array([200, 30, 30]))):  # even ids blue, odd red
        band = pixels[24 + c * row_h + 20: 24 + (c + 1) * row_h]
        assert (np.abs(band - colour).sum(-1) < 60).sum() > 5 * 20 * 30 * 0.5  # its 5 samples are pasted


# ------------------------------------------------------------------------- trained bundle, query output


def test_trained_bundle_stores_labels_and_query_shows_them(home: Path, bundle, catalog_dir: Path) -> None:
    clusters = bundle.manifest["clusters"]
    assert len(clusters["labels"]) == clusters["k"] and all(len(x) <= MAX_CHARS for x in clusters["labels"])
    print("labels:", clusters["labels"])
    run("index", str(catalog_dir), "--bundle", str(bundle.path), "--json")
    (c,) = json.loads(run("info", "--json").stdout)["collections"]
    assert c["cluster_labels"] == {str(i): x for i, x in enumerate(clusters["labels"]) if x}
    out = json.loads(run("query", "red dress", "--json", "--explain", "-k", "5").stdout)
    labelled = {i: x for i, x in enumerate(clusters["labels"]) if x}
    for routed in out["clusters"]:
        assert routed.get("label") == labelled.get(routed["id"])
    for r in out["results"]:
        assert r["cluster_label"] == labelled.get(r["cluster"])
    print(run("info").stdout)
