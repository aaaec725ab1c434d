"""The torch-free query inputs (preprocess.py, tokenize.py) equal open_clip's / transformers' exactly.

The modules may not import torch, open_clip, torchvision or transformers; these tests do, to compare."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from enclip_qdrant.catalog import synthetic
from enclip_qdrant.engine.preprocess import preprocess_images, preprocess_supported
from enclip_qdrant.engine.text_encoders import MINILM
from enclip_qdrant.engine.tokenizers import ClipTokenizer, HFTextTokenizer, write_clip_tokenizer
from enclip_qdrant.engine.torch import members
from enclip_qdrant.engine.torch.text_encoder import _minilm_folder
from enclip_qdrant.training.presets import OPENAI_MEAN, OPENAI_STD, PRESETS

# --------------------------------------------------------------------------- texts


def _titles(n: int = 60) -> list[str]:
    rng = random.Random(7)
    out = []
    for _ in range(n):
        key = rng.choice(sorted(synthetic.ARTICLES))
        art = synthetic.ARTICLES[key]
        out.append(synthetic.caption(key, rng.choice(sorted(synthetic.COLOURS)), rng.choice(sorted(synthetic.PATTERNS)),
                                     rng.choice(art.genders), rng))
    return out


REAL_TITLES = [
    "Nike Men Blue T20 Indian Cricket Jersey", "Puma Women Black Running Shoes", "Titan Women Silver Watch",
    "Fabindia Men Cotton Kurta (Size: XL)", "Levi's 511 Slim-Fit Jeans", "ADIDAS Originals Superstar W/ Gold Toe",
    "Men's Tee - 100% Cotton, Pack of 3", "Jockey 2-in-1 Shorts #SP26", "Women's A-line Dress @ 50% OFF!!",
    "Ray-Ban RB3025 Aviator 58mm", "U.S. Polo Assn. Men Navy Polo T-shirt", "H&M Kids' Denim Dungarees",
]
ODD = [
    "", " ", "     ", "\t\n  \r\n", "red dress", "RED DRESS", "Red\tdress\nwith   pockets",
    "👗🔥 summer dress 😍😍", "🇮🇳 flag tee", "लाल रंग की साड़ी", "红色连衣裙 女款", "فستان أحمر طويل", "Красное платье",
    "Ελληνικό φόρεμα", "日本のTシャツ", "한국 패션 원피스",
    "café crème naïve Zoë São Paulo", "e\u0301 (combining accent) vs é", "ǅungla İstanbul Straße ﬁne",
    "Tom &amp; Jerry &lt;tee&gt; &amp;amp; &#39;quoted&#39; &nbsp;x",
    "donâ€™t â€œquotedâ€\x9d Ã©tÃ©", "\u200bzero\u200dwidth\ufeff",
    "12,345.67 $99.99 €5 ₹1,299 50% 3/4 1e10 --- ... !!! ???", "it's can't we'll I'D they've 'ſ 'S",
    "a <start_of_text> b<end_of_text>--<end_of_text> <START_OF_TEXT>", "[CLS] x [SEP] [PAD] [MASK] [UNK]",
    "\x00\x07 control \ufffd chars", "word " * 500, "supercalifragilisticexpialidocious" * 20,
    " ".join(f"item{i}" for i in range(500)),
]
TEXTS = _titles() + REAL_TITLES + ODD
# the presets' context lengths (tiny 16, small 24) and open_clip's default
CONTEXT_LENGTHS = sorted({77, *(p.model_cfg["text_cfg"]["context_length"] for p in PRESETS.values())})


@pytest.fixture(scope="module")
def clip_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip_tok") / "tokenizer.json"
    write_clip_tokenizer(path)
    return path


@pytest.mark.parametrize("ctx", CONTEXT_LENGTHS)
def test_clip_token_ids_equal_open_clip(clip_json: Path, ctx: int) -> None:
    ref = open_clip.SimpleTokenizer(context_length=ctx)(TEXTS).numpy()
    got = ClipTokenizer(clip_json, ctx)(TEXTS)
    assert got.dtype == np.int64 and got.shape == ref.shape == (len(TEXTS), ctx)
    bad = [t[:40] for t, r, g in zip(TEXTS, ref, got, strict=True) if not np.array_equal(r, g)]
    assert not bad, f"{len(bad)} of {len(TEXTS)} texts differ: {bad}"
    # truncated rows end with EOT (open_clip's rule), and truncation did happen at every length
    eot = ClipTokenizer(clip_json, ctx).eot_token_id
    full = got[:, -1] != 0
    assert full.any() and (got[full, -1] == eot).all()


def test_clip_tokenizer_single_text_and_empty_batch(clip_json: Path) -> None:
    tok = ClipTokenizer(clip_json, 16)
    ref = open_clip.SimpleTokenizer(context_length=16)
    for text in ("Women Red Striped Dress", "", "word " * 100):
        assert np.array_equal(tok(text), ref(text).numpy())
        assert np.array_equal(tok([text]), ref([text]).numpy())
    assert tok([]).shape == (0, 16) and tok([]).dtype == np.int64
    assert tok.encode("red dress") == ref.encode("red dress")
    assert (tok.sot_token_id, tok.eot_token_id) == (ref.sot_token_id, ref.eot_token_id)


@pytest.fixture(scope="module")
def minilm() -> tuple[Path, object]:
    folder = _minilm_folder()
    return folder, AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


@pytest.mark.parametrize("max_length", [MINILM.max_length, 8])
def test_hf_token_ids_equal_transformers(minilm: tuple[Path, object], max_length: int) -> None:
    folder, ref_tok = minilm
    tok = HFTextTokenizer(folder / "tokenizer.json", max_length)
    batches = [TEXTS, *([t] for t in TEXTS), TEXTS[:3], ["a", "a b c d e f g h i j k l m n o p"]]
    for batch in batches:
        ref = ref_tok(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        got = tok(batch)
        assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
        for key, value in got.items():
            assert value.dtype == np.int64
            assert value.shape == ref[key].shape and np.array_equal(value, ref[key]), (key, batch[:2])


# --------------------------------------------------------------------------- pixels


def _noise(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w * h, dtype=np.float64).reshape(h, w)
    return np.clip(rng.normal(0, 60, (h, w, 3)) + ramp[..., None], 0, 255).astype(np.uint8)


def _images() -> dict[str, Image.Image]:
    rgb = Image.fromarray(_noise(64, 48, 0))
    jpeg = io.BytesIO()
    Image.fromarray(_noise(60, 80, 1)).save(jpeg, format="JPEG", quality=85)
    p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.info["transparency"] = 3
    rgba = Image.fromarray(np.dstack([_noise(50, 70, 2), _noise(50, 70, 3)[..., :1]]))
    i16 = Image.fromarray(_noise(40, 30, 4)[..., 0].astype(np.uint16) * 257)
    assert (rgba.mode, i16.mode) == ("RGBA", "I;16")
    return {
        "L": rgb.convert("L"), "CMYK": rgb.convert("CMYK"), "RGBA": rgba, "P+transparency": p, "1": rgb.convert("1"),
        "LA": rgba.convert("LA"), "I;16": i16, "I": rgb.convert("L").convert("I"), "F": rgb.convert("L").convert("F"),
        "1x1": Image.new("RGB", (1, 1), (200, 10, 30)), "3x500": Image.fromarray(_noise(3, 500, 5)),
        "500x3": Image.fromarray(_noise(500, 3, 6)), "60x80 JPEG": Image.open(jpeg),
        "4000x3000": Image.fromarray(np.tile(_noise(400, 300, 7), (10, 10, 1))),
        "33x31": Image.fromarray(_noise(33, 31, 8)),
        "64x64": Image.fromarray(_noise(64, 64, 9)),
    }


def _cfgs() -> dict[str, dict]:
    out = {}
    for name, preset in PRESETS.items():
        cfg = preset.preprocess_cfg()
        out[f"{name}"] = cfg
        for mode in ("shortest", "longest"):
            out[f"{name}-{mode}"] = dict(cfg, resize_mode=mode)
    openai = {"size": 224, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}
    for mode in ("shortest", "longest", "squash"):
        out[f"224-openai-{mode}"] = dict(openai, resize_mode=mode)
        out[f"[40,24]-bilinear-{mode}"] = {"size": [40, 24], "mean": [0.5], "std": [0.5], "resize_mode": mode,
                                           "interpolation": "bilinear"}
    return out


IMAGES = _images()
CFGS = _cfgs()


@pytest.mark.parametrize("cfg_name", sorted(CFGS))
def test_pixels_equal_open_clip(cfg_name: str) -> None:
    cfg = CFGS[cfg_name]
    assert preprocess_supported(cfg)
    transform = members.eval_transform(cfg)
    ok = []
    for name, im in IMAGES.items():
        try:
            ref = transform(im.convert("RGB")).numpy()
        except ValueError as e:  # PIL refuses a 0-pixel side ("longest" on 3x500 at small sizes): so must we
            with pytest.raises(ValueError, match=str(e)):
                preprocess_images([im], cfg)
            continue
        got = preprocess_images([im], cfg)
        assert got.dtype == np.float32 and got.shape == (1, *ref.shape) and got.flags.c_contiguous
        diff = float(np.abs(got[0] - ref).max())
        assert diff <= 1e-6, (name, diff)
        assert np.array_equal(got[0], ref), (name, int((got[0] != ref).sum()))  # bit-identical, in fact
        if max(im.size) < 1000:
            ok.append(im)
    # a batch, as Ensemble.encode_images stacks it (the small images: the big ones were just checked one by one)
    ref = torch.stack([transform(im.convert("RGB")) for im in ok]).numpy()
    assert np.array_equal(preprocess_images(ok, cfg), ref)


def test_unsupported_settings_are_named() -> None:
    base = PRESETS["tiny"].preprocess_cfg()
    cases = {"resize_mode": dict(base, resize_mode="crop"), "interpolation": dict(base, interpolation="nearest"),
             "size": dict(base, size=[1, 2, 3]), "std": dict(base, std=[0.5, 0.0, 0.5]),
             "mean": dict(base, mean=[0.1, 0.2]), "'size'": {k: v for k, v in base.items() if k != "size"}}
    for word, cfg in cases.items():
        assert not preprocess_supported(cfg)
        with pytest.raises(ValueError, match=word):
            preprocess_images([IMAGES["1x1"]], cfg)
    assert preprocess_images([], base).shape == (0, 3, 32, 32)


def test_modules_import_no_torch_stack() -> None:
    code = ("import sys, enclip_qdrant.engine.preprocess, enclip_qdrant.engine.tokenizers\n"
            "loaded = [m for m in ('torch', 'open_clip', 'torchvision', 'transformers') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
