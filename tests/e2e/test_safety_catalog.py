"""Nothing lost, nothing trusted blindly: hostile catalog rows, huge photos, prune, same-name catalogs,
query input and Ctrl-C. Each case states the input, the one-line error or skip reason, and what the
store holds afterwards."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enclip_qdrant import api
from enclip_qdrant.catalog import checks as catalog_mod
from enclip_qdrant.catalog.images import MIN_BOUND, ImageRejected, load_image
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.collection.aliases import physical_name
from enclip_qdrant.collection.points import point_id
from enclip_qdrant.errors import BundleError, CatalogError, ConfirmationRequired, QueryError, redact_url
from enclip_qdrant.indexing.run import IndexInterrupted, index_catalog
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.search.options import SearchOptions, parse_clusters, parse_filters
from enclip_qdrant.search.query import load_query_image, search
from enclip_qdrant.store import EdgeStore, ServerOptions, ServerStore

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def own_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("own") / "shop", 48, seed=11)


@pytest.fixture(scope="module")
def bundle(own_shop: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 1-member, 1-epoch ensemble: these tests check what the store holds, not search quality."""
    from enclip_qdrant import TrainConfig, train

    return train(own_shop, out=tmp_path_factory.mktemp("b") / "tiny",
                 config=TrainConfig(onnx=False, members=1, preset="tiny", epochs=1, seed=0, clusters=2))


def _shop(root: Path, n: int = 12, seed: int = 5) -> Path:
    return make_catalog(root, n, seed=seed)


