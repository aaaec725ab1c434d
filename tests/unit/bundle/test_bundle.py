"""A bundle is self-describing, loads without unpickling, and refuses to load when tampered with."""

from __future__ import annotations

import json
import shutil

import numpy as np
import open_clip
import pytest
from lock_holder import held_elsewhere
from PIL import Image

from enclip_qdrant.engine.load import load_bundle
from enclip_qdrant.errors import BundleError


def test_manifest_describes_the_ensemble(bundle, catalog):
    m = bundle.manifest
    assert m["format"] == "enclip-bundle" and m["format_version"] == 3
    assert m["preset"] == "tiny" and len(m["members"]) == 3
    assert {x["vector"]: x["dim"] for x in m["members"]} == bundle.vectors == {"m0": 64, "m1": 64, "m2": 64}
    assert len({x["seed"] for x in m["members"]}) == 3  # diversity by seed
    assert m["clusters"]["k"] == bundle.clusters.k and sum(m["clusters"]["sizes"]) == len(catalog.products)
    assert m["training"]["catalog_fingerprint"] == catalog.fingerprint()
    for key in ("r@1", "r@5", "r@10", "mrr"):
        assert 0 <= m["validation"]["ensemble"][key] <= 1
        assert all(0 <= x["val"][key] <= 1 for x in m["members"])


def test_round_trip_gives_identical_embeddings(bundle, catalog):
    again = load_bundle(bundle.path)
    assert again.fingerprint == bundle.fingerprint
    images = [Image.open(p.image) for p in catalog.products[:8]]
    a, ja = bundle.embed_images(images)
    b, jb = again.embed_images(images)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5)
    np.testing.assert_allclose(ja, jb, atol=1e-5)
    _, ta = bundle.embed_texts(["red dress"])
    _, tb = again.embed_texts(["red dress"])
    np.testing.assert_allclose(bundle.clusters.text_router.probs(ta), again.clusters.text_router.probs(tb), atol=1e-5)
    np.testing.assert_allclose(bundle.clusters.centroids, again.clusters.centroids)
    # the routers' calibration travels with the bundle and is recorded in the manifest
    t = bundle.manifest["clusters"]["router_temperature"]
    assert again.clusters.text_router.temperature == t["text"] and again.clusters.image_router.temperature == t["image"]


def test_bundle_holds_no_pickles_and_members_are_open_clip_folders(bundle):
    suffixes = {p.suffix for p in bundle.path.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors", ".onnx"}, suffixes  # ONNX files are protobuf graphs, not pickles
    for f in bundle.path.rglob("*.onnx"):
        assert not f.read_bytes()[:2].startswith(b"\x80"), f  # no pickle protocol header
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{bundle.path / 'members' / 'm0'}")
    assert isinstance(model, open_clip.CLIP)


@pytest.fixture
def copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle.path, dst)
    return dst


def test_tampered_weights_are_refused(copy):
    w = copy / "members" / "m1" / "open_clip_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="m1 weights do not match"):
        load_bundle(copy, engine="torch")
    if load_bundle(copy, engine="auto").engine == "onnx":  # the ONNX engine never reads the torch weights: its
        assert copy.joinpath("members", "m1", "image.onnx").is_file()  # own files are checked (test_onnx.py)


def test_missing_or_foreign_manifest_is_a_clear_error(copy, tmp_path):
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="resume"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not an enclip bundle"):
        load_bundle(tmp_path / "nowhere")


def test_a_bundle_still_being_trained_says_so(copy):
    """A run's folder without a manifest: while `train` holds it, "wait"; once it is gone, "run again"."""
    (copy / "manifest.json").unlink()
    writing = "`enclip-qdrant train` is writing it now; wait for it to finish"
    with held_elsewhere(copy), pytest.raises(BundleError, match=writing):
        load_bundle(copy)
    with pytest.raises(BundleError, match="training did not finish: run `enclip-qdrant train` again to resume"):
        load_bundle(copy)


def test_newer_format_is_refused(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer enclip-qdrant"):
        load_bundle(copy)


def test_missing_member_is_a_clear_error(copy):
    shutil.rmtree(copy / "members" / "m2")
    with pytest.raises(BundleError, match="m2"):
        load_bundle(copy, verify=False)
