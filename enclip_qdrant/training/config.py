"""TrainConfig (what the user asks) and ResolvedConfig (what members are trained with); torch-free to import."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from enclip_qdrant.catalog.fields import parse_field_cols
from enclip_qdrant.engine.devices import check_device
from enclip_qdrant.engine.text_encoders import TEXT_ENCODERS
from enclip_qdrant.errors import BundleError
from enclip_qdrant.training.presets import FINETUNE_LR, TOWER_MODES, get_preset

# The parts of the config that change what a member learns; `members` and `clusters` may change on resume.
PLAN_KEYS = ("preset", "epochs", "batch_size", "lr", "seed", "diversity", "val_fraction", "base_model",
             "pretrained", "warmup_fraction", "weight_decay", "text_encoder", "field_cols", "towers")

# What a bundle or plan written before a setting existed was trained with (field_cols: titles only).
LEGACY_DEFAULTS = {"field_cols": "none", "towers": "same"}

MIN_PAIRS = 16


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    members: int = 5
    preset: str = "small"
    epochs: int | None = None  # None: the preset's
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    diversity: Literal["seed", "bootstrap"] = "seed"
    val_fraction: float = 0.05
    clusters: int | None = None  # None: auto
    base_model: str | None = None  # an open_clip model name, for fine-tuning
    pretrained: str | None = None  # tag, hf-hub:ID or a local .safetensors / local-dir folder
    warmup_fraction: float = 0.1
    threads: int | None = None  # CPU threads for the whole run; None: every core this process may use
    parallel: int | None = None  # members trained at once; None: one per core (at most 4)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where the CPU computes it natively
    text_encoder: str | None = None  # "minilm": shared frozen pretrained text tower (recipes.py); None: the preset's
    onnx: bool = True  # export the towers to ONNX (torch-free queries); off only to save seconds in tests
    field_cols: str | None = None  # field-aware training: "auto", "none" or "a,b,c"; None: the preset's
    towers: str | None = None  # image towers: "same", "mixed", "resnet" (presets.member_tower); None: the preset's
    loader_workers: int | None = None  # data-loader processes per member; None: sized to the cores (loader.py)
    device: str = "auto"  # auto (CUDA, else MPS, else CPU), cpu, cuda or mps

    def __post_init__(self) -> None:  # fail before any catalog is read or member trained
        if self.precision not in PRECISIONS:
            raise BundleError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, "
                              f"not {self.precision!r}")
        if self.text_encoder is not None and self.text_encoder not in TEXT_ENCODERS:
            raise BundleError(f"--text-encoder must be one of {', '.join(TEXT_ENCODERS)}, not {self.text_encoder!r}")
        if self.text_encoder not in (None, "none") and (self.pretrained or self.base_model):
            raise BundleError("--text-encoder applies to members trained from a preset, not to --model/--pretrained")
        check_device(self.device)
        if self.loader_workers is not None and self.loader_workers < 0:
            raise BundleError(f"loader_workers must be 0 or more, not {self.loader_workers}")
        if self.parallel is not None and self.parallel < 1:
            raise BundleError(f"--parallel must be at least 1, not {self.parallel}")
        parse_field_cols(self.field_cols)
        if self.towers is not None and self.towers not in TOWER_MODES:
            raise BundleError(f"--towers must be {', '.join(TOWER_MODES[:-1])} or {TOWER_MODES[-1]}, "
                              f"not {self.towers!r}")
        if self.towers not in (None, "same") and (self.pretrained or self.base_model):
            raise BundleError(f"--towers {self.towers} applies to members trained from a preset, not to "
                              "--model/--pretrained")

    def resolved(self) -> ResolvedConfig:
        """The settings members really train with: the preset's defaults filled in, precision decided."""
        preset = get_preset(self.preset)
        finetune = self.pretrained is not None or self.base_model is not None
        device = resolved_device(self.device)
        return ResolvedConfig(**(asdict(self) | {
            "epochs": self.epochs or preset.epochs,
            "batch_size": self.batch_size or preset.batch_size,
            "lr": self.lr or (FINETUNE_LR if finetune else preset.lr),
            "weight_decay": preset.weight_decay,
            "precision": resolve_precision(self.precision, device),
            "device": device,
            "text_encoder": "none" if finetune else (self.text_encoder or preset.text_encoder),
            "towers": "same" if finetune else (self.towers or preset.default_towers),
            "field_cols": parse_field_cols(self.field_cols) if self.field_cols is not None else preset.field_cols,
        }))

    def differs_from(self, trained: dict[str, Any]) -> list[str]:
        """Settings (of those that change what members learn) in which a trained bundle's config differs."""
        mine = self.resolved().to_dict()
        trained = LEGACY_DEFAULTS | trained
        return [k for k in (*PLAN_KEYS, "members", "clusters") if trained.get(k) != mine[k]]


def resolved_device(name: str) -> str:
    """The device type members train on ("cpu", "cuda", "mps"); a missing one is one clear line."""
    from enclip_qdrant.engine.torch.device import resolve_device  # torch, only once training starts

    return resolve_device(name).type


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """`auto` becomes what this device should use: on CUDA bf16 where the GPU has it, else fp16 (with a gradient
    scaler); on the CPU bf16 where it is native, else fp32. TrainConfig has checked the name already."""
    if device == "cuda":
        if precision == "fp32":
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "mps":
        return "fp32"
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def native_bf16() -> bool:
    """True when the CPU has bfloat16 arithmetic; elsewhere bf16 autocast is emulated and slower than fp32."""
    import torch  # here, not at import: evaluation and the CLI read the config without torch

    try:  # torch exposes these probes only as private helpers of torch.cpu
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


@dataclass(frozen=True)
class ResolvedConfig:
    """A TrainConfig with the preset's defaults filled in: what the members are actually trained with."""

    members: int
    preset: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    diversity: Literal["seed", "bootstrap"]
    val_fraction: float
    clusters: int | None
    base_model: str | None
    pretrained: str | None
    warmup_fraction: float
    threads: int | None
    parallel: int | None
    precision: Literal["bf16", "fp16", "fp32"]  # fp16 only on a CUDA GPU without bf16
    weight_decay: float
    text_encoder: str = "none"  # "none": open_clip text towers; else a shared frozen encoder (recipes.py)
    onnx: bool = True  # export ONNX towers when the bundle is complete (not a training setting: not in the plan key)
    field_cols: str = "none"  # field-aware training (fields.py): "none", "auto" or "a,b,c"
    towers: str = "same"  # "mixed": members cycle through the preset's image towers
    loader_workers: int | None = None  # not a training setting: samples are seeded, any count trains the same
    device: str = "cpu"  # the device type members trained on (recorded in the manifest and each member's report)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for the manifest, the training plan and worker job files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResolvedConfig:
        return cls(**d)
