"""Training: resumable per member, refuses to mix runs, and fine-tunes from checkpoints we write ourselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from enclip_qdrant import TrainConfig, train
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.engine.torch.members import load_pretrained
from enclip_qdrant.errors import BundleError, CatalogError, EnclipError
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.training import jobs as member_job
from enclip_qdrant.training.presets import get_preset

QUICK = {"preset": "tiny", "epochs": 1, "batch_size": 32}


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    return load_catalog(make_catalog(tmp_path_factory.mktemp("c") / "c", n=120, seed=5))


def test_interrupted_training_resumes_without_redoing_members(small_catalog, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    real = member_job.train_member
    calls: list[str] = []

    def crash_on_third(member, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(member.name)
        return real(member, *args, **kwargs)

    monkeypatch.setattr(member_job, "train_member", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(small_catalog, out, TrainConfig(onnx=False, members=3, **QUICK))
    assert not (out / "manifest.json").exists()
    assert (out / "members" / "m1" / "report.json").is_file()
    kept = {n: (out / "members" / n / "open_clip_model.safetensors").stat().st_mtime_ns for n in ("m0", "m1")}

    calls.clear()
    monkeypatch.setattr(member_job, "train_member", lambda member, *a, **k: calls.append(member.name) or real(
        member, *a, **k))
    bundle = train(small_catalog, out, TrainConfig(onnx=False, members=3, **QUICK))
    assert calls == ["m2"]
    assert [m["name"] for m in bundle.manifest["members"]] == ["m0", "m1", "m2"]
    for n, mtime in kept.items():
        assert (out / "members" / n / "open_clip_model.safetensors").stat().st_mtime_ns == mtime


def test_other_settings_do_not_silently_mix_with_a_run(small_catalog, tmp_path):
    out = tmp_path / "b"
    train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK))
    with pytest.raises(BundleError, match="another catalog or settings"):
        train(small_catalog, out, TrainConfig(onnx=False, members=1, seed=4, **QUICK))
    again = train(small_catalog, out, TrainConfig(onnx=False, members=1, seed=4, **QUICK), overwrite=True)
    assert again.manifest["members"][0]["seed"] == 4000


def test_a_finished_run_rerun_is_kept_not_redone(small_catalog, tmp_path, monkeypatch):
    """Rerunning a finished `train` with the same catalog and settings rewrites nothing; other settings train."""
    out = tmp_path / "b"
    train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK))
    manifest = (out / "manifest.json").read_bytes()
    stamp = (out / "manifest.json").stat().st_mtime_ns
    calls: list[str] = []
    real = member_job.train_member
    monkeypatch.setattr(member_job, "train_member", lambda member, *a, **k: calls.append(member.name) or real(
        member, *a, **k))
    logs: list[str] = []

    class Log(NullProgress):
        def log(self, message: str) -> None:
            logs.append(message)

    again = train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK), progress=Log())
    assert calls == [] and (out / "manifest.json").stat().st_mtime_ns == stamp
    assert (out / "manifest.json").read_bytes() == manifest and again.manifest == json.loads(manifest)
    assert any("already trained on this catalog with these settings: kept" in m for m in logs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # and no b.lock beside it
    bigger = train(small_catalog, out, TrainConfig(onnx=False, members=2, **QUICK))  # members differ: trained
    assert calls == ["m1"] and len(bigger.manifest["members"]) == 2


def test_not_a_bundle_folder_is_never_deleted(small_catalog, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not an enclip bundle or training run"):
        train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK))
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no precious.lock left beside it
    images = Path(small_catalog.root) / "images"  # --out inside the catalog: refused, nothing written there
    before = sorted(p.name for p in images.parent.iterdir())
    with pytest.raises(BundleError):
        train(small_catalog, images, TrainConfig(onnx=False, members=1, **QUICK))
    assert sorted(p.name for p in images.parent.iterdir()) == before


def test_bootstrap_diversity_and_fixed_clusters(small_catalog, tmp_path):
    b = train(small_catalog, tmp_path / "b", TrainConfig(onnx=False, members=2, diversity="bootstrap", clusters=2,
                                                         **QUICK))
    assert b.clusters.k == 2 and b.manifest["training"]["config"]["diversity"] == "bootstrap"


def test_training_needs_captions(tmp_path):
    root = make_catalog(tmp_path / "few", n=10, seed=1)
    with pytest.raises(CatalogError, match="training needs captions"):
        train(load_catalog(root), tmp_path / "b", TrainConfig(onnx=False, members=1, **QUICK))


def test_fine_tunes_from_a_local_open_clip_folder(bundle, small_catalog, tmp_path):
    """`--pretrained FOLDER`: an open_clip local-dir checkpoint (here one of our own members)."""
    base = bundle.path / "members" / "m0"
    tuned = train(small_catalog, tmp_path / "ft", TrainConfig(onnx=False, members=1, pretrained=str(base), epochs=1,
                                                              batch_size=32))
    member = tuned.manifest["members"][0]
    assert member["pretrained"] == str(base) and tuned.manifest["preset"] is None
    assert tuned.manifest["training"]["config"]["lr"] == pytest.approx(1e-5)  # fine-tuning step size


def test_pretrained_safetensors_file_loads_and_pickles_are_refused(bundle, tmp_path):
    # a checkpoint for a built-in open_clip architecture, written by us
    import open_clip

    model = open_clip.create_model("RN50", pretrained=None)
    ckpt = tmp_path / "rn50.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    loaded, cfg, pre = load_pretrained("RN50", str(ckpt))
    assert cfg["embed_dim"] == 1024 and pre["size"] == 224
    torch.testing.assert_close(loaded.state_dict()["visual.conv1.weight"], model.state_dict()["visual.conv1.weight"])

    pickled = tmp_path / "model.pt"
    torch.save(model.state_dict(), pickled)
    with pytest.raises(EnclipError, match="refusing to unpickle"):
        load_pretrained("RN50", str(pickled))


def test_unreachable_pretrained_tag_is_a_clear_error():
    with pytest.raises(EnclipError, match="cannot load pretrained"):
        load_pretrained("RN50", "openai")


def test_plan_records_the_split(small_catalog, tmp_path):
    b = train(small_catalog, tmp_path / "b", TrainConfig(onnx=False, members=1, **QUICK))
    plan = json.loads((Path(b.path) / "training.json").read_text())
    assert len(plan["val_ids"]) == b.manifest["training"]["val"] >= 16


def test_index_trains_once_then_reuses_and_never_replaces_silently(small_catalog, tmp_path):
    from enclip_qdrant import Connection, index

    conn = Connection(home=tmp_path / "home")
    quick = TrainConfig(onnx=False, members=1, **QUICK)
    first = index(small_catalog, conn=conn, config=quick)
    assert first.added == len(small_catalog.products)
    manifest = conn.workspace.default_bundle_dir("c") / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    other = index(small_catalog, collection="elsewhere", conn=conn)  # same catalog: same bundle, no training
    assert other.bundle == first.bundle and manifest.stat().st_mtime_ns == stamp
    with pytest.raises(BundleError, match="trained with other settings"):
        index(small_catalog, conn=conn, config=TrainConfig(onnx=False, members=1, seed=7, **QUICK))
    assert manifest.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_mixed_towers_differ_per_member_and_are_recorded(small_catalog, tmp_path):
    """`--towers mixed`: members cycle through the preset's image towers (ModifiedResNet, ViT); each member's
    own config says which, the manifest records it, and both engines load and agree on every member."""
    import numpy as np
    from PIL import Image

    from enclip_qdrant.engine.load import load_bundle

    b = train(small_catalog, tmp_path / "b", TrainConfig(members=3, towers="mixed", clusters=2, **QUICK))
    towers = [m["tower"] for m in b.manifest["members"]]
    assert towers == ["rn", "vit8", "rn"] and b.manifest["training"]["config"]["towers"] == "mixed"
    cfgs = [json.loads((b.path / "members" / m / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
            for m in ("m0", "m1")]
    assert isinstance(cfgs[0]["layers"], list) and cfgs[1]["patch_size"] == 8  # a ResNet and a ViT
    onnx, torch_b = load_bundle(b.path, engine="onnx"), load_bundle(b.path, engine="torch")
    images = [Image.open(p.image) for p in small_catalog.products[:8]]
    for got, want in ((onnx.embed_images(images)[0], torch_b.embed_images(images)[0]),
                      (onnx.embed_texts(["red dress"])[0], torch_b.embed_texts(["red dress"])[0])):
        assert set(got) == {"m0", "m1", "m2"}
        for k in got:
            np.testing.assert_allclose(got[k], want[k], atol=1e-4)
    with pytest.raises(BundleError, match="not a preset|other settings|--overwrite"):
        train(small_catalog, tmp_path / "b", TrainConfig(onnx=False, members=3, clusters=2, **QUICK))  # towers "same"


def test_towers_flag_is_checked_before_any_work(small_catalog, tmp_path):
    with pytest.raises(BundleError, match="--towers must be same, mixed or resnet"):
        TrainConfig(towers="vgg")
    with pytest.raises(BundleError, match="--towers mixed applies to members trained from a preset"):
        TrainConfig(towers="mixed", pretrained="laion2b_s34b_b79k")
    # not given: the preset's choice, and a fine-tuned member keeps its checkpoint's own tower
    assert TrainConfig(pretrained="laion2b_s34b_b79k").resolved().towers == "same"
    assert TrainConfig(preset="tiny").resolved().towers == get_preset("tiny").default_towers


@pytest.mark.slow
def test_the_same_seed_trains_the_same_weights_with_any_number_of_loader_workers(small_catalog, tmp_path):
    """Every sample carries its own augmentation seed: a machine with more cores must not train another model."""
    shas = []
    for workers in (0, 2):
        bundle = train(small_catalog, tmp_path / f"w{workers}",
                       TrainConfig(onnx=False, members=1, loader_workers=workers, **QUICK))
        shas.append(bundle.manifest["members"][0]["sha256"])
    assert shas[0] == shas[1]
    assert not (tmp_path / "w0" / "image_cache.u8").exists()  # training data: it leaves the finished bundle


@pytest.mark.slow
def test_the_device_is_recorded_and_a_missing_gpu_is_refused_before_any_work(small_catalog, tmp_path):
    from enclip_qdrant.engine.load import load_bundle

    bundle = train(small_catalog, tmp_path / "b", TrainConfig(onnx=False, members=1, device="cpu", **QUICK))
    report = json.loads((tmp_path / "b" / "members" / "m0" / "report.json").read_text())
    assert report["device"] == "cpu" and bundle.manifest["training"]["config"]["device"] == "cpu"
    on_cpu = load_bundle(tmp_path / "b", engine="torch", device="cpu")
    assert on_cpu.ensemble.device == "cpu" and on_cpu.embed_texts(["red dress"])[1].shape[0] == 1
    if not torch.cuda.is_available():
        with pytest.raises(EnclipError, match="--device cuda") as e:
            train(small_catalog, tmp_path / "c", TrainConfig(onnx=False, members=1, device="cuda", **QUICK))
        assert "\n" not in str(e.value) and not (tmp_path / "c").exists()
        with pytest.raises(EnclipError, match="--device cuda"):
            load_bundle(tmp_path / "b", engine="torch", device="cuda")
