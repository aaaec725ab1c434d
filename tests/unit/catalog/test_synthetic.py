"""The synthetic catalog is the ground truth other tests rely on, so its labels must be right."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from enclip_qdrant.catalog.synthetic import ARTICLES, COLOURS, PATTERNS, main, make_catalog


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "captions.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_deterministic_given_seed(tmp_path: Path) -> None:
    a = make_catalog(tmp_path / "a", 20, seed=3)
    b = make_catalog(tmp_path / "b", 20, seed=3)
    c = make_catalog(tmp_path / "c", 20, seed=4)
    assert (a / "captions.csv").read_bytes() == (b / "captions.csv").read_bytes()
    for row in _rows(a):
        assert (a / row["image"]).read_bytes() == (b / row["image"]).read_bytes()
    assert (a / "captions.csv").read_bytes() != (c / "captions.csv").read_bytes()


def test_product_i_does_not_depend_on_n(tmp_path: Path) -> None:
    small = make_catalog(tmp_path / "s", 5)
    big = make_catalog(tmp_path / "b", 12)
    assert _rows(small) == _rows(big)[:5]
    assert (small / "images/10005.jpg").read_bytes() == (big / "images/10005.jpg").read_bytes()


def test_images_are_small_jpegs(tmp_path: Path) -> None:
    root = make_catalog(tmp_path, 30)
    rows = _rows(root)
    assert len(rows) == 30
    for row in rows:
        assert row["image"] == f"images/{row['id']}.jpg"
        with Image.open(root / row["image"]) as im:
            assert im.format == "JPEG"
            assert im.size == (60, 80)
            assert im.mode == "RGB"


def test_custom_size(tmp_path: Path) -> None:
    root = make_catalog(tmp_path, 3, size=(32, 48))
    with Image.open(root / "images/10001.jpg") as im:
        assert im.size == (32, 48)


def test_columns_and_attributes_match_captions(tmp_path: Path) -> None:
    root = make_catalog(tmp_path, 120, seed=1)
    rows = _rows(root)
    assert list(rows[0]) == ["id", "image", "title", "articleType", "baseColour", "pattern", "gender"]
    by_name = {a.name: a for a in ARTICLES.values()}
    for row in rows:
        title = row["title"].lower()
        article = by_name[row["articleType"]]
        assert row["baseColour"].lower() in title
        assert any(noun.lower() in title for noun in article.nouns), row
        assert row["gender"] in article.genders
        words = [w for w in PATTERNS[row["pattern"].lower()] if w]
        if "" not in PATTERNS[row["pattern"].lower()]:
            assert any(w.lower() in title for w in words), row
    # The captions vary in shape, not just in content.
    assert len({r["title"].split()[0] in ("Men", "Women", "Unisex") for r in rows}) == 2


def test_every_combination_before_repeats(tmp_path: Path) -> None:
    arts, cols, pats = ["dress", "cap"], ["red", "blue", "black"], ["plain", "striped"]
    root = make_catalog(tmp_path, 12, articles=arts, colours=cols, patterns=pats)
    combos = {(r["articleType"], r["baseColour"], r["pattern"]) for r in _rows(root)}
    assert len(combos) == 12


def test_colours_are_recognisable_after_degradation(tmp_path: Path) -> None:
    """The centre of a plain T-shirt must still be nearest its own named colour after JPEG damage."""
    root = make_catalog(tmp_path, 3 * len(COLOURS), articles=["tshirt"], patterns=["plain"])
    for row in _rows(root):
        with Image.open(root / row["image"]) as im:
            patch = im.convert("RGB").crop((25, 35, 35, 50)).resize((1, 1), Image.Resampling.BOX)
            pixel = patch.getpixel((0, 0))
        nearest = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], pixel, strict=True)))
        assert nearest == row["baseColour"].lower(), (row, pixel)


def test_jsonl_format(tmp_path: Path) -> None:
    root = make_catalog(tmp_path, 6, fmt="jsonl")
    assert not (root / "captions.csv").exists()
    lines = (root / "catalog.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 6
    assert rows[0]["id"] == "10001" and rows[0]["image"] == "images/10001.jpg"
    assert (root / rows[0]["image"]).is_file()


def test_subsets_and_bad_names(tmp_path: Path) -> None:
    root = make_catalog(tmp_path, 8, articles=["Dress"], colours=["pink"])
    assert {(r["articleType"], r["baseColour"]) for r in _rows(root)} == {("Dress", "Pink")}
    with pytest.raises(ValueError, match="unknown articles: jumper"):
        make_catalog(tmp_path / "x", 2, articles=["jumper"])
    with pytest.raises(ValueError, match="fmt"):
        make_catalog(tmp_path / "y", 2, fmt="xml")


def test_cli_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "demo"), "--n", "4", "--seed", "2"]) == 0
    assert "wrote 4 products" in capsys.readouterr().out
    assert len(_rows(tmp_path / "demo")) == 4
