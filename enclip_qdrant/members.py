"""Ensemble members: open_clip CLIP models, their tokenizers and preprocessing.

A member on disk is an open_clip `local-dir:` folder (`open_clip_config.json` +
`open_clip_model.safetensors`), so `open_clip.create_model_and_transforms("local-dir:...")` reads it
too. We load the weights ourselves with safetensors so that nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .errors import BundleError, EnclipError
from .presets import Preset

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def eval_transform(preprocess_cfg: Mapping[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    return open_clip.image_transform(
        preprocess_cfg["size"],
        is_train=False,
        mean=tuple(preprocess_cfg["mean"]),
        std=tuple(preprocess_cfg["std"]),
        resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
    )


def _tokenizer(model_cfg: Mapping[str, Any]) -> Callable[[Sequence[str]], torch.Tensor]:
    text_cfg = model_cfg["text_cfg"]
    ctx = text_cfg.get("context_length", 77)
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=ctx,
                                     **text_cfg.get("tokenizer_kwargs", {}))
    return open_clip.SimpleTokenizer(context_length=ctx)


def _model_class(model_cfg: Mapping[str, Any]) -> type[torch.nn.Module]:
    custom = model_cfg.get("custom_text", False) or "hf_model_name" in model_cfg.get("text_cfg", {})
    if "multimodal_cfg" in model_cfg:
        raise EnclipError("CoCa models are not supported as ensemble members")
    return open_clip.CustomTextCLIP if custom else open_clip.CLIP


def build_model(model_cfg: Mapping[str, Any]) -> torch.nn.Module:
    """A randomly initialised model from a full open_clip model_cfg (no weight download, ever)."""
    cfg = json.loads(json.dumps(dict(model_cfg)))
    cfg.pop("custom_text", None)
    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
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

    def __post_init__(self) -> None:
        self.tokenizer = _tokenizer(self.model_cfg)
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
        feats = self.model.encode_image(pixels, normalize=True)
        return feats.float().numpy()

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
        if _causal_argmax_tower(self.model):
            return _encode_by_length(self.model, tokens).float().numpy()
        return self.model.encode_text(tokens, normalize=True).float().numpy()

    def save(self, folder: Path) -> str:
        """Write an open_clip local-dir folder; returns the weights' sha256 (for the bundle fingerprint)."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / WEIGHTS_NAME)
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg, "enclip": self.info}
        _write_json(folder / CONFIG_NAME, config)
        return file_sha256(folder / WEIGHTS_NAME)


def load_member(folder: Path, name: str) -> Member:
    config_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights.is_file():
        raise BundleError(f"member {name!r} is incomplete: {folder} needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(config_path.read_text())
        if config.get("recipe") == "text_encoder":  # a shared pretrained text encoder + heads: see recipes.py
            from .recipes import load_head_member

            return load_head_member(folder, name, config)
        model = build_model(config["model_cfg"])
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (json.JSONDecodeError, KeyError, RuntimeError, OSError) as e:
        raise BundleError(f"cannot load member {name!r} from {folder}: {str(e).splitlines()[0]}") from e
    model.eval()
    return Member(name, model, config["model_cfg"], config["preprocess_cfg"], config.get("enclip", {}))


def new_member(name: str, preset: Preset, *, seed: int, base_model: str | None = None,
               pretrained: str | None = None) -> Member:
    """A member to train: from scratch with a preset, or fine-tuned from an open_clip checkpoint."""
    torch.manual_seed(seed)
    if base_model is None and pretrained is None:
        model = build_model(preset.model_cfg)
        info = {"preset": preset.name, "pretrained": None, "seed": seed}
        return Member(name, model, deepcopy_cfg(preset.model_cfg), preset.preprocess_cfg(), info)
    model, model_cfg, preprocess_cfg = load_pretrained(base_model or "ViT-B-32", pretrained)
    info = {"preset": None, "base_model": base_model, "pretrained": pretrained, "seed": seed}
    return Member(name, model, model_cfg, preprocess_cfg, info)


def load_pretrained(model_name: str, pretrained: str | None) -> tuple[torch.nn.Module, dict, dict]:
    """Load a real open_clip checkpoint: a tag (`laion2b_s34b_b79k`), `hf-hub:org/repo`, or a local path.

    Local files must be safetensors (or an open_clip local-dir folder holding one): we never unpickle.
    """
    if pretrained and pretrained.startswith("hf-hub:"):
        model_name, pretrained = pretrained, None
    elif pretrained and Path(pretrained).exists():
        path = Path(pretrained)
        if path.is_dir():
            if not (path / WEIGHTS_NAME).is_file() and not list(path.glob("*.safetensors")):
                raise EnclipError(f"{path} has no .safetensors weights (pickled checkpoints are refused)")
            model_name, pretrained = f"local-dir:{path}", None
        elif path.suffix != ".safetensors":
            raise EnclipError(f"refusing to unpickle {path}: convert it to .safetensors first")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except Exception as e:  # open_clip raises bare RuntimeError/ValueError for unknown tags and failed downloads
        raise EnclipError(f"cannot load pretrained {model_name} ({pretrained}): {str(e).splitlines()[0]}") from e
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
                    pixels[m.preprocess_key] = torch.stack([m.preprocess(im) for im in chunk])
                out[m.name].append(m.encode_pixels(pixels[m.preprocess_key]))
        return {k: _concat(v, self.dims[k]) for k, v in out.items()}

    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {m.name: [] for m in self.members}
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            tokens: dict[str, torch.Tensor] = {}
            for m in self.members:
                if m.tokenizer_key not in tokens:
                    tokens[m.tokenizer_key] = m.tokenizer(chunk)
                out[m.name].append(m.encode_texts(chunk, tokens[m.tokenizer_key]))
        return {k: _concat(v, self.dims[k]) for k, v in out.items()}


def _causal_argmax_tower(model: torch.nn.Module) -> bool:
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
    cast = model.transformer.get_cast_dtype()
    parts = []
    for start in range(0, len(tokens), chunk):
        text = tokens[order[start:start + chunk]]
        n = int(text.argmax(dim=-1).max()) + 1
        text = text[:, :n]
        x = model.token_embedding(text).to(cast) + model.positional_embedding[:n].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
        x = x[torch.arange(len(text)), text.argmax(dim=-1)]
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        elif model.text_projection is not None:
            x = x @ model.text_projection
        parts.append(torch.nn.functional.normalize(x, dim=-1))
    feats = torch.cat(parts) if parts else model.encode_text(tokens, normalize=True)
    return feats[torch.argsort(order)]


def joint_embedding(per_member: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ensemble's view of each item, for clustering and routing.

    Members are trained independently, so their spaces are not aligned and averaging vectors would mix
    unrelated axes. Concatenating the L2-normalised embeddings, scaled by 1/sqrt(N), gives unit vectors
    whose dot product is exactly the mean of the members' cosines: the ensemble's own similarity.
    """
    parts = [np.asarray(v, dtype=np.float32) for v in per_member.values()]
    joint = np.concatenate(parts, axis=1) / np.sqrt(len(parts))
    return joint / np.maximum(np.linalg.norm(joint, axis=1, keepdims=True), 1e-12)


def _concat(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def deepcopy_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(cfg)))


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)
