"""The shared text encoder's features for the training captions, cached in the run folder."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as save_numpy

from enclip_qdrant.engine.text_encoders import NONE
from enclip_qdrant.engine.torch.text_encoder import SharedTextEncoder, get_encoder
from enclip_qdrant.files import atomic_write_bytes

TEXT_CACHE = "text_features.safetensors"


# ------------------------------------------------------------------ training: the encoder runs once per run


def _texts_key(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def prepare_text_cache(out: Path, texts: Sequence[str], text_encoder: str) -> Path | None:
    """Encode every caption once (the encoder is frozen) and keep the vectors in `out/text_features.safetensors`,
    so members trained one after another, or in worker processes, never run the encoder on captions again."""
    if not text_encoder or text_encoder == NONE:
        return None
    unique = list(dict.fromkeys(texts))
    key = _texts_key(unique)
    path = Path(out) / TEXT_CACHE
    enc = get_encoder(text_encoder)
    if path.is_file() and _read_cache(path, unique, key, enc):
        return path
    vectors = enc.encode(unique)
    atomic_write_bytes(path, save_numpy({"vectors": np.ascontiguousarray(vectors)},
                                        metadata={"texts_sha256": key, "encoder_sha256": enc.spec.sha256}))
    return path


def _read_cache(path: Path, unique: list[str], key: str, enc: SharedTextEncoder) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("texts_sha256") != key or meta.get("encoder_sha256") != enc.spec.sha256:
        return False
    enc.preload(unique, load_numpy(str(path))["vectors"])
    return True


def load_text_cache(out: Path, texts: Sequence[str], text_encoder: str) -> None:
    """In a training worker: fill the shared encoder's cache from the run's file, if it matches these captions."""
    path = Path(out) / TEXT_CACHE
    if path.is_file():
        unique = list(dict.fromkeys(texts))
        _read_cache(path, unique, _texts_key(unique), get_encoder(text_encoder))