def _rows(cat: Path) -> list[dict[str, str]]:
    with (cat / "captions.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(cat: Path, rows: list[dict[str, str]]) -> None:
    with (cat / "captions.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _ids(store: EdgeStore, name: str) -> set[str]:
    return {p["product_id"] for _, p in store.scroll(name, ["product_id"])}


def _noise_jpeg(path: Path, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    arr = np.tile(tile, (size[1] // 64 + 1, size[0] // 64 + 1, 1))[: size[1], : size[0]]
    Image.fromarray(arr).save(path, "JPEG", quality=85)
    return path


# --------------------------------------------------------------------------- hostile rows: table-driven


def _fifo(cat: Path) -> str:
    target = cat / "images" / "10001.jpg"
    target.unlink()
    os.mkfifo(target)
    return "not a regular file"


def _link_dev_zero(cat: Path) -> str:
    target = cat / "images" / "10001.jpg"
    target.unlink()
    target.symlink_to("/dev/zero")
    return "path escapes catalog"


def _link_outside(cat: Path) -> str:
    outside = cat.parent / "secret.jpg"
    shutil.copy(cat / "images" / "10002.jpg", outside)
    target = cat / "images" / "10001.jpg"
    target.unlink()
    target.symlink_to(outside)
    return "path escapes catalog"


def _huge_file(cat: Path) -> str:
    _noise_jpeg(cat / "images" / "10001.jpg", (400, 400))  # > the 4 kB limit the case sets
    return "image too large"


def _bomb(cat: Path) -> str:
    Image.new("RGB", (200, 200), "red").save(cat / "images" / "10001.jpg")  # 40k px > 2 x 12k: Pillow error
    return "image too large"


def _bomb_warning(cat: Path) -> str:
    Image.new("RGB", (150, 100), "red").save(cat / "images" / "10001.jpg")  # 15k px: only a Pillow *warning*
    return "image too large"


HOSTILE: list[tuple[str, Callable[[Path], str]]] = [
    ("fifo named .jpg", _fifo),
    ("symlink to /dev/zero", _link_dev_zero),
    ("symlink to an image outside the catalog", _link_outside),
    ("file over the byte limit", _huge_file),
    ("decompression bomb", _bomb),
    ("decompression bomb warning", _bomb_warning),
]


@pytest.mark.parametrize("make", [m for _, m in HOSTILE], ids=[n for n, _ in HOSTILE])
def test_hostile_image_is_a_skipped_row_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      make: Callable[[Path], str]) -> None:
    cat = _shop(tmp_path / "shop")
    monkeypatch.setattr(catalog_mod, "MAX_IMAGE_BYTES", 4096)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12_000)  # 60x80 = 4800 px stays fine
    reason = make(cat)
    result: dict[str, object] = {}
    # A FIFO blocked open() forever: load in a thread so a regression fails instead of hanging the suite.
    t = threading.Thread(target=lambda: result.update(cat=load_catalog(cat)), daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the reader so the thread can finish
        with open(cat / "images" / "10001.jpg", "wb"):
            pass
        pytest.fail("load_catalog hung on the image")
    loaded = result["cat"]
    assert {s.ref: s.reason for s in loaded.skipped} == {"10001": reason}  # type: ignore[attr-defined]
    assert len(loaded) == 11  # type: ignore[arg-type]
    assert "10001" in loaded.row_ids  # type: ignore[attr-defined]  # the row is still in the table


def test_symlink_inside_the_catalog_and_a_symlinked_images_folder_still_work(tmp_path: Path) -> None:
    cat = _shop(tmp_path / "shop")
    (cat / "images" / "10001.jpg").unlink()
    (cat / "images" / "10001.jpg").symlink_to(cat / "images" / "10002.jpg")
    other_disk = tmp_path / "disk2"
    shutil.move(str(cat / "images"), other_disk)
    (cat / "images").symlink_to(other_disk)
    loaded = load_catalog(cat)
    assert len(loaded) == 12 and loaded.skipped == []


# --------------------------------------------------------------------------- bounded decoding


def test_large_photo_decodes_to_the_bound_and_small_images_are_untouched(tmp_path: Path) -> None:
    big = _noise_jpeg(tmp_path / "big.jpg", (4000, 3000))
    im = load_image(big, 448)
    assert max(im.size) == 448 and im.mode == "RGB"
    small = make_catalog(tmp_path / "cat", 2, seed=1) / "images" / "10001.jpg"
    with Image.open(small) as full:
        expected = np.asarray(full.convert("RGB"))
    assert np.array_equal(np.asarray(load_image(small, MIN_BOUND)), expected)


def test_query_image_bomb_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (200, 200), "red").save(tmp_path / "q.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12_000)
    with pytest.raises(QueryError, match="too large") as e:
        load_query_image(tmp_path / "q.png")
    assert "\n" not in str(e.value)
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(ImageRejected, match="not a regular file"):
        load_image(tmp_path / "fifo.jpg")


# --------------------------------------------------------------------------- column errors


@pytest.mark.parametrize(("header", "flags", "expect"), [
    ("id;image;title", {"image_col": "image"}, r"--image-col 'image'.*semicolon"),
    ("id\timage\ttitle", {}, r"--image-col.*tab"),
    ("sku,photo,caption", {"text_col": "nope"}, r"--text-col 'nope' is not a column"),
    ("sku,photo,caption", {"id_col": "nope"}, r"--id-col 'nope' is not a column"),
])
def test_missing_column_error_names_the_flag_and_the_delimiter(tmp_path: Path, header: str, flags: dict[str, str],
                                                               expect: str) -> None:
    (tmp_path / "captions.csv").write_text(header + "\n1,a.jpg,x\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=expect) as e:
        load_catalog(tmp_path / "captions.csv", **flags)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- query input parsing


@pytest.mark.parametrize(("value", "expected"), [
    ("auto", "auto"), ("all", "all"), ("3,7", [3, 7]), (" 2 ", [2]),
    (",", QueryError), ("", QueryError), ("3,", QueryError), ("a,b", QueryError), ("-1", QueryError),
])
def test_parse_clusters(value: str, expected: object) -> None:
    if expected is QueryError:
        with pytest.raises(QueryError, match="--clusters"):
            parse_clusters(value)
    else:
        assert parse_clusters(value) == expected


def test_parse_filters_keeps_values_as_text() -> None:
    assert parse_filters(["code=001", "year=2012", "code=002"]) == {"code": ["001", "002"], "year": ["2012"]}
    for bad in ("novalue", "=x"):
        with pytest.raises(QueryError, match="field=value"):
            parse_filters([bad])


def test_redact_url_hides_credentials() -> None:
    assert redact_url("http://user:secret@host:6333/x") == "http://***@host:6333/x"
    assert redact_url("user:secret@host:6333") == "***@host:6333"
    assert redact_url("http://host:6333") == "http://host:6333"
    assert redact_url(None) is None


def test_server_errors_never_print_the_password() -> None:
    store = ServerStore("http://user:secret@127.0.0.1:1", options=ServerOptions(retries=0, timeout=2))
    try:
        assert "secret" not in store.location
        with pytest.raises(Exception) as e:
            store.list_collections()
        assert "secret" not in str(e.value)
    finally:
        store.close()


# --------------------------------------------------------------------------- the store afterwards


@pytest.fixture
def edge(tmp_path: Path):
    s = EdgeStore(tmp_path / "home")
    yield s
    s.close()


def test_prune_keeps_rows_whose_image_fails_now_and_deletes_only_ids_gone(tmp_path: Path, edge, bundle) -> None:
    cat = _shop(tmp_path / "shop", n=12)
    index_catalog(load_catalog(cat), bundle, edge, "shop")
    before = _ids(edge, "shop")
    (cat / "images" / "10003.jpg").write_bytes(b"truncated")  # still in the table, unreadable right now
    rows = _rows(cat)
    _write_rows(cat, [r for r in rows if r["id"] != "10004"])  # gone from the table
    report = index_catalog(load_catalog(cat), bundle, edge, "shop", prune=True)
    assert report.deleted == 1
    assert _ids(edge, "shop") == before - {"10004"}
    assert edge.count("shop") == 11


def test_large_prune_needs_confirmation_and_changes_nothing_without_it(tmp_path: Path, edge, bundle) -> None:
    cat = _shop(tmp_path / "shop", n=12)
    index_catalog(load_catalog(cat), bundle, edge, "shop")
    before = _ids(edge, "shop")
    _write_rows(cat, _rows(cat)[:8])  # 4 of 12 gone: 33 %
    with pytest.raises(ConfirmationRequired, match=r"delete 4 of the 12 .*--yes") as e:
        index_catalog(load_catalog(cat), bundle, edge, "shop", prune=True)
    assert "\n" not in str(e.value)
    assert _ids(edge, "shop") == before
    report = index_catalog(load_catalog(cat), bundle, edge, "shop", prune=True, confirm=True)
    assert report.deleted == 4 and edge.count("shop") == 8


def test_same_name_catalog_at_another_path_is_refused(tmp_path: Path, bundle) -> None:
    a, b = _shop(tmp_path / "a" / "shop", n=12), _shop(tmp_path / "b" / "shop", n=8, seed=9)
    conn = api.Connection(home=tmp_path / "home")
    api.index(a, bundle=bundle, conn=conn)
    with conn.open() as store:
        before = _ids(store, "shop")
    with pytest.raises(BundleError, match="--collection") as e:
        api.index(b, bundle=bundle, conn=conn, prune=True, confirm=True)
    assert "\n" not in str(e.value) and str(a.resolve()) in str(e.value)
    with conn.open() as store:
        assert _ids(store, "shop") == before
    # the same folder with rows added still indexes incrementally
    shutil.copy(a / "images" / "10001.jpg", a / "images" / "20001.jpg")
    _write_rows(a, [*_rows(a), {**_rows(a)[0], "id": "20001", "image": "images/20001.jpg"}])
    assert api.index(a, bundle=bundle, conn=conn).added == 1
    # an explicit --collection is the user's choice
    assert api.index(b, bundle=bundle, conn=conn, collection="shop-b").added == 8


def test_default_bundle_of_another_same_name_catalog_is_refused(tmp_path: Path, bundle, own_shop: Path) -> None:
    conn = api.Connection(home=tmp_path / "home")
    default = conn.workspace.default_bundle_dir("shop")
    shutil.copytree(bundle.path, default)  # trained on own_shop, also a folder named shop
    other = _shop(tmp_path / "elsewhere" / "shop", n=8)
    with pytest.raises(BundleError, match="--bundle") as e:
        api.index(other, conn=conn)
    assert "\n" not in str(e.value)
    with conn.open() as store:
        assert not store.exists("shop")
    # its own catalog (same root) still reuses it
    assert api._own_bundle(load_catalog(own_shop), default, None, NullProgress()).fingerprint == bundle.fingerprint


def test_ctrl_c_keeps_written_batches_and_a_rerun_resumes(tmp_path: Path, edge, bundle,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cat = load_catalog(_shop(tmp_path / "shop", n=12))
    real, calls = bundle.embed_images, []

    def flaky(images):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(images)

    monkeypatch.setattr(bundle, "embed_images", flaky)
    with pytest.raises(IndexInterrupted, match=r"4 of 12 .*kept.*again to resume"):
        index_catalog(cat, bundle, edge, "shop", batch_size=4)
    # a first run fills the physical collection; the name `shop` points at it only once it is complete
    assert edge.count(physical_name("shop", bundle)) == 4 and not edge.exists("shop")
    monkeypatch.setattr(bundle, "embed_images", real)
    report = index_catalog(cat, bundle, edge, "shop", batch_size=4)
    assert (report.added, report.unchanged) == (8, 4)
    assert _ids(edge, "shop") == {p.id for p in cat.products}


def test_cli_ctrl_c_exits_130_saying_what_was_kept(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cli import app as cli_app

    def interrupted() -> None:
        raise IndexInterrupted("interrupted: 4 of 12 images embedded in this run were written to 'shop'")

    monkeypatch.setattr(cli_app, "app", interrupted)
    with pytest.raises(SystemExit) as e:
        cli_app.main()
    assert e.value.code == 130
    assert "4 of 12" in capsys.readouterr().err


def test_filters_keep_the_stored_type(tmp_path: Path, edge, bundle) -> None:
    cat = _shop(tmp_path / "shop", n=12)
    rows = _rows(cat)
    for i, r in enumerate(rows):
        r |= {"code": f"00{i % 3}", "year": str(2010 + i % 3), "price": f"{i}.5"}
    _write_rows(cat, rows)
    loaded = load_catalog(cat)
    index_catalog(loaded, bundle, edge, "shop")
    by_code = search(bundle, edge, "shop", "dress", filters=parse_filters(["code=001"]),
                     options=SearchOptions(top_k=12, clusters="all"))
    assert by_code.results and {r.payload["code"] for r in by_code.results} == {"001"}
    by_year = search(bundle, edge, "shop", "dress", filters=parse_filters(["year=2012"]),
                     options=SearchOptions(top_k=12, clusters="all"))
    assert by_year.results and {r.payload["year"] for r in by_year.results} == {2012}
    with pytest.raises(QueryError, match="decimal") as e:
        search(bundle, edge, "shop", "dress", filters=parse_filters(["price=1.5"]))
    assert "\n" not in str(e.value)
    with pytest.raises(QueryError, match="decimal"):
        search(bundle, edge, "shop", "dress", filters={"x": [1.5]})
    with pytest.raises(QueryError, match="whole numbers"):
        search(bundle, edge, "shop", "dress", filters=parse_filters(["year=soon"]))
    for too_big in (parse_filters(["year=99999999999999999999999"]), {"year": [-2**63 - 1]}, {"year": [2**63]}):
        with pytest.raises(QueryError, match="out of range") as e:  # Qdrant's integers are 64-bit
            search(bundle, edge, "shop", "dress", filters=too_big)
        assert "\n" not in str(e.value)
    assert not search(bundle, edge, "shop", "dress", filters={"year": [2**63 - 1]}).results  # the edge is fine
    with pytest.raises(QueryError, match="--clusters"):
        search(bundle, edge, "shop", "dress", options=SearchOptions(clusters=","))  # type: ignore[arg-type]
    assert edge.count("shop") == 12 and point_id("10001") in {pid for pid, _ in edge.scroll("shop", [])}


def test_training_decodes_to_the_bound_too(tmp_path: Path) -> None:
    from enclip_qdrant.catalog.images import read_image

    big = _noise_jpeg(tmp_path / "big.jpg", (4000, 3000))
    im, digest = read_image(big, 256)
    assert max(im.size) <= 256 and digest == hashlib.sha256(big.read_bytes()).hexdigest()
