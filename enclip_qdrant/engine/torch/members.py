"""Ensemble members: open_clip CLIP models, their tokenizers and preprocessing.

A member on disk is an open_clip `local-dir:` folder (`open_clip_config.json` +
`open_clip_model.safetensors`), so `open_clip.create_model_and_transforms("local-dir:...")` reads it
too. We load the weights ourselves with safetensors so that nothing is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save as save_tensors

from enclip_qdrant.bundle.names import CONFIG_NAME, WEIGHTS_NAME
from enclip_qdrant.bundle.vectors import concat_rows
from enclip_qdrant.engine.torch.device import module_device
from enclip_qdrant.errors import BundleError, EnclipError
from enclip_qdrant.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    json_copy,
    read_json,
)


def eval_transform(preprocess_cfg: Mapping[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    return open_clip.image_transform(
        preprocess_cfg["size"],
        is_train=False,
        mean=tuple(preprocess_cfg["mean"]),
        std=tuple(preprocess_cfg["std"]),
        resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
    )


# open_clip's own HFTokenizer options; anything else would reach transformers' from_pretrained, where
# `trust_remote_code`, `revision`, `cache_dir`... could fetch or run code a bundle must never make us run.
SAFE_TOKENIZER_KWARGS = frozenset({"clean", "strip_sep_token", "language"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "merges.txt", "special_tokens_map.json", "added_tokens.json")
HF_TEXT_CONFIG = "config.json"  # a Hugging Face text tower's config, saved beside the weights


def _tokenizer_kwargs(text_cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    kwargs = text_cfg.get("tokenizer_kwargs", {}) or {}
    if not isinstance(kwargs, Mapping):
        raise BundleError(f"{where}: tokenizer_kwargs must be an object")
    refused = sorted(set(kwargs) - SAFE_TOKENIZER_KWARGS)
    if refused:
        raise BundleError(f"{where}: tokenizer setting {', '.join(map(repr, refused))} is refused (only "
                          f"{', '.join(sorted(SAFE_TOKENIZER_KWARGS))}): it could fetch or run code")
    return dict(kwargs)


def _tokenizer(model_cfg: Mapping[str, Any], folder: Path | None = None) -> Callable[[Sequence[str]], torch.Tensor]:
    """The member's tokenizer. From a member folder (a bundle), a Hugging Face tokenizer is read from the
    files saved in that folder, exactly as open_clip's `local-dir:` does: never from the hub by name."""
    text_cfg = model_cfg["text_cfg"]
    ctx = text_cfg.get("context_length", 77)
    where = f"member {folder}" if folder is not None else "tokenizer"
    kwargs = _tokenizer_kwargs(text_cfg, where)
    if not text_cfg.get("hf_tokenizer_name"):
        return open_clip.SimpleTokenizer(context_length=ctx)
    from open_clip.tokenizer import HFTokenizer  # open_clip 3 no longer exports it at the top level

    source = str(text_cfg["hf_tokenizer_name"])
    if folder is not None:
        _check_local_hf_files(folder, TOKENIZER_FILES, "a Hugging Face tokenizer")
        source, kwargs = str(folder), kwargs | {"local_files_only": True}
    return HFTokenizer(source, context_length=ctx, tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)


def _check_local_hf_files(folder: Path, names: Sequence[str], what: str) -> None:
    """A member folder must carry its own Hugging Face files, and they must not ask to run custom code."""
    present = [n for n in names if (folder / n).is_file()]
    if not present:
        raise BundleError(f"member {folder} needs {what} but holds none of its files: a bundle must carry them "
                          "(loading by name would fetch from the network)")
    for name in ("tokenizer_config.json", HF_TEXT_CONFIG):
        cfg = read_json(folder / name) if (folder / name).is_file() else {}
        if not isinstance(cfg, dict):
            raise BundleError(f"member {folder}: {name} is corrupt")
        if "auto_map" in cfg or cfg.get("trust_remote_code"):
            raise BundleError(f"member {folder}: {name} asks to run custom code (auto_map): refused")


def _model_class(model_cfg: Mapping[str, Any]) -> type[torch.nn.Module]:
    custom = model_cfg.get("custom_text", False) or "hf_model_name" in model_cfg.get("text_cfg", {})
    if "multimodal_cfg" in model_cfg:
        raise EnclipError("CoCa models are not supported as ensemble members")
    return open_clip.CustomTextCLIP if custom else open_clip.CLIP


def build_model(model_cfg: Mapping[str, Any], folder: Path | None = None) -> torch.nn.Module:
    """A randomly initialised model from a full open_clip model_cfg (no weight download, ever).

    From a member `folder`, a Hugging Face text tower is built from the config saved there, not by name."""
    cfg = json_copy(dict(model_cfg))
    cfg.pop("custom_text", None)
    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
        if folder is not None:
            _check_local_hf_files(folder, (HF_TEXT_CONFIG,), "a Hugging Face text model config")
            text_cfg["hf_model_name"] = str(folder)
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    return _model_class(model_cfg)(**cfg)


