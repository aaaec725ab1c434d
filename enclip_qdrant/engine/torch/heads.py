"""Member recipe "pretrained text tower": a shared frozen sentence encoder + per-member image tower and head.

    text  -> shared frozen encoder (MiniLM, mean pooling, unit length) -> member's Linear(384, D) -> unit
    image -> member's own open_clip vision tower (the preset's vision_cfg, from scratch)       -> unit

Members differ in their image towers, seeds (initialisation, data order, augmentation) and linear text
heads; the encoder is one object for all of them (`text_encoders.get_encoder`).

On disk a member folder keeps the usual two file names (`open_clip_config.json`, `open_clip_model.safetensors`,
so the bundle's sha256 checks and fingerprint cover it unchanged), but it is not an open_clip local-dir: the
config says `"recipe": "text_encoder"` and records the encoder; the safetensors hold only the trainable parts
(vision tower, text head, logit scale; ~5 MB for `small`), never the 90 MB encoder. A bundle therefore
depends on the installed encoder package, and refuses to load when the installed weights or settings differ
from its record (the sha256 is checked when the encoder is loaded).

The member's "tokenizer" runs the shared encoder and returns its pooled vectors, and its `tokenizer_key` is the
encoder's: `Ensemble.encode_texts` already tokenizes once per distinct key, so a query runs the encoder ONCE
for all members and each member applies only its head.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from enclip_qdrant.bundle.names import CONFIG_NAME, WEIGHTS_NAME
from enclip_qdrant.engine.text_encoders import TextEncoderSpec, check_record
from enclip_qdrant.engine.torch.device import module_device
from enclip_qdrant.engine.torch.members import Member, eval_transform
from enclip_qdrant.engine.torch.text_encoder import SharedTextEncoder, get_encoder
from enclip_qdrant.errors import BundleError
from enclip_qdrant.files import atomic_write_bytes, atomic_write_json, file_sha256

RECIPE = "text_encoder"


class HeadCLIP(torch.nn.Module):
    """An open_clip vision tower and a linear head over a frozen encoder's sentence vectors."""

    def __init__(self, embed_dim: int, vision_cfg: dict[str, Any], text_dim: int):
        super().__init__()
        self.visual = open_clip.model._build_vision_tower(embed_dim, dict(vision_cfg))
        self.text_head = torch.nn.Linear(text_dim, embed_dim, bias=False)
        torch.nn.init.normal_(self.text_head.weight, std=text_dim ** -0.5)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = self.visual(pixels)
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f

    def encode_text(self, text_feats: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = self.text_head(text_feats.to(self.text_head.weight.dtype))
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f

    def forward(self, images: torch.Tensor, text_feats: torch.Tensor):
        return (self.encode_image(images, normalize=True), self.encode_text(text_feats, normalize=True),
                self.logit_scale.exp())


class HeadMember(Member):
    """A member of the "pretrained text tower" recipe. `tokenizer(texts)` returns the shared encoder's vectors."""

    def __post_init__(self) -> None:
        self.spec: TextEncoderSpec = check_record(self.model_cfg["text_encoder"], f"member {self.name!r}")
        self.encoder: SharedTextEncoder = get_encoder(self.spec)
        self.tokenizer = self._features
        self.preprocess = eval_transform(self.preprocess_cfg)

    def _features(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.encoder.encode(list(texts)))

    @property
    def tokenizer_key(self) -> str:
        return json.dumps(["text-encoder", self.spec.record()], sort_keys=True)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], tokens: torch.Tensor | None = None) -> np.ndarray:
        self.model.eval()
        feats = self._features(texts) if tokens is None else tokens
        feats = feats.to(module_device(self.model), non_blocking=True)
        return self.model.encode_text(feats, normalize=True).float().cpu().numpy()

    def save(self, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_NAME, save_tensors(state, metadata={"format": "pt"}))
        atomic_write_json(folder / CONFIG_NAME, {"recipe": RECIPE, "model_cfg": self.model_cfg,
                                                 "preprocess_cfg": self.preprocess_cfg, "enclip": self.info},
                          sort_keys=True)
        return file_sha256(folder / WEIGHTS_NAME)


def build_head_model(model_cfg: dict[str, Any]) -> HeadCLIP:
    return HeadCLIP(int(model_cfg["embed_dim"]), model_cfg["vision_cfg"], int(model_cfg["text_encoder"]["dim"]))


def is_head_config(config: dict[str, Any]) -> bool:
    return config.get("recipe") == RECIPE


def load_head_member(folder: Path, name: str, config: dict[str, Any]) -> HeadMember:
    """Called by `members.load_member` for folders this recipe wrote; refuses a different installed encoder."""
    model_cfg = config["model_cfg"]
    check_record(model_cfg.get("text_encoder", {}), f"member {name!r} ({folder})")
    try:
        model = build_head_model(model_cfg)
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    except (KeyError, RuntimeError, OSError) as e:
        raise BundleError(f"cannot load member {name!r} from {folder}: {str(e).splitlines()[0]}") from e
    model.eval()
    return HeadMember(name, model, model_cfg, config["preprocess_cfg"], config.get("enclip", {}))
