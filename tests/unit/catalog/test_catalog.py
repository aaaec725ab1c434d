"""Catalog loading: messy rows must be skipped with a reason, never crash or silently vanish."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from paths import FASHION_DEV
from PIL import Image

from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.model import Columns, Skipped
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.errors import CatalogError

if not FASHION_DEV.is_dir():
    FASHION_DEV = Path("/work/shared/data/fashion-dev")


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 80), colour).save(path, "JPEG", quality=60)
    return path


def _reasons(skipped: list[Skipped]) -> dict[str, str]:
    return {s.ref: s.reason for s in skipped}


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    return make_catalog(tmp_path / "cat", 12, seed=5)


# --------------------------------------------------------------------------- happy paths


def test_synthetic_catalog_with_no_flags(synth: Path) -> None:
    cat = load_catalog(synth)
    assert cat.columns == Columns(image="image", text="title", id="id")
    assert cat.table == (synth / "captions.csv").resolve()
    assert cat.root == synth.resolve()
    assert len(cat.products) == 12 and cat.skipped == []
    p = cat.products[0]
    assert p.id == "10001"
    assert p.image_rel == "images/10001.jpg"
    assert p.image.is_absolute() and p.image == (synth / "images/10001.jpg").resolve()
    assert p.content_hash == hashlib.sha256(p.image.read_bytes()).hexdigest()
    assert p.text and p.text == p.text.strip()
    assert set(p.fields) == {"articleType", "baseColour", "pattern", "gender"}
    assert cat.with_text() == cat.products
    assert cat.summary() == "12 products, 0 skipped"


def test_table_file_as_path_and_progress(synth: Path) -> None:
    calls: list[tuple[int, int]] = []
    cat = load_catalog(synth / "captions.csv", progress=lambda done, total: calls.append((done, total)))
    assert len(cat) == 12
    assert calls[0] == (0, 12) and calls[-1] == (12, 12)


def test_jsonl_matches_csv(tmp_path: Path) -> None:
    a = load_catalog(make_catalog(tmp_path / "csv", 10, seed=2))
    b = load_catalog(make_catalog(tmp_path / "jsonl", 10, seed=2, fmt="jsonl"))
    assert b.table is not None and b.table.name == "catalog.jsonl"
    assert b.columns == Columns(image="image", text="title", id="id")
    assert [(p.id, p.text, p.fields) for p in a.products] == [(p.id, p.text, p.fields) for p in b.products]
    assert a.fingerprint() == b.fingerprint()


def test_jsonl_typed_values_and_malformed_lines(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "b.jpg")
    lines = [
        json.dumps({"sku": 7, "file": "a.jpg", "caption": " Red top ", "price": 9.5, "tags": ["x"], "n": None}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"sku": 8.0, "file": "b.jpg", "caption": "Blue", "price": float("nan")}),
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    cat = load_catalog(tmp_path)
    assert cat.columns == Columns(image="file", text="caption", id="sku")
    assert [p.id for p in cat.products] == ["7", "8"]
    assert cat.products[0].text == "Red top"
    assert cat.products[0].fields == {"price": 9.5, "tags": '["x"]'}
    assert cat.products[1].fields == {}  # NaN dropped
    assert [(s.row, s.reason) for s in cat.skipped] == [(2, "malformed JSON"), (3, "malformed row")]


def test_flags_override_detection(tmp_path: Path) -> None:
    _jpeg(tmp_path / "pics/one.jpg")
    _jpeg(tmp_path / "pics/two.jpg", (0, 0, 200))
    _write_csv(
        tmp_path / "catalog.csv",
        ["id", "image", "title", "code", "photo", "long_desc"],
        [
            ["1", "pics/nope.jpg", "short", "A-1", "pics/one.jpg", "A long red description"],
            ["2", "pics/nope.jpg", "short", "A-2", "pics/two.jpg", "A long blue description"],
        ],
    )
    cat = load_catalog(tmp_path, image_col="photo", text_col="LONG_DESC", id_col="code")
    assert cat.columns == Columns(image="photo", text="long_desc", id="code")
    assert [p.id for p in cat.products] == ["A-1", "A-2"]
    assert cat.products[1].text == "A long blue description"
    # Unused known columns are ordinary fields now.
    assert cat.products[0].fields == {"id": 1, "image": "pics/nope.jpg", "title": "short"}


def test_wrong_flag_names_available_columns(synth: Path) -> None:
    with pytest.raises(CatalogError) as e:
        load_catalog(synth, text_col="caption")
    msg = str(e.value)
    assert "'caption'" in msg and "available columns" in msg
    for col in ("id", "image", "title", "articleType", "baseColour"):
        assert col in msg


def test_bare_folder_of_images(tmp_path: Path) -> None:
    _jpeg(tmp_path / "b.jpg")
    _jpeg(tmp_path / "shoes/red.PNG")
    Image.new("RGB", (8, 8)).save(tmp_path / "shoes/red.PNG", "PNG")
    _jpeg(tmp_path / "shoes/deep/x.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    _jpeg(tmp_path / ".hidden/y.jpg")
    cat = load_catalog(tmp_path)
    assert cat.table is None and cat.columns == Columns(None, None, None)
    assert [p.id for p in cat.products] == ["b", "shoes/deep/x", "shoes/red"]
    assert [p.image_rel for p in cat.products] == ["b.jpg", "shoes/deep/x.jpeg", "shoes/red.PNG"]
    assert all(p.text is None and p.fields == {} for p in cat.products)
    assert cat.with_text() == []
    with pytest.raises(CatalogError, match="text"):
        load_catalog(tmp_path, require_text=True)
    with pytest.raises(CatalogError, match="no table"):
        load_catalog(tmp_path, image_col="image")


def test_bare_folder_skips_corrupt_images(tmp_path: Path) -> None:
    _jpeg(tmp_path / "ok.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 garbage")
    cat = load_catalog(tmp_path)
    assert [p.id for p in cat.products] == ["ok"]
    assert cat.skipped == [Skipped(None, "bad.jpg", "corrupt image")]


def test_no_id_column_uses_image_path(tmp_path: Path) -> None:
    _jpeg(tmp_path / "img/a.jpg")
    _write_csv(tmp_path / "data.csv", ["path", "description"], [["img/a.jpg", "thing"]])
    cat = load_catalog(tmp_path)
    assert cat.columns == Columns(image="path", text="description", id=None)
    assert cat.products[0].id == "img/a.jpg"


# --------------------------------------------------------------------------- bad rows


def _messy(tmp_path: Path) -> Path:
    """A synthetic catalog plus one row for each way a row can go wrong."""
    root = make_catalog(tmp_path / "cat", 4, seed=1)
    (root / "images/corrupt.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    good = (root / "images/10001.jpg").read_bytes()
    (root / "images/truncated.jpg").write_bytes(good[: len(good) // 2])
    _jpeg(tmp_path / "escape.jpg")  # exists, but outside the catalog
    with (root / "captions.csv").open("a", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["20001", "images/missing.jpg", "Red dress", "Dress", "Red", "Plain", "Women"])
        w.writerow(["20002", "images/corrupt.jpg", "Red dress", "Dress", "Red", "Plain", "Women"])
        w.writerow(["10002", "images/10003.jpg", "Dup of 10002", "Dress", "Red", "Plain", "Women"])
        w.writerow(["20003", "../escape.jpg", "Red dress", "Dress", "Red", "Plain", "Women"])
        w.writerow(["20004", str(tmp_path / "escape.jpg"), "Red dress", "Dress", "Red", "Plain", "Women"])
        w.writerow(["20005", "images/10004.jpg", "   ", "Dress", "Red", "Plain", "Women"])
        w.writerow(["20006", "images/truncated.jpg", "Red dress", "Dress", "Red", "Plain", "Women"])
        w.writerow(["20007", "images/10001.jpg", "too", "many", "fields", "in", "this", "row"])
        w.writerow(["", "images/10001.jpg", "no id", "Dress", "Red", "Plain", "Women"])
    with (root / "captions.csv").open("ab") as f:
        f.write(b"20008,images/10001.jpg,Caf\xe9 latin-1,Dress,Red,Plain,Women\r\n")
    return root


def test_bad_rows_are_skipped_with_reasons(tmp_path: Path) -> None:
    cat = load_catalog(_messy(tmp_path), require_text=True)
    assert [p.id for p in cat.products] == ["10001", "10002", "10003", "10004"]
    assert _reasons(cat.skipped) == {
        "20001": "missing image",
        "20002": "corrupt image",
        "10002": "duplicate id",
        "20003": "path escapes catalog",
        "20004": "path escapes catalog",
        "20005": "empty text",
        "20006": "corrupt image",
        "line 13": "malformed row",
        "line 14": "missing id",
        "line 15": "not UTF-8",
    }
    assert [s.row for s in cat.skipped] == list(range(5, 15))
    summary = cat.summary()
    assert summary.startswith("4 products, 10 skipped (")
    assert "2 corrupt image" in summary and "1 duplicate id" in summary
    assert "first: row 5 (20001): missing image" in summary


def test_empty_text_kept_without_require_text(tmp_path: Path) -> None:
    cat = load_catalog(_messy(tmp_path))
    kept = {p.id: p for p in cat.products}
    assert "20005" in kept and kept["20005"].text is None
    assert "20005" not in kept_ids(cat.with_text())
    assert "empty text" not in _reasons(cat.skipped).values()


def kept_ids(products: list) -> set[str]:
    return {p.id for p in products}


def test_duplicate_keeps_first_usable_row(tmp_path: Path) -> None:
    _jpeg(tmp_path / "b.jpg")
    _write_csv(tmp_path / "products.csv", ["id", "image"], [["1", "missing.jpg"], ["1", "b.jpg"], ["1", "b.jpg"]])
    cat = load_catalog(tmp_path)
    assert [p.image_rel for p in cat.products] == ["b.jpg"]
    assert [(s.row, s.reason) for s in cat.skipped] == [(1, "missing image"), (3, "duplicate id")]


def test_all_rows_bad_raises_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    _write_csv(tmp_path / "captions.csv", ["id", "image", "title"], [["1", "nope.jpg", "a"], ["2", "x.jpg", "b"]])
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path)
    msg = str(e.value)
    assert "no usable products" in msg and "1 missing image" in msg and "1 corrupt image" in msg


def test_header_only_table_raises(tmp_path: Path) -> None:
    _write_csv(tmp_path / "captions.csv", ["id", "image", "title"], [])
    with pytest.raises(CatalogError, match="no usable products"):
        load_catalog(tmp_path)


def test_no_image_column_and_no_images_raises(tmp_path: Path) -> None:
    _write_csv(tmp_path / "captions.csv", ["id", "title"], [["1", "a"]])
    with pytest.raises(CatalogError, match="no image column"):
        load_catalog(tmp_path)
    _write_csv(tmp_path / "captions.csv", ["title", "colour"], [["a", "red"]])
    with pytest.raises(CatalogError, match="available columns: title, colour"):
        load_catalog(tmp_path)


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "nowhere")


# --------------------------------------------------------------------------- discovery and typing


def test_table_discovery(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _write_csv(tmp_path / "extra.csv", ["image"], [["a.jpg"]])
    _write_csv(tmp_path / "products.csv", ["image", "title"], [["a.jpg", "from products"]])
    assert load_catalog(tmp_path).table == (tmp_path / "products.csv").resolve()
    (tmp_path / "products.csv").unlink()
    _write_csv(tmp_path / "other.csv", ["image"], [["a.jpg"]])
    with pytest.raises(CatalogError, match="extra.csv, other.csv"):
        load_catalog(tmp_path)
    assert len(load_catalog(tmp_path / "other.csv")) == 1


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "catalog.parquet").write_bytes(b"PAR1")
    with pytest.raises(CatalogError, match=r"pip install enclip-qdrant\[parquet\]"):
        load_catalog(tmp_path)


def test_csv_column_typing(tmp_path: Path) -> None:
    for name in "abc":
        _jpeg(tmp_path / "images" / f"{name}.jpg")
    _write_csv(
        tmp_path / "captions.csv",
        ["id", "image", "name", "year", "price", "zip", "mixed", "flag", "note"],
        [
            ["007", "images/a.jpg", "A", "2011", "1.5", "01234", "3", "true", ""],
            ["8", "images/b.jpg", "B", "2012", "2", "12345", "x", "False", "NaN"],
            ["9", "images/c.jpg", "C", "", "nan", "99999", "4", "TRUE", " hi "],
        ],
    )
    cat = load_catalog(tmp_path)
    a, b, c = cat.products
    assert [p.id for p in cat.products] == ["007", "8", "9"]  # ids stay verbatim strings
    assert a.fields == {"year": 2011, "price": 1.5, "zip": "01234", "mixed": "3", "flag": True}
    assert b.fields == {"year": 2012, "price": 2.0, "zip": "12345", "mixed": "x", "flag": False}
    assert c.fields == {"zip": "99999", "mixed": "4", "flag": True, "note": "hi"}
    assert isinstance(b.fields["price"], float)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_content_sensitive(synth: Path) -> None:
    fp = load_catalog(synth).fingerprint()
    assert fp == load_catalog(synth).fingerprint()
    assert len(fp) == 64

    # Row order and folder location do not matter.
    moved = synth.parent / "moved"
    shutil.copytree(synth, moved)
    lines = (moved / "captions.csv").read_text(encoding="utf-8").splitlines()
    (moved / "captions.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n", encoding="utf-8")
    assert load_catalog(moved).fingerprint() == fp

    # New pixels change it.
    _jpeg(moved / "images/10003.jpg", (1, 2, 3))
    changed = load_catalog(moved).fingerprint()
    assert changed != fp

    # So does a caption.
    text = (moved / "captions.csv").read_text(encoding="utf-8").replace(",images/10004.jpg,", ",images/10004.jpg,X ")
    (moved / "captions.csv").write_text(text, encoding="utf-8")
    assert load_catalog(moved).fingerprint() not in (fp, changed)


# --------------------------------------------------------------------------- fashion-dev layout


def test_fashion_dev_like_layout_without_image_column(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images/15970.jpg")
    _jpeg(tmp_path / "images/0042.jpg", (0, 0, 0))
    _write_csv(
        tmp_path / "styles.csv",
        ["id", "gender", "articleType", "baseColour", "year", "productDisplayName"],
        [
            ["15970", "Men", "Shirts", "Navy Blue", "2011", "Turtle Check Men Navy Blue Shirt"],
            ["0042", "Women", "Tops", "Black", "2012", "Black top"],
            ["99999", "Men", "Shirts", "Red", "2013", "Missing photo"],
        ],
    )
    cat = load_catalog(tmp_path)
    assert cat.columns == Columns(image=None, text="productDisplayName", id="id")
    assert [p.id for p in cat.products] == ["15970", "0042"]
    assert cat.products[0].image_rel == "images/15970.jpg"
    assert cat.products[0].fields == {"gender": "Men", "articleType": "Shirts", "baseColour": "Navy Blue", "year": 2011}
    assert cat.skipped == [Skipped(3, "99999", "missing image")]


@pytest.mark.skipif(not FASHION_DEV.is_dir(), reason="fashion-dev dataset not present")
def test_real_fashion_dev() -> None:
    cat = load_catalog(FASHION_DEV)
    assert cat.columns == Columns(image="image", text="productDisplayName", id="id")
    assert len(cat.products) >= 10_000
    p = cat.products[0]
    assert p.id.isdigit() and p.image.is_file() and p.text
    assert isinstance(p.fields.get("year"), int)
    assert {"gender", "articleType", "baseColour"} <= set(p.fields)