@dataclass
class Member:
    """One CLIP of the ensemble, ready to encode."""

    name: str
    model: torch.nn.Module
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    info: dict[str, Any]  # provenance: preset or base model, pretrained source, seed, val metrics
    folder: Path | None = None  # where it was loaded from: its Hugging Face files are read from there

    def __post_init__(self) -> None:
        self.tokenizer = _tokenizer(self.model_cfg, self.folder)
        self.preprocess = eval_transform(self.preprocess_cfg)

    @property
    def dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def preprocess_key(self) -> str:
        return json.dumps(self.preprocess_cfg, sort_keys=True)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        self.model.eval()
        feats = self.model.encode_image(pixels.to(module_device(self.model), non_blocking=True), normalize=True)
        return feats.float().cpu().numpy()

    @property
    def tokenizer_key(self) -> str:
        """Members with equal keys tokenize identically, so an ensemble tokenizes a query once for them."""
        text_cfg = self.model_cfg["text_cfg"]
        return json.dumps([text_cfg.get("hf_tokenizer_name"), text_cfg.get("context_length", 77),
                           text_cfg.get("tokenizer_kwargs", {})], sort_keys=True)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], tokens: torch.Tensor | None = None) -> np.ndarray:
        self.model.eval()
        tokens = self.tokenizer(list(texts)) if tokens is None else tokens
        tokens = tokens.to(module_device(self.model), non_blocking=True)
        if causal_argmax_tower(self.model):
            return _encode_by_length(self.model, tokens).float().cpu().numpy()
        return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()

    def save(self, folder: Path) -> str:
        """Write an open_clip local-dir folder; returns the weights' sha256 (for the bundle fingerprint).

        A Hugging Face tokenizer and text-tower config are saved beside the weights, so loading the folder
        never needs the network. Every file is replaced atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_NAME, save_tensors(state, metadata={"format": "pt"}))
        hf_tokenizer = getattr(self.tokenizer, "tokenizer", None)
        if self.model_cfg["text_cfg"].get("hf_tokenizer_name") and hf_tokenizer is not None \
                and self.folder != folder:
            hf_tokenizer.save_pretrained(str(folder))
        text_config = getattr(getattr(self.model, "text", None), "config", None)
        if "hf_model_name" in self.model_cfg["text_cfg"] and text_config is not None:
            atomic_write_text(folder / HF_TEXT_CONFIG, text_config.to_json_string())
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg, "enclip": self.info}
        atomic_write_json(folder / CONFIG_NAME, config, sort_keys=True)
        return file_sha256(folder / WEIGHTS_NAME)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")


def load_pretrained(model_name: str, pretrained: str | None) -> tuple[torch.nn.Module, dict, dict]:
    """Load a real open_clip checkpoint: a tag (`laion2b_s34b_b79k`), `hf-hub:org/repo`, or a local path.

    Local files must be safetensors (or an open_clip local-dir folder holding one): we read those weights
    ourselves, so open_clip's checkpoint loader (which falls back to torch.load, an unpickler) never sees a
    local file; downloads are held to the same rule by `_no_unpickling`.
    """
    weights: Path | None = None
    if pretrained and pretrained.startswith("hf-hub:"):
        model_name, pretrained = pretrained, None
    elif pretrained and (Path(pretrained).exists() or Path(pretrained).suffix in (*PICKLE_SUFFIXES, ".safetensors")):
        path = Path(pretrained)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise EnclipError(f"refusing to unpickle {path}: only safetensors checkpoints are loaded (nothing is "
                              "ever unpickled); convert it to .safetensors first")
        if not path.exists():
            raise EnclipError(f"--pretrained {path}: no such file or folder")
        if path.is_dir():
            weights = _safetensors_in(path)
            if not (path / CONFIG_NAME).is_file():
                raise EnclipError(f"{path} is not an open_clip folder: it needs {CONFIG_NAME} beside the weights")
            model_name = f"local-dir:{path}"
        elif path.suffix.lower() != ".safetensors":
            raise EnclipError(f"refusing to load {path}: only .safetensors checkpoints are loaded (nothing is "
                              "ever unpickled); convert it to .safetensors first")
        else:
            weights = path
        pretrained = None
    try:
        with _no_unpickling():
            if weights is None:
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, load_weights=False,
                                                                      pretrained_text=False)
                open_clip.load_checkpoint(model, str(weights))  # a .safetensors path: read by safetensors
    except EnclipError:
        raise
    except Exception as e:  # open_clip raises bare RuntimeError/ValueError for unknown tags and failed downloads
        raise EnclipError(f"cannot load pretrained {model_name} ({pretrained or weights}): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", model.visual.image_size)
    preprocess_cfg = {
        "size": size if isinstance(size, int) else list(size),
        "mean": list(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": pp.get("interpolation", "bicubic"),
        "resize_mode": pp.get("resize_mode", "shortest"),
    }
    return model, _model_cfg_of(model_name), preprocess_cfg


def _safetensors_in(folder: Path) -> Path:
    """The folder's safetensors weights, in open_clip's order of preference; pickled ones are never chosen."""
    for name in (WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise EnclipError(f"{folder} holds only pickled weights ({', '.join(pickled)}): only safetensors are "
                          "loaded (nothing is ever unpickled); convert them to .safetensors first")
    raise EnclipError(f"{folder} has no .safetensors weights" if not found else
                      f"{folder} holds several .safetensors files; name the one to use with --pretrained FILE")


@contextmanager
def _no_unpickling() -> Iterator[None]:
    """Refuse torch.load while open_clip builds a model: a tag or hub repo that only offers pickled weights
    is an error instead of an unpickled download."""
    def refuse(f: Any, *args: Any, **kwargs: Any) -> Any:
        raise EnclipError(f"refusing to unpickle {f}: this checkpoint is only available pickled; use a "
                          "safetensors checkpoint (nothing is ever unpickled)")

    real, real_jit = torch.load, torch.jit.load
    torch.load = torch.jit.load = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load, torch.jit.load = real, real_jit  # type: ignore[assignment]


def _model_cfg_of(model_name: str) -> dict[str, Any]:
    if model_name.startswith("local-dir:"):
        return json.loads((Path(model_name[10:]) / CONFIG_NAME).read_text())["model_cfg"]
    if model_name.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config  # the public API has no accessor for hub configs

        return _get_hf_config(model_name[7:])["model_cfg"]
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise EnclipError(f"unknown open_clip model {model_name!r}")
    return cfg


class Ensemble:
    """The members together: decode once, preprocess once per distinct preprocessing, encode with each."""

    def __init__(self, members: Sequence[Member]):
        if not members:
            raise EnclipError("an ensemble needs at least one member")
        self.members = list(members)

    def to(self, device: torch.device) -> Ensemble:
        """Every member on `device` (inputs follow each model; results come back as CPU arrays)."""
        for m in self.members:
            m.model.to(device)
        self.device = str(device)
        return self

    device = "cpu"

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def dims(self) -> dict[str, int]:
        return {m.name: m.dim for m in self.members}

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 256) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {m.name: [] for m in self.members}
        for start in range(0, len(images), batch_size):
            chunk = [im.convert("RGB") for im in images[start:start + batch_size]]
            pixels: dict[str, torch.Tensor] = {}
            for m in self.members:
                if m.preprocess_key not in pixels:
                    batch = torch.stack([m.preprocess(im) for im in chunk])
                    pixels[m.preprocess_key] = batch.pin_memory() if self.device.startswith("cuda") else batch
                out[m.name].append(m.encode_pixels(pixels[m.preprocess_key]))
        return {k: concat_rows(v, self.dims[k]) for k, v in out.items()}

    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {m.name: [] for m in self.members}
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            tokens: dict[str, torch.Tensor] = {}
            for m in self.members:
                if m.tokenizer_key not in tokens:
                    tokens[m.tokenizer_key] = m.tokenizer(chunk)
                out[m.name].append(m.encode_texts(chunk, tokens[m.tokenizer_key]))
        return {k: concat_rows(v, self.dims[k]) for k, v in out.items()}


def causal_argmax_tower(model: torch.nn.Module) -> bool:
    """A standard CLIP text tower: causal mask, pooled at the EOT token (the highest token id)."""
    return (isinstance(model, open_clip.CLIP) and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) == "argmax")


def _encode_by_length(model: open_clip.CLIP, tokens: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """`model.encode_text(tokens, normalize=True)`, computed only up to each text's EOT token.

    With a causal mask, the padding after a text's EOT never reaches the EOT position the feature is
    pooled from, so dropping it changes nothing but the cost. Short queries ("red dress": 4 of 24-77
    positions) get several times cheaper; batches are sorted by length so each chunk is cut to its own max.
    """
    eot = tokens.argmax(dim=-1)
    order = torch.argsort(eot, stable=True)
    parts = []
    for start in range(0, len(tokens), chunk):
        text = tokens[order[start:start + chunk]]
        n = int(text.argmax(dim=-1).max()) + 1
        parts.append(cut_text_features(model, text[:, :n]))
    feats = torch.cat(parts) if parts else model.encode_text(tokens, normalize=True)
    return feats[torch.argsort(order)]


def cut_text_features(model: open_clip.CLIP, text: torch.Tensor) -> torch.Tensor:
    """Unit text features of ids already cut after the batch's longest EOT (`_encode_by_length`'s step; the
    ONNX export traces it with a dynamic length)."""
    n = text.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(text.shape[0]), text.argmax(dim=-1)]
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1)

