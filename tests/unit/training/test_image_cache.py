"""The training image cache: decoded once, resumed after a crash, checked against the catalog's content hashes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from enclip_qdrant.catalog.images import load_image
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.errors import CatalogError
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.training import image_cache
from enclip_qdrant.training.image_cache import CACHE_DATA, CACHE_INDEX, build_cache

BOUND = 48  # below the synthetic photos' 60x80, so the cache really shrinks them


@pytest.fixture
def products(tmp_path):
    return load_catalog(make_catalog(tmp_path / "c", n=40, seed=2)).products


@pytest.fixture
def decodes(monkeypatch):
    seen: list[str] = []
    real = image_cache._decode

    def counting(product, bound):
        seen.append(product.id)
        return real(product, bound)

    monkeypatch.setattr(image_cache, "_decode", counting)
    return seen


def _same_as_a_fresh_decode(cache, products) -> None:
    for i, p in enumerate(products):
        assert np.array_equal(cache.array(i), np.asarray(load_image(p.image, BOUND))), p.id


def test_pixels_are_the_bounded_decode_and_a_rerun_decodes_nothing(products, tmp_path, decodes):
    cache = build_cache(tmp_path / "run", products, BOUND, NullProgress())
    assert len(decodes) == len({p.content_hash for p in products})
    assert max(cache.shapes.max(axis=0)) <= BOUND
    _same_as_a_fresh_decode(cache, products)
    assert isinstance(cache[0], Image.Image) and len(cache[2:5]) == 3
    decodes.clear()
    again = build_cache(tmp_path / "run", products, BOUND, NullProgress())
    assert decodes == []
    _same_as_a_fresh_decode(again, products)


def test_a_crash_mid_decoding_keeps_what_was_committed_and_the_rerun_finishes(products, tmp_path, decodes, monkeypatch):
    monkeypatch.setattr(image_cache, "COMMIT_EVERY", 8)
    monkeypatch.setattr(image_cache, "_WINDOW", 4)
    real = image_cache._decode

    def crash(product, bound):
        if len(decodes) >= 21:
            raise KeyboardInterrupt
        return real(product, bound)

    monkeypatch.setattr(image_cache, "_decode", crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "run", products, BOUND, NullProgress())
    with open(tmp_path / "run" / CACHE_DATA, "ab") as f:  # a torn append after the last commit
        f.write(b"\x07" * 999)
    monkeypatch.setattr(image_cache, "_decode", real)  # the fixture's counting decoder
    decodes.clear()
    cache = build_cache(tmp_path / "run", products, BOUND, NullProgress())
    assert 0 < len(decodes) <= len({p.content_hash for p in products}) - 16  # two commits survived the crash
    _same_as_a_fresh_decode(cache, products)


def test_a_changed_image_is_decoded_again_and_the_others_are_kept(products, tmp_path, decodes):
    build_cache(tmp_path / "run", products, BOUND, NullProgress())
    target = products[3]
    Image.new("RGB", (60, 80), (250, 10, 10)).save(target.image)
    changed = load_catalog(tmp_path / "c").products
    decodes.clear()
    cache = build_cache(tmp_path / "run", changed, BOUND, NullProgress())
    assert decodes == [target.id]
    _same_as_a_fresh_decode(cache, changed)


def test_an_image_that_changed_since_the_catalog_was_read_is_one_clear_line(products, tmp_path):
    Image.new("RGB", (60, 80), (0, 0, 250)).save(products[5].image)
    with pytest.raises(CatalogError, match=f"product {products[5].id} .* changed since the catalog was read") as e:
        build_cache(tmp_path / "run", products, BOUND, NullProgress())
    assert "\n" not in str(e.value)


def test_a_torn_index_or_another_bound_starts_afresh(products, tmp_path, decodes):
    build_cache(tmp_path / "run", products, BOUND, NullProgress())
    (tmp_path / "run" / CACHE_INDEX).write_bytes(b"{not an index")
    decodes.clear()
    _same_as_a_fresh_decode(build_cache(tmp_path / "run", products, BOUND, NullProgress()), products)
    assert len(decodes) == len(products)
    decodes.clear()
    cache = build_cache(tmp_path / "run", products, 32, NullProgress())
    assert len(decodes) == len(products) and max(cache.shapes.max(axis=0)) <= 32


def test_products_with_the_same_image_share_one_entry(products, tmp_path, decodes):
    twins = [*products, dataclasses.replace(products[0], id="twin")]
    cache = build_cache(tmp_path / "run", twins, BOUND, NullProgress())
    assert decodes.count("twin") == 0 and cache.offsets[-1] == cache.offsets[0]


def test_reading_a_whole_epoch_does_not_keep_the_file_mapped(products, tmp_path, monkeypatch):
    cache = build_cache(tmp_path / "run", products, BOUND, NullProgress())
    monkeypatch.setattr(image_cache, "REMAP_BYTES", 3 * BOUND * BOUND * 3)
    real, maps = np.memmap, []
    monkeypatch.setattr(image_cache.np, "memmap", lambda *a, **k: maps.append(1) or real(*a, **k))
    for i in range(len(cache)):
        cache.array(i)
    assert len(maps) >= len(products) // 6  # the mapping is dropped and made afresh as reading goes on
