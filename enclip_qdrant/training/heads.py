"""New head members: the catalog's own image tower plus a linear head on the shared text encoder."""

from __future__ import annotations

from typing import Any

import torch

from enclip_qdrant.engine.text_encoders import TextEncoderSpec, spec_named
from enclip_qdrant.engine.torch.heads import RECIPE, HeadMember, build_head_model
from enclip_qdrant.files import json_copy
from enclip_qdrant.training.presets import Preset


def head_model_cfg(preset: Preset, spec: TextEncoderSpec) -> dict[str, Any]:
    return {"embed_dim": preset.model_cfg["embed_dim"],
            "vision_cfg": json_copy(preset.model_cfg["vision_cfg"]), "text_encoder": spec.record()}


def new_head_member(name: str, preset: Preset, text_encoder: str, *, seed: int) -> HeadMember:
    spec = spec_named(text_encoder)
    torch.manual_seed(seed)
    cfg = head_model_cfg(preset, spec)
    info = {"preset": preset.name, "pretrained": None, "seed": seed, "recipe": RECIPE, "text_encoder": spec.name}
    return HeadMember(name, build_head_model(cfg), cfg, preset.preprocess_cfg(), info)
