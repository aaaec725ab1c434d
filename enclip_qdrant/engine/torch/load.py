"""load_member: a member folder -> the right member kind (open_clip or head), weights from safetensors."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from enclip_qdrant.bundle.names import CONFIG_NAME, WEIGHTS_NAME
from enclip_qdrant.engine.torch.members import Member, build_model
from enclip_qdrant.errors import BundleError
from enclip_qdrant.files import read_json


def load_member(folder: Path, name: str) -> Member:
    """A member from its folder; anything malformed, corrupt or unsafe is one `BundleError` line."""
    config_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights.is_file():
        raise BundleError(f"member {name!r} is incomplete: {folder} needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = read_json(config_path)
    if isinstance(config, dict) and config.get("recipe") == "text_encoder":  # shared text encoder + heads
        from enclip_qdrant.engine.torch.heads import load_head_member

        return load_head_member(folder, name, config)
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict) \
            or not isinstance(config.get("preprocess_cfg"), dict) \
            or not isinstance(config["model_cfg"].get("text_cfg"), dict):
        raise BundleError(f"cannot load member {name!r}: {config_path} is corrupt or lacks model_cfg/preprocess_cfg")
    info = config.get("enclip", {})
    try:
        model = build_model(config["model_cfg"], folder)
        model.load_state_dict(load_file(str(weights)), strict=True)
        model.eval()
        return Member(name, model, config["model_cfg"], config["preprocess_cfg"],
                      info if isinstance(info, dict) else {}, folder)
    except BundleError:
        raise
    except Exception as e:  # torch, safetensors and transformers raise many types for a corrupt member
        text = str(e).strip()
        raise BundleError(f"cannot load member {name!r} from {folder}: "
                          f"{text.splitlines()[0] if text else type(e).__name__}") from e
