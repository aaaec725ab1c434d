"""New members to train: from a preset (from scratch) or fine-tuned from an open_clip checkpoint."""

from __future__ import annotations

import torch

from enclip_qdrant.engine.torch.members import Member, build_model, load_pretrained
from enclip_qdrant.files import json_copy
from enclip_qdrant.training.presets import Preset


def new_member(name: str, preset: Preset, *, seed: int, base_model: str | None = None,
               pretrained: str | None = None) -> Member:
    """A member to train: from scratch with a preset, or fine-tuned from an open_clip checkpoint."""
    torch.manual_seed(seed)
    if base_model is None and pretrained is None:
        model = build_model(preset.model_cfg)
        info = {"preset": preset.name, "pretrained": None, "seed": seed}
        return Member(name, model, json_copy(dict(preset.model_cfg)), preset.preprocess_cfg(), info)
    model, model_cfg, preprocess_cfg = load_pretrained(base_model or "ViT-B-32", pretrained)
    info = {"preset": None, "base_model": base_model, "pretrained": pretrained, "seed": seed}
    return Member(name, model, model_cfg, preprocess_cfg, info)
