"""Model size presets, sized by measurement for a 2-core CPU with no GPU (see BENCHMARKS.md).

Each preset is a complete open_clip `model_cfg` plus training defaults, so a member built from it
can be saved as a plain open_clip `local-dir:` folder and reloaded by open_clip itself.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, replace
from typing import Any

from enclip_qdrant.errors import EnclipError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preset:
    name: str
    model_cfg: dict[str, Any]
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    description: str
    text_encoder: str = "none"  # "minilm": members share a frozen pretrained text tower (recipes.py)
    own_tower: str = ""  # the name of the image tower in `model_cfg` (for `--towers` and the manifest)
    # Other named image towers (name, vision_cfg) members may use instead. Same input size as the preset's own,
    # so an image is decoded and preprocessed once for every member.
    towers: tuple[tuple[str, dict[str, Any]], ...] = ()
    # `--towers MODE`: the tower names members cycle through, member by member ("same": the preset's own).
    tower_cycles: tuple[tuple[str, tuple[str, ...]], ...] = ()
    default_towers: str = "same"  # what `--towers` means when not given
    field_cols: str = "none"  # what `--field-cols` means when not given (fields.py)

    def preprocess_cfg(self) -> dict[str, Any]:
        return {
            "size": self.model_cfg["vision_cfg"]["image_size"],
            "mean": list(OPENAI_MEAN),
            "std": list(OPENAI_STD),
            "interpolation": "bicubic",
            # Catalog photos are 3:4 portraits; squashing keeps the whole garment, cropping loses hems/shoes.
            "resize_mode": "squash",
        }


def _cfg(embed: int, image: int, patch: int, v_layers: int, v_width: int, ctx: int, t_layers: int,
         t_width: int) -> dict[str, Any]:
    return {
        "embed_dim": embed,
        "vision_cfg": {"image_size": image, "patch_size": patch, "layers": v_layers, "width": v_width,
                       "head_width": 64 if v_width >= 128 else 32},
        "text_cfg": {"context_length": ctx, "vocab_size": 49408, "width": t_width,
                     "heads": max(1, t_width // 64) if t_width >= 128 else 2, "layers": t_layers},
    }


PRESETS: dict[str, Preset] = {
    # A from-scratch ViT this small learns colour but not silhouettes from a few hundred pairs (type
    # precision@10 near chance on the synthetic catalog); open_clip's small ModifiedResNet learns both.
    "tiny": Preset(
        name="tiny",
        model_cfg={
            "embed_dim": 64,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
        epochs=12, batch_size=64, lr=2e-3, weight_decay=0.1,
        description="tests and demos: a member trains on a few hundred synthetic pairs in seconds",
        own_tower="rn",
        towers=(("vit8", {"image_size": 32, "patch_size": 8, "layers": 2, "width": 64, "head_width": 32}),
                ("rn-w24", {"image_size": 32, "layers": [1, 1, 1, 1], "width": 24, "head_width": 32})),
        tower_cycles=(("mixed", ("rn", "vit8")), ("resnet", ("rn", "rn-w24"))),
    ),
    "small": Preset(
        name="small",
        model_cfg=_cfg(embed=256, image=64, patch=16, v_layers=6, v_width=256, ctx=24, t_layers=4,
                       t_width=256),
        # 5 epochs: members trained for 3 were still improving at their last epoch; 5 lifts every member's
        # held-out val R@10 by 0.06-0.14 on fashion-dev and, side by side in bf16, still fits ~25 min.
        epochs=5, batch_size=128, lr=5e-4, weight_decay=0.2,
        description="default: 5 members on ~10k pairs in under 30 minutes on 2 CPU cores",
        # The default recipe, chosen on held-out fashion-dev (BENCHMARKS.md, "Choosing the default recipe"):
        # members share the frozen MiniLM text encoder, learn ModifiedResNet image towers of three shapes, and
        # train on the catalog's category fields as well as its titles.
        text_encoder="minilm", default_towers="resnet", field_cols="auto",
        # A ViT over 16 px patches (the preset's own), open_clip ModifiedResNets of three shapes and a narrower
        # ViT over 8 px patches. Cost of a training step against vit16 (batch 128, bf16, one thread): rn 1.38x,
        # rn-1221 1.21x, rn-3331 1.11x, vit8 1.3x. Held out on fashion-dev (MiniLM text, 5 epochs) one rn
        # member reached title R@10 0.465 against 0.33 for vit16 and 0.27 for vit8 (BENCHMARKS.md).
        own_tower="vit16",
        towers=(("rn", {"image_size": 64, "layers": [2, 2, 2, 2], "width": 32, "head_width": 64}),
                ("vit8", {"image_size": 64, "patch_size": 8, "layers": 4, "width": 128, "head_width": 64}),
                ("rn-1221", {"image_size": 64, "layers": [1, 2, 2, 1], "width": 32, "head_width": 64}),
                ("rn-3331", {"image_size": 64, "layers": [3, 3, 3, 1], "width": 24, "head_width": 64})),
        tower_cycles=(("mixed", ("vit16", "rn", "vit8")), ("resnet", ("rn", "rn-1221", "rn-3331"))),
    ),
}

# Fine-tuning a pretrained checkpoint wants a far smaller step than training from scratch.
FINETUNE_LR = 1e-5


TOWER_MODES = ("same", "mixed", "resnet")


def member_tower(preset: Preset, mode: str, index: int) -> str:
    """The image tower member `index` trains with: the preset's own under `same`, else the next in its cycle."""
    cycle = dict(preset.tower_cycles).get(mode)
    if mode == "same" or not cycle:
        return preset.own_tower
    return cycle[index % len(cycle)]


def with_tower(preset: Preset, tower: str) -> Preset:
    """The preset with its image tower swapped for the named one ("" or the preset's own: unchanged)."""
    if not tower or tower == preset.own_tower:
        return preset
    cfgs = dict(preset.towers)
    if tower not in cfgs:
        raise EnclipError(f"preset {preset.name!r} has no image tower {tower!r}; it has: "
                          f"{', '.join([preset.own_tower, *cfgs])}")
    return replace(preset, model_cfg=deepcopy(preset.model_cfg) | {"vision_cfg": deepcopy(cfgs[tower])})


def get_preset(name: str) -> Preset:
    try:
        return deepcopy(PRESETS[name])
    except KeyError:
        raise EnclipError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
